//! `Accept` headers: `pull::ManifestAccept::parse` on any list of header values.
//!
//! Properties: the set is never empty and holds only known manifest types, in their order;
//! it parses back from its own media types; neither the order of values nor how they are
//! split into header lines changes it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use stevedore::pull::{MANIFEST_TYPES, ManifestAccept};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let values: Vec<&str> = text.split('\n').collect();
    let accept = ManifestAccept::parse(values.iter().copied());

    let types = accept.media_types();
    assert!(!types.is_empty());
    let positions: Vec<usize> = types
        .iter()
        .map(|t| {
            MANIFEST_TYPES
                .iter()
                .position(|k| k == t)
                .unwrap_or_else(|| panic!("unknown type {t}"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{types:?}");
    assert_eq!(
        ManifestAccept::parse(types.iter().map(String::as_str)),
        accept
    );
    let key = accept.key();
    assert!(key.starts_with("accept-") && key.len() == 9, "{key}");

    assert_eq!(ManifestAccept::parse(values.iter().rev().copied()), accept);
    let joined = values.join(",");
    assert_eq!(ManifestAccept::parse([joined.as_str()]), accept);
});
