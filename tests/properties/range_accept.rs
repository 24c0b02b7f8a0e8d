//! Properties of the `Range` and `Accept` parsers.

use proptest::prelude::*;

use stevedore::pull::{ByteRange, MANIFEST_TYPES, ManifestAccept, Span};

use super::config;

fn range_model(range: ByteRange, size: u64) -> Span {
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

fn any_range() -> impl Strategy<Value = ByteRange> {
    let n = prop_oneof![0u64..16, any::<u64>(), Just(u64::MAX), Just(u64::MAX - 1)];
    (0u8..3, n.clone(), n).prop_map(|(k, a, b)| match k {
        0 => ByteRange::From(a),
        1 => ByteRange::Between(a, b),
        _ => ByteRange::Last(a),
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn resolving_any_range_stays_within_the_content(range in any_range(), size in prop_oneof![0u64..32, any::<u64>(), Just(u64::MAX)]) {
        let span = range.resolve(size);
        if let Span::Part { start, end } = span {
            prop_assert!(start < end && end <= size, "{:?} of {}: {:?}", range, size, span);
        }
        prop_assert_ne!(span, Span::Whole);
        prop_assert_eq!(span, range_model(range, size));
    }

    #[test]
    fn resolve_never_panics_for_any_numbers(a in any::<u64>(), b in any::<u64>(), size in any::<u64>()) {
        for range in [ByteRange::From(a), ByteRange::Between(a, b), ByteRange::Between(b, a), ByteRange::Last(a)] {
            let _ = range.resolve(size);
            let _ = range.resolve(a);
            let _ = range.resolve(b);
        }
    }

    #[test]
    fn printed_ranges_parse(a in any::<u64>(), b in any::<u64>(), upper in any::<bool>(), pad in " {0,2}") {
        let unit = if upper { "BYTES=" } else { "bytes=" };
        let between = ByteRange::parse(&format!("{pad}{unit}{a}{pad}-{pad}{b}{pad}"));
        prop_assert_eq!(between, (a <= b).then_some(ByteRange::Between(a, b)));
        prop_assert_eq!(ByteRange::parse(&format!("{unit}{a}-")), Some(ByteRange::From(a)));
        prop_assert_eq!(ByteRange::parse(&format!("{unit}-{b}")), Some(ByteRange::Last(b)));
        prop_assert_eq!(ByteRange::parse(&format!("{unit}0-{a},{b}-")), None);
        prop_assert_eq!(ByteRange::parse(&format!("items={a}-")), None);
    }

    #[test]
    fn parsed_ranges_print_back(value in prop_oneof![
        any::<String>(),
        "(bytes|BYTES|Bytes|byte)=[ ]?[0-9]{0,21}[ ]?-[ ]?[0-9+-]{0,21}[ ,]{0,2}",
    ]) {
        if let Some(range) = ByteRange::parse(&value) {
            if let ByteRange::Between(s, e) = range {
                prop_assert!(s <= e);
            }
            prop_assert_eq!(ByteRange::parse(&range.header()), Some(range));
        }
    }

    #[test]
    fn accept_sets_are_known_types_in_order(
        chosen in prop::sample::subsequence(MANIFEST_TYPES.to_vec(), 0..=MANIFEST_TYPES.len()),
        extra in prop::collection::vec(prop_oneof!["[a-z]{1,8}/[a-z.+-]{1,12}", Just("*/*".to_owned()), Just("application/json".to_owned())], 0..3),
        shuffle in any::<u64>(),
        upper in any::<bool>(),
        params in prop::option::of(Just("; q=0.5")),
        join in any::<bool>(),
    ) {
        let mut values: Vec<String> = chosen
            .iter()
            .map(|t| {
                let t = if upper { t.to_ascii_uppercase() } else { (*t).to_owned() };
                format!("{t}{}", params.unwrap_or(""))
            })
            .chain(extra.iter().cloned())
            .collect();
        let len = values.len().max(1);
        values.rotate_left((shuffle as usize) % len);
        let accept = if join {
            ManifestAccept::parse([values.join(", ").as_str()])
        } else {
            ManifestAccept::parse(values.iter().map(String::as_str))
        };
        let wildcard = extra.iter().any(|e| e == "*/*" || e == "application/json");
        let expected: Vec<String> = if chosen.is_empty() || wildcard {
            MANIFEST_TYPES.iter().map(|t| (*t).to_owned()).collect()
        } else {
            chosen.iter().map(|t| (*t).to_owned()).collect()
        };
        prop_assert_eq!(accept.media_types(), expected);
        prop_assert_eq!(ManifestAccept::parse(accept.media_types().iter().map(String::as_str)), accept);
    }

    #[test]
    fn any_accept_list_is_a_nonempty_known_set(values in prop::collection::vec(any::<String>(), 0..4)) {
        let accept = ManifestAccept::parse(values.iter().map(String::as_str));
        let types = accept.media_types();
        prop_assert!(!types.is_empty());
        prop_assert!(types.iter().all(|t| MANIFEST_TYPES.contains(&t.as_str())));
    }
}
