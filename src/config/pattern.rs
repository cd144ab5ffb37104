//! Stream names in the config: exact names, `{a..b}` ranges and globs.

/// One configured stream, after range expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamPattern {
    Exact(String),
    /// Redis glob syntax (`*`, `?`, `[…]`), resolved with SCAN … MATCH … TYPE stream.
    Glob(String),
}

/// The most streams one range may expand to.
const MAX_RANGE: u64 = 100_000;

impl StreamPattern {
    /// Expands `{a..b}` (one range per name) and classifies each result.
    /// Braces without `..` are literal (Redis Cluster hash tags such as `orders:{0}`).
    pub fn parse(text: &str) -> Result<Vec<StreamPattern>, String> {
        if text.is_empty() {
            return Err("stream name must not be empty".into());
        }
        let names = match find_range(text)? {
            None => vec![text.to_string()],
            Some((start, end, lo, hi)) => (lo..=hi)
                .map(|i| format!("{}{i}{}", &text[..start], &text[end..]))
                .collect(),
        };
        Ok(names
            .into_iter()
            .map(|n| {
                if n.contains(['*', '?', '[']) {
                    StreamPattern::Glob(n)
                } else {
                    StreamPattern::Exact(n)
                }
            })
            .collect())
    }
}

impl StreamPattern {
    /// Whether the stream `name` is one this pattern names (Redis glob rules for a glob).
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::Exact(exact) => exact == name,
            Self::Glob(glob) => glob_match(glob.as_bytes(), name.as_bytes()),
        }
    }

    /// Whether this pattern names the stream `base` (Debezium's topic of a table), or a
    /// shard of it: `base` followed by a separator (`:`, `-`, `.`, `{`, `#`, `/`, `|`)
    /// and more (`orders:3`, `orders-3`, `orders:{3}`).
    pub fn covers(&self, base: &str) -> bool {
        const SEPARATORS: [char; 7] = [':', '-', '.', '{', '#', '/', '|'];
        match self {
            Self::Exact(exact) => {
                exact == base
                    || exact
                        .strip_prefix(base)
                        .is_some_and(|rest| rest.len() > 1 && rest.starts_with(SEPARATORS))
            }
            Self::Glob(_) => {
                self.matches(base)
                    || SEPARATORS
                        .iter()
                        .any(|sep| self.matches(&format!("{base}{sep}0")))
            }
        }
    }
}

/// Redis' glob matching (`stringmatchlen`): `*`, `?`, `[abc]`, `[^a]`, `[a-z]`, `\x`.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let Some((&p, rest)) = pattern.split_first() else {
        return name.is_empty();
    };
    match p {
        b'*' => (0..=name.len()).any(|i| glob_match(rest, &name[i..])),
        b'?' => !name.is_empty() && glob_match(rest, &name[1..]),
        b'[' => {
            let Some((&c, name_rest)) = name.split_first() else {
                return false;
            };
            let (negate, mut class) = match rest.split_first() {
                Some((b'^', r)) => (true, r),
                _ => (false, rest),
            };
            let mut hit = false;
            loop {
                match class {
                    [] => break,
                    [b']', r @ ..] => {
                        class = r;
                        break;
                    }
                    [b'\\', x, r @ ..] => {
                        hit |= *x == c;
                        class = r;
                    }
                    [lo, b'-', hi, r @ ..] if *hi != b']' => {
                        let (lo, hi) = if lo <= hi { (*lo, *hi) } else { (*hi, *lo) };
                        hit |= (lo..=hi).contains(&c);
                        class = r;
                    }
                    [x, r @ ..] => {
                        hit |= *x == c;
                        class = r;
                    }
                }
            }
            hit != negate && glob_match(class, name_rest)
        }
        b'\\' if !rest.is_empty() => {
            name.first() == Some(&rest[0]) && glob_match(&rest[1..], &name[1..])
        }
        _ => name.first() == Some(&p) && glob_match(rest, &name[1..]),
    }
}

