use proptest::prelude::*;

use super::*;
use crate::redis::reply::parse_read_reply;

/// A stream's part of a reply: its name, and its entries (ID, fields or nil).
type Part = (String, Vec<((u64, u64), Option<Vec<(Vec<u8>, Vec<u8>)>>)>);

fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// The reply as Redis writes it in RESP2 (`nil_fields`: how a deleted entry's fields
/// come, `*-1` or `$-1`).
fn encode(parts: &[Part], nil_fields: &[u8]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", parts.len()).into_bytes();
    for (name, entries) in parts {
        out.extend_from_slice(b"*2\r\n");
        bulk(&mut out, name.as_bytes());
        out.extend_from_slice(format!("*{}\r\n", entries.len()).as_bytes());
        for ((ms, seq), fields) in entries {
            out.extend_from_slice(b"*2\r\n");
            bulk(&mut out, format!("{ms}-{seq}").as_bytes());
            match fields {
                None => out.extend_from_slice(nil_fields),
                Some(pairs) => {
                    out.extend_from_slice(format!("*{}\r\n", pairs.len() * 2).as_bytes());
                    for (f, v) in pairs {
                        bulk(&mut out, f);
                        bulk(&mut out, v);
                    }
                }
            }
        }
    }
    out
}

/// What redsink read before this parser: redis-rs' parser, then `parse_read_reply`.
fn by_redis_rs(bytes: &[u8]) -> Option<Vec<StreamEntry>> {
    let value = redis::parse_redis_value(bytes).ok()?;
    parse_read_reply(value).ok()
}

/// Scans `bytes` arriving in the given pieces: the length once complete.
fn scan_in_pieces(bytes: &[u8], cuts: &[usize]) -> Result<Option<usize>, Malformed> {
    let mut frame = Frame::default();
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    for cut in cuts {
        if let Some(done) = frame.scan(&bytes[..cut])? {
            return Ok(Some(done));
        }
    }
    frame.scan(bytes)
}

fn part() -> impl Strategy<Value = Part> {
    let field = proptest::collection::vec(any::<u8>(), 0..12);
    let fields =
        proptest::option::weighted(0.9, proptest::collection::vec((field.clone(), field), 0..4));
    let entry = ((any::<u64>(), any::<u64>()), fields);
    ("[a-z:.0-9]{1,12}", proptest::collection::vec(entry, 0..5))
}

proptest! {
    #[test]
    fn reads_replies_as_redis_rs_does_in_any_pieces(
        parts in proptest::collection::vec(part(), 0..4),
        nil_array in any::<bool>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
        trailing in proptest::collection::vec(any::<u8>(), 0..4),
    ) {
        let bytes = encode(&parts, if nil_array { b"*-1\r\n" } else { b"$-1\r\n" });
        let expected = by_redis_rs(&bytes);
        prop_assert!(expected.is_some(), "the generator writes valid replies");
        prop_assert_eq!(read_entries(&bytes), expected);
        prop_assert_eq!(scan_in_pieces(&bytes, &cuts), Ok(Some(bytes.len())));
        // Bytes after a complete reply are not part of it.
        let mut longer = bytes.clone();
        longer.extend_from_slice(&trailing);
        prop_assert_eq!(Frame::default().scan(&longer), Ok(Some(bytes.len())));
    }

    #[test]
    fn any_bytes_are_scanned_and_read_without_panicking(
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
        prefix in prop_oneof![Just(&b""[..]), Just(&b"*1\r\n*2\r\n"[..]), Just(&b"*2\r\n$1\r\n"[..])],
    ) {
        let mut all = prefix.to_vec();
        all.extend_from_slice(&bytes);
        let scanned = Frame::default().scan(&all);
        if let Some(entries) = read_entries(&all) {
            // What it reads, redis-rs reads the same.
            prop_assert_eq!(Some(entries), by_redis_rs(&all));
        }
        if let Ok(Some(len)) = scanned {
            prop_assert!(len <= all.len());
        }
    }
}

#[test]
fn a_timed_out_block_is_nil() {
    assert_eq!(Frame::default().scan(b"*-1\r\n"), Ok(Some(5)));
    assert_eq!(read_entries(b"*-1\r\n"), Some(Vec::new()));
}

#[test]
fn error_replies_and_other_types_are_left_to_redis_rs() {
    let nogroup = b"-NOGROUP No such key 's' or consumer group 'g'\r\n";
    assert_eq!(Frame::default().scan(nogroup), Ok(Some(nogroup.len())));
    assert_eq!(read_entries(nogroup), None);
    for other in [&b":3\r\n"[..], b"+OK\r\n", b"$2\r\nhi\r\n"] {
        assert_eq!(Frame::default().scan(other), Ok(Some(other.len())));
        assert_eq!(read_entries(other), None);
    }
    // An ID Redis would never send, a stream part of three items, an odd field count.
    for shape in [
        &b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\nx-y\r\n*0\r\n"[..],
        b"*1\r\n*3\r\n$1\r\ns\r\n*0\r\n*0\r\n",
        b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*1\r\n$1\r\nf\r\n",
    ] {
        assert_eq!(Frame::default().scan(shape), Ok(Some(shape.len())));
        assert_eq!(read_entries(shape), None);
        assert!(by_redis_rs(shape).is_none());
    }
}

#[test]
fn what_is_not_resp2_is_an_error() {
    assert!(Frame::default().scan(b"%1\r\n").is_err(), "RESP3 map");
    assert!(Frame::default().scan(b"*1\n").is_err(), "LF without CR");
    assert!(
        Frame::default().scan(b"$3\r\nabcde").is_err(),
        "bulk longer than said"
    );
    assert!(Frame::default().scan(b"*-2\r\n").is_err());
    assert!(Frame::default().scan(b"$+3\r\nabc\r\n").is_err(), "a sign");
    assert!(Frame::default().scan(b"$\r\n").is_err(), "no digits");
    assert_eq!(
        Frame::default().scan(b"*2\r\n$3\r\nab"),
        Ok(None),
        "incomplete"
    );
}
