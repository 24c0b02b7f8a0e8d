//! Names: `Digest`, `Reference`, `Repository` and `RegistryHost` parsing on any string.
//!
//! Properties: whatever parses prints back as the input (digests, references, repositories);
//! repositories are lowercase without empty components; registry hosts are canonical (parsing
//! the canonical form gives it back) and lowercase.

#![no_main]

use libfuzzer_sys::fuzz_target;
use stevedore::reference::{
    Digest, DigestAlgorithm, Reference, RegistryHost, Repository, looks_like_host, split_host_port,
};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(d) = s.parse::<Digest>() {
        assert_eq!(d.to_string(), s);
        let hex_len = match d.algorithm() {
            DigestAlgorithm::Sha256 => 64,
            DigestAlgorithm::Sha512 => 128,
        };
        assert_eq!(d.hex().len(), hex_len);
        assert!(
            d.hex()
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        );
        assert_eq!(d.to_string().parse::<Digest>().as_ref(), Ok(&d));
    }

    if let Ok(r) = Reference::parse(s) {
        assert_eq!(r.to_string(), s);
        match &r {
            Reference::Tag(t) => {
                assert!(!t.is_empty() && t.len() <= 128, "{t}");
                assert!(!t.contains(':') && !t.contains('/'), "{t}");
            }
            Reference::Digest(d) => assert_eq!(s.parse::<Digest>().as_ref(), Ok(d)),
        }
        assert_eq!(Reference::parse(&r.to_string()).as_ref(), Ok(&r));
    }

    if let Ok(repo) = Repository::parse(s) {
        assert_eq!(repo.as_str(), s);
        assert!(s.len() <= 255);
        assert!(!s.bytes().any(|b| b.is_ascii_uppercase()), "{s}");
        assert!(s.split('/').all(|c| !c.is_empty()), "{s}");
        assert!(
            s.bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'/')),
            "{s}"
        );
    }

    if let Ok(host) = RegistryHost::parse(s) {
        let canonical = host.as_str();
        assert!(!canonical.is_empty());
        assert!(
            !canonical.bytes().any(|b| b.is_ascii_uppercase()),
            "{canonical}"
        );
        assert_eq!(RegistryHost::parse(canonical).as_ref(), Ok(&host));
        assert!(canonical.starts_with(host.hostname()), "{canonical}");
        // `host[:port]` and nothing else (regression: `[::1]/../x` was a registry).
        let port = &canonical[host.hostname().len()..];
        assert!(
            port.is_empty()
                || (port.len() >= 2
                    && port.len() <= 6
                    && port[1..].bytes().all(|b| b.is_ascii_digit())),
            "{canonical}: port {port:?}"
        );
        assert!(
            canonical.bytes().all(|b| b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'.' | b'-' | b':' | b'[' | b']')),
            "{canonical}"
        );
    }

    let _ = looks_like_host(s);
    let (host, port) = split_host_port(s);
    assert!(s.starts_with(host));
    if let Some(port) = port {
        assert!(s.ends_with(port));
    }

    // Hashing never panics and always yields a digest that parses.
    let d = Digest::sha256_of(data);
    assert!(d.matches(data));
    assert_eq!(d.to_string().parse::<Digest>().as_ref(), Ok(&d));
});
