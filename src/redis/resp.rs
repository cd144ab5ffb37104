//! RESP2 replies on the reader's own connection (`raw.rs`): where a reply ends, found
//! incrementally as its bytes arrive ([`Frame`]), and an XREADGROUP reply read straight
//! into [`StreamEntry`]s ([`read_entries`]), without a `redis::Value` tree (redis-rs'
//! combine parser was a fifth of redsink's CPU in a backlog drain).
//!
//! [`read_entries`] only answers for the shapes XREADGROUP replies with (nil, or
//! streams of `[id, fields | nil]` entries of bulk strings, names and IDs well formed);
//! anything else (an error reply, another type, a bad ID) is `None`, and the caller
//! parses the frame with redis-rs' own parser, so the error says what it always said.
//! Pure.

use std::sync::Arc;

use crate::entry::{EntryId, StreamEntry};

/// The scan of one reply: how far it got, and the items still owed by each array it is
/// inside of (outermost first).
#[derive(Debug, Default)]
pub(crate) struct Frame {
    pos: usize,
    open: Vec<u64>,
}

/// A reply that is not RESP2 (or not from a Redis server).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Malformed(pub String);

impl Frame {
    /// Scans on through `buf` (the reply's bytes so far, from its first): its length once
    /// it is complete, `None` while more is to come. Each call resumes where the last
    /// one stopped, so a large reply arriving in pieces is scanned once.
    pub(crate) fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, Malformed> {
        loop {
            let Some((header, body)) = line(buf, self.pos)? else {
                return Ok(None);
            };
            let kind = buf[self.pos];
            match kind {
                b'+' | b'-' | b':' => self.pos = body,
                b'$' => {
                    let len = length(header)?;
                    if len >= 0 {
                        let end = body + usize::try_from(len).map_err(|_| bad("length"))? + 2;
                        if end > buf.len() {
                            return Ok(None);
                        }
                        if &buf[end - 2..end] != b"\r\n" {
                            return Err(bad("a bulk string not ended by CRLF"));
                        }
                        self.pos = end;
                    } else {
                        self.pos = body;
                    }
                }
                b'*' => {
                    let n = length(header)?;
                    self.pos = body;
                    if n > 0 {
                        self.open.push(u64::try_from(n).map_err(|_| bad("length"))?);
                        continue;
                    }
                }
                other => {
                    return Err(Malformed(format!(
                        "unexpected reply type byte 0x{other:02x} (not RESP2)"
                    )));
                }
            }
            // An item ended: it counts for the array it is in, which may end with it.
            loop {
                match self.open.last_mut() {
                    None => return Ok(Some(self.pos)),
                    Some(left) => {
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                        self.open.pop();
                    }
                }
            }
        }
    }
}

fn bad(what: &str) -> Malformed {
    Malformed(format!("malformed reply: {what}"))
}

/// The header line at `pos` (without its type byte and CRLF) and where the item's body
/// starts; `None` while the line is incomplete.
fn line(buf: &[u8], pos: usize) -> Result<Option<(&[u8], usize)>, Malformed> {
    let Some(rest) = buf.get(pos..).filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    if nl == 0 || rest[nl - 1] != b'\r' {
        return Err(bad("a line not ended by CRLF"));
    }
    Ok(Some((&rest[1..nl - 1], pos + nl + 1)))
}

/// A `$` or `*` length: `-1` or up to 18 decimal digits (read by hand: a reply of a
/// full batch has ~30,000 of them).
fn length(text: &[u8]) -> Result<i64, Malformed> {
    if text == b"-1" {
        return Ok(-1);
    }
    if text.is_empty() || text.len() > 18 || !text.iter().all(u8::is_ascii_digit) {
        return Err(bad("a length that is not -1 or a number"));
    }
    Ok(text.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
}

/// A cursor over one complete frame.
struct Items<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// One item header: `*n` (n ≥ 0), a nil (`*-1` or `$-1`), or a bulk string.
enum Item<'a> {
    Array(usize),
    Nil,
    Bulk(&'a [u8]),
}

impl<'a> Items<'a> {
    fn next(&mut self) -> Option<Item<'a>> {
        let (header, body) = line(self.buf, self.pos).ok()??;
        let n = length(header).ok()?;
        match self.buf[self.pos] {
            b'*' => {
                self.pos = body;
                Some(if n < 0 {
                    Item::Nil
                } else {
                    Item::Array(usize::try_from(n).ok()?)
                })
            }
            b'$' if n < 0 => {
                self.pos = body;
                Some(Item::Nil)
            }
            b'$' => {
                let end = body.checked_add(usize::try_from(n).ok()?)?;
                let bytes = self.buf.get(body..end)?;
                self.pos = end + 2;
                Some(Item::Bulk(bytes))
            }
            _ => None,
        }
    }

    fn array(&mut self) -> Option<usize> {
        match self.next()? {
            Item::Array(n) => Some(n),
            _ => None,
        }
    }

    fn bulk(&mut self) -> Option<&'a [u8]> {
        match self.next()? {
            Item::Bulk(b) => Some(b),
            _ => None,
        }
    }
}

/// An XREADGROUP reply (a complete frame) as entries, in reply order; `None` for
/// anything but the shapes it replies with (see the module doc).
pub(crate) fn read_entries(frame: &[u8]) -> Option<Vec<StreamEntry>> {
    let mut items = Items { buf: frame, pos: 0 };
    let streams = match items.next()? {
        Item::Nil => return Some(Vec::new()),
        Item::Array(n) => n,
        Item::Bulk(_) => return None,
    };
    let mut out = Vec::new();
    for _ in 0..streams {
        if items.array()? != 2 {
            return None;
        }
        let stream: Arc<str> = Arc::from(std::str::from_utf8(items.bulk()?).ok()?);
        let entries = items.array()?;
        out.reserve(entries);
        for _ in 0..entries {
            if items.array()? != 2 {
                return None;
            }
            let id = EntryId::parse(std::str::from_utf8(items.bulk()?).ok()?)?;
            let fields = match items.next()? {
                Item::Nil => None,
                Item::Array(n) if n % 2 == 0 => {
                    let mut pairs = Vec::with_capacity(n / 2);
                    for _ in 0..n / 2 {
                        let field = items.bulk()?.to_vec();
                        pairs.push((field, items.bulk()?.to_vec()));
                    }
                    Some(pairs)
                }
                _ => return None,
            };
            out.push(StreamEntry {
                deliveries: 0,
                stream: stream.clone(),
                id,
                fields,
            });
        }
    }
    (items.pos == frame.len()).then_some(out)
}

#[cfg(test)]
mod tests;