/// Finds `{lo..hi}`: returns its byte span and bounds.
fn find_range(text: &str) -> Result<Option<(usize, usize, u64, u64)>, String> {
    let mut search = 0;
    while let Some(open) = text[search..].find('{').map(|i| i + search) {
        let Some(close) = text[open..].find('}').map(|i| i + open) else {
            return Ok(None);
        };
        let inner = &text[open + 1..close];
        if let Some((lo, hi)) = inner.split_once("..") {
            let lo: u64 = lo
                .trim()
                .parse()
                .map_err(|_| format!("range `{{{inner}}}` in `{text}` needs whole numbers"))?;
            let hi: u64 = hi
                .trim()
                .parse()
                .map_err(|_| format!("range `{{{inner}}}` in `{text}` needs whole numbers"))?;
            if lo > hi {
                return Err(format!(
                    "range `{{{inner}}}` in `{text}` is empty: write {{{hi}..{lo}}}"
                ));
            }
            if hi - lo >= MAX_RANGE {
                return Err(format!(
                    "range `{{{inner}}}` in `{text}` is larger than {MAX_RANGE}"
                ));
            }
            if text[close + 1..].contains("..}") {
                return Err(format!("`{text}` has more than one range"));
            }
            return Ok(Some((open, close + 1, lo, hi)));
        }
        search = close + 1;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_ranges_and_classifies_globs() {
        let p = StreamPattern::parse("shop.orders:{0..2}").expect("valid");
        assert_eq!(
            p,
            vec![
                StreamPattern::Exact("shop.orders:0".into()),
                StreamPattern::Exact("shop.orders:1".into()),
                StreamPattern::Exact("shop.orders:2".into()),
            ]
        );
        assert_eq!(
            StreamPattern::parse("db.inv.*").expect("valid"),
            vec![StreamPattern::Glob("db.inv.*".into())]
        );
        assert_eq!(
            StreamPattern::parse("orders:{tag}:{1..1}").expect("valid"),
            vec![StreamPattern::Exact("orders:{tag}:1".into())]
        );
    }

    #[test]
    fn globs_match_as_redis_does() {
        let g = |p: &str, n: &str| StreamPattern::Glob(p.into()).matches(n);
        assert!(g("db.inv.*", "db.inv.customers"));
        assert!(!g("db.inv.*", "db.other.customers"));
        assert!(g("o?ders", "orders") && !g("o?ders", "oders"));
        assert!(g("orders:[0-3]", "orders:2") && !g("orders:[0-3]", "orders:4"));
        assert!(g("orders:[^0]", "orders:1") && !g("orders:[^0]", "orders:0"));
        assert!(g("a\\*b", "a*b") && !g("a\\*b", "axb"));
        assert!(g("*", "") && !g("?", ""));
    }

    #[test]
    fn a_pattern_covers_a_topic_and_its_shards() {
        let covers = |p: &str, base: &str| {
            StreamPattern::parse(p)
                .expect("valid")
                .iter()
                .any(|p| p.covers(base))
        };
        assert!(covers("app.public.orders", "app.public.orders"));
        assert!(covers("app.public.orders:{0..3}", "app.public.orders"));
        assert!(covers("app.public.orders-{0..3}", "app.public.orders"));
        assert!(covers("app.public.*", "app.public.orders"));
        assert!(covers("app.public.orders:*", "app.public.orders"));
        assert!(!covers("app.public.orders_archive", "app.public.orders"));
        assert!(!covers("app.public.orders:", "app.public.orders"));
        assert!(!covers("app.public.lines:{0..3}", "app.public.orders"));
    }

    #[test]
    fn bad_ranges_say_why() {
        assert!(
            StreamPattern::parse("s:{3..1}")
                .expect_err("empty")
                .contains("empty")
        );
        assert!(
            StreamPattern::parse("s:{a..1}")
                .expect_err("nan")
                .contains("whole numbers")
        );
        assert!(StreamPattern::parse("").is_err());
        assert!(StreamPattern::parse("s:{0..9999999}").is_err());
    }
}
