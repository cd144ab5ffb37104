//! [`Texts`]: the values of an upsert as Postgres text, all in one buffer — two
//! allocations a row instead of one per value, made and freed in bulk (a batch is
//! built on one thread and dropped on another, where each free costs more).

use std::fmt;

/// A value's place in the buffer; `NULL` for SQL NULL.
type Span = (u32, u32);
const NULL: Span = (u32::MAX, u32::MAX);

/// Values of an upsert, in the order of its columns; `None` is SQL NULL.
#[derive(Clone, Default)]
pub struct Texts {
    buf: String,
    spans: Vec<Span>,
}

impl Texts {
    pub fn get(&self, i: usize) -> Option<&str> {
        match *self.spans.get(i)? {
            NULL => None,
            (start, end) => self.buf.get(start as usize..end as usize),
        }
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = Option<&str>> {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// Equal values, however the buffers are laid out.
impl PartialEq for Texts {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Texts {}

impl fmt::Debug for Texts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> FromIterator<Option<&'a str>> for Texts {
    fn from_iter<I: IntoIterator<Item = Option<&'a str>>>(values: I) -> Self {
        let mut b = Builder::default();
        for (col, v) in values.into_iter().enumerate() {
            b.push(col, v);
        }
        b.finish().1
    }
}

/// Column values as they are found, in any column order: [`Builder::finish`] orders
/// them by column, the first value of a column given twice winning.
#[derive(Default)]
pub(super) struct Builder {
    buf: String,
    pairs: Vec<(usize, Span)>,
}

impl Builder {
    pub fn with_capacity(values: usize) -> Self {
        Builder {
            buf: String::with_capacity(values * 16),
            pairs: Vec::with_capacity(values),
        }
    }

    pub fn push(&mut self, col: usize, value: Option<&str>) {
        let span = match value {
            Some(v) => {
                let start = self.buf.len();
                self.buf.push_str(v);
                self.span_from(start)
            }
            None => NULL,
        };
        self.pairs.push((col, span));
    }

    /// A value written by `write` into the buffer; `Ok(false)`: NULL.
    pub fn push_with<E>(
        &mut self,
        col: usize,
        write: impl FnOnce(&mut String) -> Result<bool, E>,
    ) -> Result<(), E> {
        let start = self.buf.len();
        let span = if write(&mut self.buf)? {
            self.span_from(start)
        } else {
            self.buf.truncate(start);
            NULL
        };
        self.pairs.push((col, span));
        Ok(())
    }

    /// The span of what the buffer got since `start`. A row's text is far below 4 GiB
    /// (an entry is at most 512 MB): saturating is only a guard.
    fn span_from(&self, start: usize) -> Span {
        let at = |n: usize| u32::try_from(n).unwrap_or(u32::MAX - 1);
        (at(start), at(self.buf.len()))
    }

    pub fn has(&self, col: usize) -> bool {
        self.pairs.iter().any(|(c, _)| *c == col)
    }

    pub fn remove(&mut self, col: usize) {
        self.pairs.retain(|(c, _)| *c != col);
    }

    /// (columns ascending, their values).
    pub fn finish(mut self) -> (Vec<usize>, Texts) {
        self.pairs.sort_by_key(|(c, _)| *c);
        self.pairs.dedup_by_key(|(c, _)| *c);
        let (columns, spans) = self.pairs.into_iter().unzip();
        (
            columns,
            Texts {
                buf: self.buf,
                spans,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_back_by_column_first_one_winning() {
        let mut b = Builder::default();
        b.push(2, Some("two"));
        b.push(0, None);
        b.push(1, Some(""));
        b.push(2, Some("again"));
        b.push_with(3, |buf| {
            buf.push_str("dropped");
            Ok::<_, ()>(false)
        })
        .expect("ok");
        assert!(b.has(0) && b.has(1) && !b.has(4));
        let (columns, texts) = b.finish();
        assert_eq!(columns, vec![0, 1, 2, 3]);
        assert_eq!(
            texts.iter().collect::<Vec<_>>(),
            vec![None, Some(""), Some("two"), None]
        );
        assert_eq!(texts.get(4), None);
        let same: Texts = [None, Some(""), Some("two"), None].into_iter().collect();
        assert_eq!(texts, same);
    }
}
