//! Manifests: `pull::referenced_digests` on any bytes.
//!
//! Properties: never panics; returns exactly the valid digests of `config`, `layers[]`,
//! `manifests[]` and `blobs[]`, in that order (a model written against `serde_json` here);
//! never the `subject` unless something else references the same digest.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use stevedore::pull::referenced_digests;
use stevedore::reference::Digest;

fn digest_of(v: &Value) -> Option<Digest> {
    v.get("digest")?.as_str()?.parse().ok()
}

fn model(v: &Value) -> Vec<Digest> {
    let mut out = Vec::new();
    if let Some(d) = v.get("config").and_then(digest_of) {
        out.push(d);
    }
    for list in ["layers", "manifests", "blobs"] {
        if let Some(items) = v.get(list).and_then(Value::as_array) {
            out.extend(items.iter().filter_map(digest_of));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    let got = referenced_digests(&bytes);
    for d in &got {
        assert_eq!(d.to_string().parse::<Digest>().as_ref(), Ok(d));
    }
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        assert!(
            got.is_empty(),
            "digests from bytes that are not JSON: {got:?}"
        );
        return;
    };
    let expected = model(&v);
    assert_eq!(got, expected);
    if let Some(subject) = v.get("subject").and_then(digest_of) {
        assert!(
            !got.contains(&subject) || expected.contains(&subject),
            "the subject {subject} was returned"
        );
    }
});
