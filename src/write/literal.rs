//! Values written into SQL text as literals, for the statements a batch sends together in
//! one simple query (which has no parameters). Pure: no I/O.
//!
//! An array is written as Postgres' array input syntax inside an escape string literal:
//! `E'{"a","it''s",NULL,"NULL","",  "\\\\"}'`. Every element is double-quoted (so braces,
//! commas, whitespace and the word NULL are plain text), with `\` and `"` escaped for the
//! array parser; the whole is then an `E'…'` literal with `'` and `\` escaped for the SQL
//! lexer. An `E` string reads the same whatever `standard_conforming_strings` says. A SQL
//! NULL element is the bare word `NULL`. Postgres text cannot hold NUL, and the protocol
//! ends a query string at one: a value with a NUL is refused ([`HasNul`]), and the caller
//! sends that batch with bound parameters instead (where Postgres rejects the row itself).

/// A value held a NUL character: it cannot be written as a literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HasNul;

/// Appends `text` to `out`, escaped for an array element inside an `E'…'` literal
/// (without the element's double quotes).
fn push_element(out: &mut String, text: &str) -> Result<(), HasNul> {
    push_escaped(out, text, |b| match b {
        // Array parser: `\\`; SQL lexer: each backslash doubled again.
        b'\\' => Some(r"\\\\"),
        b'"' => Some(r#"\\""#),
        b'\'' => Some("''"),
        _ => None,
    })
}

/// Appends `text` to `out` with the bytes `escape` names replaced, a run of other bytes
/// at a time; stops at a NUL. The escaped bytes are ASCII, so every run is whole UTF-8.
fn push_escaped(
    out: &mut String,
    text: &str,
    escape: impl Fn(u8) -> Option<&'static str>,
) -> Result<(), HasNul> {
    let mut run = 0;
    for (i, &b) in text.as_bytes().iter().enumerate() {
        if b == 0 {
            return Err(HasNul);
        }
        if let Some(escaped) = escape(b) {
            out.push_str(&text[run..i]);
            out.push_str(escaped);
            run = i + 1;
        }
    }
    out.push_str(&text[run..]);
    Ok(())
}

/// Appends a literal of a one-dimensional array of texts (`None` = SQL NULL) to `out`,
/// to be cast by the statement (`::text[]`); `out` is left as it was on error.
pub fn push_text_array<'a>(
    out: &mut String,
    values: impl IntoIterator<Item = Option<&'a str>>,
) -> Result<(), HasNul> {
    let start = out.len();
    out.push_str("E'{");
    for (i, value) in values.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match value {
            None => out.push_str("NULL"),
            Some(text) => {
                out.push('"');
                if let Err(e) = push_element(out, text) {
                    out.truncate(start);
                    return Err(e);
                }
                out.push('"');
            }
        }
    }
    out.push_str("}'");
    Ok(())
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
}

/// Appends a literal of a one-dimensional array of byte strings, to be cast `::bytea[]`:
/// each element in bytea's hex format (`\x0a1b`), which no setting changes.
pub fn push_bytea_array<'a>(out: &mut String, values: impl IntoIterator<Item = &'a [u8]>) {
    out.push_str("E'{");
    for (i, bytes) in values.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // `"\x…"` for the array parser, its backslash doubled twice as in push_element.
        out.push_str(r#""\\\\x"#);
        push_hex(out, bytes);
        out.push('"');
    }
    out.push_str("}'");
}

/// Appends a literal of one byte string, to be cast `::bytea`: `E'\\x0a1b'`.
pub fn push_bytea(out: &mut String, bytes: &[u8]) {
    out.push_str(r"E'\\x");
    push_hex(out, bytes);
    out.push('\'');
}

/// A single text value as a literal (the same escaping as an array's; for values that
/// are not arrays, such as the table name the tombstones record).
pub fn push_text(out: &mut String, text: &str) -> Result<(), HasNul> {
    let start = out.len();
    out.push_str("E'");
    if let Err(e) = push_quoted(out, text) {
        out.truncate(start);
        return Err(e);
    }
    out.push('\'');
    Ok(())
}

/// Appends `text` escaped for the inside of a string literal: quotes doubled, and
/// backslashes doubled (right inside an `E'…'` literal, which reads the same whatever
/// `standard_conforming_strings` says, and in `'…'` only when there are none). Stops
/// at a NUL, which no literal can hold.
pub(super) fn push_quoted(out: &mut String, text: &str) -> Result<(), HasNul> {
    push_escaped(out, text, |b| match b {
        b'\\' => Some(r"\\"),
        b'\'' => Some("''"),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(values: &[Option<&str>]) -> String {
        let mut out = String::from("x");
        match push_text_array(&mut out, values.iter().copied()) {
            Ok(()) => out,
            Err(HasNul) => format!("{out}: NUL"),
        }
    }

    #[test]
    fn elements_are_quoted_for_the_array_parser_then_the_lexer() {
        assert_eq!(texts(&[]), "xE'{}'");
        assert_eq!(texts(&[Some("a"), None]), r#"xE'{"a",NULL}'"#);
        // The string "NULL" is a quoted element, SQL NULL the bare word.
        assert_eq!(texts(&[Some("NULL"), None]), r#"xE'{"NULL",NULL}'"#);
        assert_eq!(texts(&[Some("")]), r#"xE'{""}'"#);
        assert_eq!(texts(&[Some("{a,b} c")]), r#"xE'{"{a,b} c"}'"#);
        assert_eq!(texts(&[Some("it's")]), r#"xE'{"it''s"}'"#);
        assert_eq!(texts(&[Some(r#"say "hi""#)]), r#"xE'{"say \\"hi\\""}'"#);
        assert_eq!(texts(&[Some(r"a\b")]), r#"xE'{"a\\\\b"}'"#);
        assert_eq!(texts(&[Some(r"\'")]), r#"xE'{"\\\\''"}'"#);
        assert_eq!(texts(&[Some("é ✓ 𝄞")]), "xE'{\"é ✓ 𝄞\"}'");
    }

    #[test]
    fn nul_is_refused_and_leaves_the_output_as_it_was() {
        assert_eq!(texts(&[Some("ok"), Some("a\0b")]), "x: NUL");
        let mut out = String::from("y");
        assert_eq!(push_text(&mut out, "a\0"), Err(HasNul));
        assert_eq!(out, "y");
    }

    #[test]
    fn bytes_are_hex_elements() {
        let mut out = String::new();
        push_bytea_array(&mut out, [&[0x0a, 0xff][..], &[][..]]);
        assert_eq!(out, r#"E'{"\\\\x0aff","\\\\x"}'"#);
        let mut out = String::new();
        push_bytea(&mut out, &[0x01, 0xab]);
        assert_eq!(out, r"E'\\x01ab'");
    }

    #[test]
    fn a_single_text_is_an_escape_string() {
        let mut out = String::new();
        assert_eq!(push_text(&mut out, r"public.o'k\"), Ok(()));
        assert_eq!(out, r"E'public.o''k\\'");
    }
}
