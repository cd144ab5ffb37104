//! A JSON cursor for the fast path: reads exactly the JSON grammar (RFC 8259, as
//! serde_json reads it) over the entry's text, borrowing what it can. Every method
//! returns `None` for anything it does not accept — bad JSON, or JSON the fast path
//! leaves to the `Value` path (a key with escapes, nesting deeper than [`MAX_DEPTH`]):
//! `None` is never an answer, only "not sure".

use std::borrow::Cow;

use serde_json::Value;

/// Nesting the fast path reads; serde_json's own limit (128) is left to the `Value`
/// path, which says what is wrong.
pub(super) const MAX_DEPTH: usize = 100;

/// A number as serde_json reads one (with `arbitrary_precision`): a whole number that
/// fits a u64 (not negative) or an i64 (negative, not `-0`), else its text.
pub(super) enum Number<'a> {
    U64(u64),
    I64(i64),
    Text(&'a str),
}

pub(super) struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(text: &'a str) -> Self {
        Cursor { text, pos: 0 }
    }

    #[inline]
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// The next byte after whitespace, not consumed.
    #[inline]
    pub fn peek(&mut self) -> Option<u8> {
        while let Some(&b) = self.bytes().get(self.pos) {
            if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(b);
            }
            self.pos += 1;
        }
        None
    }

    /// Consumes `b` (after whitespace).
    #[inline]
    pub fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.pos += 1)
    }

    /// Only whitespace is left.
    pub fn at_end(&mut self) -> bool {
        self.peek().is_none()
    }

    /// Reads an object's members: `member` reads each value (the cursor is after the
    /// colon). Keys with escapes are left to the `Value` path.
    pub fn object(
        &mut self,
        mut member: impl FnMut(&mut Self, &'a str) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{')?;
        self.items(b'}', |c| {
            let Cow::Borrowed(key) = c.string()? else {
                return None;
            };
            c.eat(b':')?;
            member(c, key)
        })
    }

    /// The items of an object or array after its opening bracket, up to `close`:
    /// none, or `item` then `,` or `close`, and again.
    fn items(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        if self.peek()? == close {
            self.pos += 1;
            return Some(());
        }
        loop {
            item(self)?;
            match self.peek()? {
                b',' => self.pos += 1,
                b if b == close => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string (after whitespace): borrowed when it has no escapes; unescaped here when
    /// it has only one-character escapes (`\"`, as in the PostgreSQL connector's
    /// `source.sequence`), else by serde_json (`\u`, surrogate pairs).
    #[inline]
    pub fn string(&mut self) -> Option<Cow<'a, str>> {
        let (inner, escaped) = self.raw_string()?;
        if !escaped {
            return Some(Cow::Borrowed(inner));
        }
        if let Some(plain) = unescape_short(inner) {
            return Some(Cow::Owned(plain));
        }
        let quoted = &self.text[self.pos - inner.len() - 2..self.pos];
        serde_json::from_str::<String>(quoted).ok().map(Cow::Owned)
    }

    /// A string's text between its quotes, and whether it has escapes; escapes are
    /// checked for their form only (as serde_json does for a string it skips).
    #[inline]
    fn raw_string(&mut self) -> Option<(&'a str, bool)> {
        self.eat(b'"')?;
        let start = self.pos;
        let bytes = self.bytes();
        let mut escaped = false;
        loop {
            let i = self.pos + special(&bytes[self.pos..])?;
            match bytes[i] {
                b'"' => {
                    self.pos = i + 1;
                    return Some((&self.text[start..i], escaped));
                }
                b'\\' => {
                    escaped = true;
                    self.pos = i + 2;
                    match *bytes.get(i + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            let hex = bytes.get(i + 2..i + 6)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.pos = i + 6;
                        }
                        _ => return None,
                    }
                }
                // A control character must be escaped.
                _ => return None,
            }
        }
    }

    /// A number (after whitespace), by the JSON grammar.
    #[inline]
    pub fn number(&mut self) -> Option<Number<'a>> {
        self.peek()?;
        let bytes = self.bytes();
        let start = self.pos;
        let mut i = start;
        let digits = |i: &mut usize| {
            let from = *i;
            while bytes.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i > from
        };
        if bytes.get(i) == Some(&b'-') {
            i += 1;
        }
        match bytes.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                digits(&mut i);
            }
            _ => return None,
        }
        let whole = i;
        if bytes.get(i) == Some(&b'.') {
            i += 1;
            if !digits(&mut i) {
                return None;
            }
        }
        if matches!(bytes.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(bytes.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if !digits(&mut i) {
                return None;
            }
        }
        self.pos = i;
        let text = &self.text[start..i];
        if whole == i {
            if let Ok(n) = text.parse::<u64>() {
                return Some(Number::U64(n));
            }
            if text != "-0"
                && let Ok(n) = text.parse::<i64>()
            {
                return Some(Number::I64(n));
            }
        }
        Some(Number::Text(text))
    }

    /// `true`, `false` or `null` (after whitespace).
    #[inline]
    pub fn literal(&mut self) -> Option<Value> {
        self.peek()?;
        let rest = &self.bytes()[self.pos..];
        let (value, len) = if rest.starts_with(b"true") {
            (Value::Bool(true), 4)
        } else if rest.starts_with(b"false") {
            (Value::Bool(false), 5)
        } else if rest.starts_with(b"null") {
            (Value::Null, 4)
        } else {
            return None;
        };
        self.pos += len;
        Some(value)
    }

    /// Skips one value at nesting `depth` (of its container), checking its grammar.
    pub fn skip(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.raw_string().map(drop),
            b'{' | b'[' if depth >= MAX_DEPTH => None,
            b'{' => self.object(|c, _| c.skip(depth + 1)),
            b'[' => {
                self.pos += 1;
                self.items(b']', |c| c.skip(depth + 1))
            }
            b't' | b'f' | b'n' => self.literal().map(drop),
            _ => self.number().map(drop),
        }
    }

    /// One value at nesting `depth`, as serde_json parses it into a `Value`.
    pub fn value(&mut self, depth: usize) -> Option<Value> {
        self.peek()?;
        let start = self.pos;
        self.skip(depth)?;
        serde_json::from_str(&self.text[start..self.pos]).ok()
    }
}

