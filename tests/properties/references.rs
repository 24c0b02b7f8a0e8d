//! Properties of digests, repositories, tags, references and registry hosts.

use proptest::prelude::*;

use stevedore::reference::{Digest, DigestAlgorithm, Reference, RegistryHost, Repository};

use super::{config, digest_str, host, name_like, repo_components, tag};

proptest! {
    #![proptest_config(config())]

    #[test]
    fn valid_digests_round_trip(s in digest_str()) {
        let d: Digest = s.parse().expect("a valid digest");
        prop_assert_eq!(d.to_string(), s.clone());
        let (algo, hex) = s.split_once(':').expect("algo:hex");
        let expected = if algo == "sha256" { DigestAlgorithm::Sha256 } else { DigestAlgorithm::Sha512 };
        prop_assert_eq!(d.algorithm(), expected);
        prop_assert_eq!(d.hex(), hex);
        prop_assert_eq!(Reference::parse(&s), Ok(Reference::Digest(d)));
    }

    #[test]
    fn parsed_digests_print_as_given(s in prop_oneof![any::<String>(), "sha(256|512|1):[0-9a-fA-Fg]{0,130}"]) {
        if let Ok(d) = s.parse::<Digest>() {
            prop_assert_eq!(d.to_string(), s.clone());
            prop_assert!(d.hex().len() == 64 || d.hex().len() == 128);
        }
    }

    #[test]
    fn uppercase_or_short_hex_is_refused(hex in "[0-9a-f]{0,63}[A-F][0-9a-f]{0,63}", short in "[0-9a-f]{0,63}") {
        let upper = format!("sha256:{hex}");
        prop_assert!(upper.parse::<Digest>().is_err(), "{}", upper);
        let short = format!("sha256:{short}");
        prop_assert!(short.parse::<Digest>().is_err(), "{}", short);
    }

    #[test]
    fn computed_digests_parse_and_match(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let d = Digest::sha256_of(&bytes);
        prop_assert!(d.matches(&bytes));
        prop_assert_eq!(d.to_string().parse::<Digest>(), Ok(d));
    }

    #[test]
    fn valid_repositories_parse(comps in repo_components()) {
        let name = comps.join("/");
        let repo = Repository::parse(&name).expect("a valid repository");
        prop_assert_eq!(repo.as_str(), name.as_str());
    }

    #[test]
    fn parsed_repositories_are_lowercase_without_empty_components(s in prop_oneof![name_like(), any::<String>()]) {
        if let Ok(repo) = Repository::parse(&s) {
            let r = repo.as_str();
            prop_assert_eq!(r, s.as_str());
            prop_assert!(r.len() <= 255);
            prop_assert!(!r.bytes().any(|b| b.is_ascii_uppercase()), "{}", r);
            for c in r.split('/') {
                prop_assert!(!c.is_empty(), "{}", r);
                let first = c.as_bytes()[0];
                let last = c.as_bytes()[c.len() - 1];
                prop_assert!(first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric(), "{}", r);
            }
        }
    }

    #[test]
    fn uppercase_repositories_are_refused(comps in repo_components(), at in any::<prop::sample::Index>()) {
        let name = comps.join("/");
        // Uppercase one of its letters, or put an uppercase letter in front of a name of
        // digits only.
        let letters: Vec<usize> = name
            .bytes()
            .enumerate()
            .filter(|(_, b)| b.is_ascii_lowercase())
            .map(|(i, _)| i)
            .collect();
        let mut upper = name.clone().into_bytes();
        if letters.is_empty() {
            upper.insert(0, b'A');
        } else {
            let i = letters[at.index(letters.len())];
            upper[i] = upper[i].to_ascii_uppercase();
        }
        let upper = String::from_utf8(upper).expect("ASCII");
        prop_assert!(Repository::parse(&upper).is_err(), "{}", upper);
    }

    #[test]
    fn tags_parse_and_print_as_given(t in tag()) {
        prop_assert_eq!(Reference::parse(&t), Ok(Reference::Tag(t.clone())));
        prop_assert_eq!(Reference::parse(&t).map(|r| r.to_string()), Ok(t));
    }

    #[test]
    fn parsed_references_print_as_given(s in prop_oneof![name_like(), any::<String>(), "[a-z0-9._-]{120,140}"]) {
        if let Ok(r) = Reference::parse(&s) {
            prop_assert_eq!(r.to_string(), s.clone());
            if let Reference::Tag(t) = &r {
                prop_assert!(t.len() <= 128 && !t.is_empty());
            }
        }
    }

    #[test]
    fn registry_hosts_are_canonical(h in host()) {
        let parsed = RegistryHost::parse(&h);
        let (name, port) = match h.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (h.as_str(), None),
        };
        if port.is_some_and(|p| p.len() > 5) {
            prop_assert!(parsed.is_err(), "{}", h);
            return Ok(());
        }
        let parsed = parsed.map_err(|e| TestCaseError::fail(format!("{h}: {e}")))?;
        let lower = h.to_ascii_lowercase();
        let canonical = match lower.as_str() {
            "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io",
            other => other,
        };
        prop_assert_eq!(parsed.as_str(), canonical);
        prop_assert_eq!(parsed.hostname(), name.to_ascii_lowercase());
        prop_assert_eq!(RegistryHost::parse(parsed.as_str()), Ok(parsed.clone()));
    }

    #[test]
    fn parsed_registry_hosts_are_idempotent(s in prop_oneof![name_like(), any::<String>()]) {
        if let Ok(h) = RegistryHost::parse(&s) {
            prop_assert!(!h.as_str().bytes().any(|b| b.is_ascii_uppercase()), "{}", h);
            prop_assert_eq!(RegistryHost::parse(h.as_str()), Ok(h.clone()));
            prop_assert!(h.as_str().starts_with(h.hostname()));
        }
    }
}
