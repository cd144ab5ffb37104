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