/// A string's text between its quotes (escapes already checked for their form) with
/// its one-character escapes replaced; `None` when it has a `\u` escape.
fn unescape_short(inner: &str) -> Option<String> {
    let mut out = String::with_capacity(inner.len());
    let mut rest = inner;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let c = match rest.as_bytes().get(at + 1)? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            _ => return None,
        };
        out.push(c);
        rest = &rest[at + 2..];
    }
    out.push_str(rest);
    Some(out)
}

/// The index of the first `"`, `\\` or control character, 8 bytes at a time.
#[inline]
fn special(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    // The high bit of each byte that is zero (the lowest one found is exact).
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let found = zero(x ^ (ONES * u64::from(b'"')))
            | zero(x ^ (ONES * u64::from(b'\\')))
            | (x.wrapping_sub(ONES * 0x20) & !x & HIGH);
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let rest = chunks.remainder();
    rest.iter()
        .position(|&b| matches!(b, b'"' | b'\\') || b < 0x20)
        .map(|i| at + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skips(text: &str) -> bool {
        let mut c = Cursor::new(text);
        c.skip(0).is_some() && c.at_end()
    }

    #[test]
    fn accepts_what_serde_json_accepts() {
        for text in [
            "0",
            "-0",
            "1.5e+3",
            "-12.0E-1",
            "123456789012345678901234567890",
            "\"\"",
            "\"a\\u00e9\\n\\\"b\"",
            "true",
            "null",
            "[]",
            "[1, [2, {}], \"x\"]",
            " {\"a\" : {\"b\":[null,false]} , \"c\":\"\\/\"} ",
        ] {
            assert!(serde_json::from_str::<Value>(text).is_ok(), "{text}");
            assert!(skips(text), "{text}");
        }
    }

    #[test]
    fn rejects_what_serde_json_rejects() {
        for text in [
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "\"a\u{1}b\"",
            "\"\\x\"",
            "\"\\u12g4\"",
            "\"abc",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\"}",
            "{a:1}",
            "[1 2]",
            "tru",
            "nul",
            "{\"a\":1}}",
            "",
            "\u{a0}1",
        ] {
            assert!(serde_json::from_str::<Value>(text).is_err(), "{text}");
            assert!(!skips(text), "{text}");
        }
    }

    proptest::proptest! {
        /// Strings read as serde_json reads them, whatever they escape.
        #[test]
        fn strings_unescape_as_serde_json_does(text in "(\\PC|[\"\\\\/\n\t\r\u{8}\u{c}\u{1}\u{1f}])*") {
            let quoted = serde_json::to_string(&text).expect("a string serializes");
            let read = Cursor::new(&quoted).string();
            proptest::prop_assert_eq!(read.as_deref(), Some(text.as_str()));
            // And the escapes serde_json does not write itself.
            let slashed = quoted.replace('/', "\\/");
            let read = Cursor::new(&slashed).string();
            proptest::prop_assert_eq!(read.as_deref(), Some(text.as_str()));
        }
    }

    #[test]
    fn nesting_past_the_limit_is_left_to_the_value_path() {
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(!skips(&deep));
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(skips(&ok));
    }
}
