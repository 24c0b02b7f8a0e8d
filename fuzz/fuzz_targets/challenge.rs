//! `WWW-Authenticate` challenges: `upstream::parse_challenge` on any header value.
//!
//! Properties: schemes and parameter names are lowercase tokens; a token68 value is the only
//! parameter of its challenge; challenges printed back in a canonical form (quoted values)
//! parse to the same challenges.

#![no_main]

use libfuzzer_sys::fuzz_target;
use stevedore::upstream::{Challenge, parse_challenge};

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let challenges = parse_challenge(value);
    let mut token68 = false;
    for c in &challenges {
        assert!(is_token(&c.scheme), "{c:?}");
        assert!(!c.scheme.bytes().any(|b| b.is_ascii_uppercase()), "{c:?}");
        for (name, _) in &c.params {
            if name.is_empty() {
                assert_eq!(c.params.len(), 1, "token68 with other params: {c:?}");
                token68 = true;
            } else {
                assert!(is_token(name), "{c:?}");
                assert!(!name.bytes().any(|b| b.is_ascii_uppercase()), "{c:?}");
            }
        }
        if let Some((name, v)) = c.params.first() {
            assert_eq!(c.param(name), Some(v.as_str()));
        }
    }
    if !token68 {
        let printed = render(&challenges);
        assert_eq!(
            parse_challenge(&printed),
            challenges,
            "printed as {printed:?}"
        );
    }
});

/// `scheme name="value", name="value", scheme2, …` with `"` and `\` escaped.
fn render(challenges: &[Challenge]) -> String {
    let mut out = String::new();
    for (i, c) in challenges.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&c.scheme);
        for (j, (name, value)) in c.params.iter().enumerate() {
            out.push_str(if j == 0 { " " } else { ", " });
            out.push_str(name);
            out.push_str("=\"");
            for ch in value.chars() {
                if ch == '"' || ch == '\\' {
                    out.push('\\');
                }
                out.push(ch);
            }
            out.push('"');
        }
    }
    out
}
