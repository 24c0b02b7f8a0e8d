//! Properties of the `WWW-Authenticate` challenge parser.

use proptest::prelude::*;

use stevedore::upstream::{Challenge, parse_challenge};

use super::config;

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,10}"
}

/// A challenge to print: scheme, params (name, value) in the case given.
fn challenge() -> impl Strategy<Value = (String, Vec<(String, String)>)> {
    (
        token(),
        prop::collection::vec((token(), any::<String>()), 0..4),
    )
}

fn quote(v: &str) -> String {
    let mut out = String::from("\"");
    for c in v.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn printed_challenges_parse_back(challenges in prop::collection::vec(challenge(), 0..4), spaces in 0usize..3) {
        let pad = " ".repeat(spaces);
        let printed: Vec<String> = challenges
            .iter()
            .map(|(scheme, params)| {
                let params: Vec<String> = params
                    .iter()
                    .map(|(k, v)| format!("{k}{pad}={pad}{}", quote(v)))
                    .collect();
                if params.is_empty() {
                    scheme.clone()
                } else {
                    format!("{scheme} {}", params.join(&format!(",{pad}")))
                }
            })
            .collect();
        let header = printed.join(&format!(",{pad}"));
        let expected: Vec<Challenge> = challenges
            .iter()
            .map(|(scheme, params)| Challenge {
                scheme: scheme.to_ascii_lowercase(),
                params: params.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect(),
            })
            .collect();
        prop_assert_eq!(parse_challenge(&header), expected);
    }

    #[test]
    fn token68_is_one_unnamed_value(scheme in token(), t in "[A-Za-z0-9._~+/-]{1,20}={0,2}", then in prop::option::of(challenge())) {
        let mut header = format!("{scheme} {t}");
        if let Some((s2, params)) = &then {
            header.push_str(&format!(", {s2}"));
            for (i, (k, v)) in params.iter().enumerate() {
                header.push_str(if i == 0 { " " } else { ", " });
                header.push_str(&format!("{k}={}", quote(v)));
            }
        }
        let got = parse_challenge(&header);
        prop_assert!(!got.is_empty());
        prop_assert_eq!(&got[0].scheme, &scheme.to_ascii_lowercase());
        prop_assert_eq!(&got[0].params, &vec![(String::new(), t.clone())]);
        prop_assert_eq!(got.len(), 1 + usize::from(then.is_some()), "{:?}", got);
    }

    #[test]
    fn any_header_parses_to_token_schemes(value in prop_oneof![
        any::<String>(),
        "[A-Za-z]{1,6}( [a-z]{1,5}=(\"[^\"]{0,8}\"?|[a-z=]{0,4}))?([ ,\t]{0,3}[A-Za-z\"=\\\\]{0,6}){0,4}",
    ]) {
        for c in parse_challenge(&value) {
            prop_assert!(!c.scheme.is_empty() && c.scheme.bytes().all(is_tchar), "{:?}", c);
            prop_assert!(!c.scheme.bytes().any(|b| b.is_ascii_uppercase()), "{:?}", c);
            for (k, _) in &c.params {
                prop_assert!(k.is_empty() || k.bytes().all(is_tchar), "{:?}", c);
                prop_assert!(!k.bytes().any(|b| b.is_ascii_uppercase()), "{:?}", c);
            }
        }
    }
}
