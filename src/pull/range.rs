//! `Range: bytes=…` (RFC 9110 §14.1.2), parsed once at the edge into a typed value and
//! resolved against a blob's size without overflow, whatever numbers a client sends.

/// One byte range. Several ranges, other units and malformed values are not a `ByteRange`:
/// they are answered with the whole content, which RFC 9110 §14.2 allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-`
    From(u64),
    /// `bytes=a-b`, both inclusive, `a <= b`.
    Between(u64, u64),
    /// `bytes=-n`: the last `n` bytes.
    Last(u64),
}

/// A range resolved against content of a known size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    Whole,
    /// `[start, end)`, non-empty, within the content.
    Part {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
}

impl ByteRange {
    /// Parses a `Range` header value; `None` when it should be ignored.
    pub fn parse(value: &str) -> Option<Self> {
        let spec = value.trim();
        let spec = spec
            .get(..6)
            .filter(|u| u.eq_ignore_ascii_case("bytes="))
            .map(|_| &spec[6..])?;
        if spec.contains(',') {
            return None;
        }
        let (a, b) = spec.split_once('-')?;
        let (a, b) = (a.trim(), b.trim());
        let num = |s: &str| -> Option<u64> {
            (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        match (a.is_empty(), b.is_empty()) {
            (true, false) => num(b).map(ByteRange::Last),
            (false, true) => num(a).map(ByteRange::From),
            (false, false) => match (num(a)?, num(b)?) {
                (s, e) if s <= e => Some(ByteRange::Between(s, e)),
                _ => None,
            },
            (true, true) => None,
        }
    }

    /// The bytes of content of `size` this range selects.
    pub fn resolve(self, size: u64) -> Span {
        let (start, end) = match self {
            ByteRange::From(s) => (s, size),
            ByteRange::Between(s, e) => (s, e.saturating_add(1).min(size)),
            ByteRange::Last(0) => return Span::Unsatisfiable,
            ByteRange::Last(n) => (size.saturating_sub(n), size),
        };
        if start >= size || start >= end {
            Span::Unsatisfiable
        } else {
            Span::Part { start, end }
        }
    }

    /// The header value to send upstream.
    pub fn header(self) -> String {
        match self {
            ByteRange::From(s) => format!("bytes={s}-"),
            ByteRange::Between(s, e) => format!("bytes={s}-{e}"),
            ByteRange::Last(n) => format!("bytes=-{n}"),
        }
    }
}

/// Resolves an optional range.
pub fn span(range: Option<ByteRange>, size: u64) -> Span {
    range.map_or(Span::Whole, |r| r.resolve(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<ByteRange> {
        ByteRange::parse(s)
    }

    #[test]
    fn parsing() {
        assert_eq!(p("bytes=2-"), Some(ByteRange::From(2)));
        assert_eq!(p("bytes=2-4"), Some(ByteRange::Between(2, 4)));
        assert_eq!(p("BYTES= 2 - 4"), Some(ByteRange::Between(2, 4)));
        assert_eq!(p("bytes=-3"), Some(ByteRange::Last(3)));
        for ignored in [
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=5-2",
            "bytes=-",
            "bytes=+1-2",
            "bytes=99999999999999999999999-",
            "bytes",
            "",
            "bytes=é-",
        ] {
            assert_eq!(p(ignored), None, "{ignored}");
        }
    }

    #[test]
    fn resolving_never_overflows() {
        let part = |start, end| Span::Part { start, end };
        assert_eq!(ByteRange::From(2).resolve(10), part(2, 10));
        assert_eq!(ByteRange::Between(2, 4).resolve(10), part(2, 5));
        assert_eq!(ByteRange::Between(2, 40).resolve(10), part(2, 10));
        assert_eq!(
            ByteRange::Between(0, u64::MAX).resolve(10),
            part(0, 10),
            "bytes=0-18446744073709551615"
        );
        assert_eq!(ByteRange::Last(3).resolve(10), part(7, 10));
        assert_eq!(ByteRange::Last(u64::MAX).resolve(10), part(0, 10));
        assert_eq!(ByteRange::From(10).resolve(10), Span::Unsatisfiable);
        assert_eq!(ByteRange::Last(0).resolve(10), Span::Unsatisfiable);
        assert_eq!(ByteRange::From(0).resolve(0), Span::Unsatisfiable);
        assert_eq!(span(None, 10), Span::Whole);
    }
}
