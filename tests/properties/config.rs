//! Properties of the configuration file parser: any text, generated configs and policies.

use proptest::prelude::*;

use stevedore::config::Config;

use super::{config, host};

/// A TOML basic string holding `s` exactly.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn check_config_result(result: Result<Config, stevedore::config::ConfigError>) {
    if let Err(e) = result {
        assert_eq!(e.file, "p.toml");
        assert!(!e.problems.is_empty());
        for p in &e.problems {
            assert!(!p.key.is_empty() && !p.message.is_empty(), "{e:?}");
        }
    }
}

/// Keys of every section, with a value strategy that is sometimes right and sometimes not.
fn config_line() -> impl Strategy<Value = (usize, String)> {
    const SECTIONS: [&str; 7] = [
        "server",
        "routing",
        "upstream",
        "store",
        "limits",
        "credentials",
        "registries.\"r.example\"",
    ];
    const KEYS: [&[&str]; 7] = [
        &["listen", "metrics-listen"],
        &["default-registry", "allow-unknown-registries"],
        &["connect-timeout", "read-timeout", "max-manifest-bytes"],
        &[
            "max-size",
            "tag-ttl",
            "stale-max-age",
            "fill-timeout",
            "fill-retries",
            "max-concurrent-fills",
            "min-free-space",
        ],
        &[
            "header-read-timeout",
            "idle-timeout",
            "send-timeout",
            "max-connections",
            "max-connections-per-client",
            "max-header-bytes",
            "http2-max-concurrent-streams",
            "stream-buffer",
            "socket-send-buffer",
            "requests-per-second",
            "request-burst",
        ],
        &["helper-timeout"],
        &[
            "endpoints",
            "auth-realms",
            "proxy",
            "allow-private-network",
            "username",
            "password",
            "auth",
            "identitytoken",
            "registrytoken",
            "budget",
        ],
    ];
    let value = prop_oneof![
        any::<String>().prop_map(|s| toml_str(&s)),
        "[0-9]{1,22}(\\.[0-9]{0,3})?( ?[KMGTkmgt]i?[Bb]?)?".prop_map(|s| toml_str(&s)),
        "[0-9]{1,22}( ?(ns|us|ms|s|m|h|d|w|y|years|nsec))?".prop_map(|s| toml_str(&s)),
        prop_oneof![Just(0i64), Just(-1), Just(i64::MAX), any::<i64>()].prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        "(https?|ftp)://[a-z0-9.:\\[\\]@]{0,20}(/[a-z]{0,3})?"
            .prop_map(|s| format!("[{}]", toml_str(&s))),
        "[0-9a-f:.\\[\\]]{1,20}:[0-9]{1,6}".prop_map(|s| toml_str(&s)),
        Just("{ env = \"STEVEDORE_PROPERTIES_UNSET\" }".to_owned()),
        Just("{ manifest-gets = 0, per = \"0s\" }".to_owned()),
    ];
    (0usize..7, any::<prop::sample::Index>(), value).prop_map(move |(s, k, v)| {
        let key = KEYS[s][k.index(KEYS[s].len())];
        (s, format!("[{}]\n{key} = {v}\n", SECTIONS[s]))
    })
}

fn policy_doc() -> impl Strategy<Value = String> {
    (
        prop::collection::vec("[a-z*]{0,6}", 0..3),
        prop::collection::vec(prop_oneof!["[0-9a-f.:/]{0,24}", any::<String>()], 0..3),
        prop::collection::vec("[0-9a-fA-F]{60,66}", 0..2),
        prop::collection::vec(prop_oneof!["[a-z0-9._/*-]{0,12}", any::<String>()], 0..3),
        prop::collection::vec(prop_oneof![host(), Just("*".to_owned()), any::<String>()], 0..3),
        prop_oneof![Just("any"), Just("digests"), Just("tags")],
    )
        .prop_map(|(ids, cidrs, tokens, repos, regs, refs)| {
            let list = |v: &[String]| {
                let items: Vec<String> = v.iter().map(|s| toml_str(s)).collect();
                format!("[{}]", items.join(", "))
            };
            format!(
                "[policy.identities.a]\ncidrs = {}\ntokens-sha256 = {}\n[[policy.rules]]\nidentities = {}\nregistries = {}\nrepositories = {}\nreferences = \"{refs}\"\n",
                list(&cidrs),
                list(&tokens),
                list(&ids),
                list(&regs),
                list(&repos),
            )
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_text_is_a_config_or_an_error(text in prop_oneof![
        any::<String>(),
        "(\\[[a-z.\"]{0,12}\\]\n)?[a-z-]{0,12} ?= ?[\"'\\[{]?[^\n]{0,16}\n?[\u{80}-\u{10ffff}]{0,3}",
    ]) {
        check_config_result(Config::from_toml(&text, "p.toml"));
    }

    #[test]
    fn generated_configs_never_panic(lines in prop::collection::vec(config_line(), 0..6), policy in prop::option::of(policy_doc())) {
        // One table per section: TOML refuses a table defined twice, so keep the first.
        let mut seen = std::collections::BTreeSet::new();
        let mut text = String::new();
        for (section, line) in &lines {
            if seen.insert(*section) {
                text.push_str(line);
            }
        }
        if let Some(p) = &policy {
            text.push_str(p);
        }
        check_config_result(Config::from_toml(&text, "p.toml"));
    }

    #[test]
    fn broken_toml_after_unicode_never_panics(prefix in "[^\n]{0,10}", junk in "[\u{80}-\u{10ffff}=\\[\"]{1,6}", suffix in "[^\n]{0,10}") {
        // Error positions are byte offsets turned into line and column.
        let text = format!("[server]\n{prefix}{junk}{suffix}\nlisten = {junk}\n");
        check_config_result(Config::from_toml(&text, "p.toml"));
    }
}
