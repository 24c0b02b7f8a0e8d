//! `Range` headers: `pull::ByteRange::parse` on any value, and `ByteRange::resolve` of any
//! range (parsed or built from any numbers) against any size.
//!
//! Input: 8 bytes of content size, 8 + 8 bytes of range numbers, 1 byte of range kind (all
//! little-endian, zero-padded when short), then the header value as UTF-8.
//!
//! Properties: resolving never panics and a part lies within the content
//! (`start < end <= size`), matching a simple model; a parsed range prints back (`header`)
//! to a value that parses to the same range.

#![no_main]

use libfuzzer_sys::fuzz_target;
use stevedore::pull::{ByteRange, Span};

fn take_u64(data: &[u8], at: usize) -> u64 {
    let mut buf = [0u8; 8];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = data.get(at + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(buf)
}

fn model(range: ByteRange, size: u64) -> Span {
    let part = |start: u64, end: u64| {
        if start < end && end <= size {
            Span::Part { start, end }
        } else {
            Span::Unsatisfiable
        }
    };
    match range {
        ByteRange::From(s) => part(s, size),
        ByteRange::Between(s, e) => part(s, e.saturating_add(1).min(size)),
        ByteRange::Last(n) => part(size - n.min(size), size),
    }
}

fn check(range: ByteRange, size: u64) {
    let span = range.resolve(size);
    match span {
        Span::Part { start, end } => {
            assert!(start < end && end <= size, "{range:?} of {size}: {span:?}")
        }
        Span::Whole => panic!("a range resolved to the whole content: {range:?} of {size}"),
        Span::Unsatisfiable => {}
    }
    assert_eq!(span, model(range, size), "{range:?} of {size}");
}

fuzz_target!(|data: &[u8]| {
    let size = take_u64(data, 0);
    let a = take_u64(data, 8);
    let b = take_u64(data, 16);
    let kind = data.get(24).copied().unwrap_or(0);
    let built = match kind % 3 {
        0 => ByteRange::From(a),
        1 => ByteRange::Between(a, b),
        _ => ByteRange::Last(a),
    };
    check(built, size);
    // Small sizes are where off-by-ones live.
    check(built, size % 64);

    let text = data.get(25..).unwrap_or(&[]);
    let Ok(value) = std::str::from_utf8(text) else {
        return;
    };
    if let Some(range) = ByteRange::parse(value) {
        if let ByteRange::Between(s, e) = range {
            assert!(s <= e, "{value:?} parsed to {range:?}");
        }
        assert_eq!(ByteRange::parse(&range.header()), Some(range), "{value:?}");
        check(range, size);
        check(range, size % 64);
    }
});
