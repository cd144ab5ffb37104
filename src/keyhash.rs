//! The key hash (a leaf): FNV-1a 64-bit of a key's text. The producer's shard
//! convention (`shard = hash(key JSON) mod shards`) and the writer's key locks
//! both use it, so it lives here rather than in either.

/// FNV-1a 64-bit: stable across languages and releases, trivial to re-implement.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_on(FNV_OFFSET, bytes)
}

/// FNV-1a 64-bit's starting state (the hash of no bytes).
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a 64-bit continued over `bytes` from `hash`, the hash of what came before them:
/// `fnv1a64_on(fnv1a64(a), b) == fnv1a64(a ++ b)`, so a common prefix is hashed once.
pub fn fnv1a64_on(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
