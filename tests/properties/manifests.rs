//! Properties of `referenced_digests`, which reads the digests a manifest refers to.

use bytes::Bytes;
use proptest::prelude::*;

use stevedore::pull::referenced_digests;
use stevedore::reference::Digest;

use super::{config, digest_str};

fn digest_field() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{Value, json};
    prop_oneof![
        4 => digest_str().prop_map(|d| json!({ "digest": d, "size": 1 })),
        1 => "sha256:[0-9a-fA-F]{0,65}".prop_map(|d| json!({ "digest": d })),
        1 => Just(json!({ "digest": 7 })),
        1 => Just(json!({})),
        1 => Just(Value::Null),
        1 => Just(json!(["sha256:0"])),
    ]
}

fn digest_of(v: &serde_json::Value) -> Option<Digest> {
    v.get("digest")?.as_str()?.parse().ok()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn manifests_reference_config_layers_children_and_blobs_never_the_subject(
        config in prop::option::of(digest_field()),
        layers in prop::option::of(prop::collection::vec(digest_field(), 0..4)),
        manifests in prop::option::of(prop::collection::vec(digest_field(), 0..3)),
        blobs in prop::option::of(prop::collection::vec(digest_field(), 0..3)),
        subject in prop::option::of(digest_str()),
        noise in prop::option::of(Just(serde_json::json!({"layers": "not a list", "digest": "sha256:x"}))),
    ) {
        let mut m = serde_json::Map::new();
        m.insert("schemaVersion".into(), 2.into());
        let mut expected = Vec::new();
        if let Some(c) = &config {
            m.insert("config".into(), c.clone());
            expected.extend(digest_of(c));
        }
        for (key, list) in [("layers", &layers), ("manifests", &manifests), ("blobs", &blobs)] {
            if let Some(items) = list {
                m.insert(key.into(), serde_json::Value::Array(items.clone()));
                expected.extend(items.iter().filter_map(digest_of));
            }
        }
        if let Some(s) = &subject {
            m.insert("subject".into(), serde_json::json!({ "digest": s, "size": 2 }));
        }
        if let Some(n) = noise {
            m.insert("annotations".into(), n);
        }
        let bytes = Bytes::from(serde_json::to_vec(&m).expect("JSON"));
        let got = referenced_digests(&bytes);
        prop_assert_eq!(&got, &expected);
        if let Some(s) = &subject {
            let s: Digest = s.parse().expect("a valid digest");
            prop_assert!(!got.contains(&s) || expected.contains(&s), "the subject was returned");
        }
    }

    #[test]
    fn any_bytes_never_panic(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..128),
        "\\{\"(config|layers|manifests|blobs|subject)\": ?[\\[{]?(\\{\"digest\": ?\"sha256:[0-9a-f]{0,64}\"\\},?){0,2}[\\]}]?\\}".prop_map(String::into_bytes),
    ]) {
        let got = referenced_digests(&Bytes::from(bytes));
        for d in &got {
            prop_assert_eq!(d.to_string().parse::<Digest>(), Ok(d.clone()));
        }
    }
}
