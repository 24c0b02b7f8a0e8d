//! Configuration: `config::Config::from_toml` on any text.
//!
//! Properties: never panics; an error names the file and at least one problem, each with a
//! key and a message.
//!
//! Validation reads files the configuration names (ca-certs, token files, secret files). So
//! that a run cannot hang or exhaust memory reading a device or a pseudo file (`/dev/zero`,
//! `/dev/stdin`, `/proc/kmsg`, a FIFO under `/run`), inputs that could name one (or spell a
//! path with escapes) are skipped: an operator who names such a file in a configuration gets
//! what they asked for.

#![no_main]

use libfuzzer_sys::fuzz_target;
use stevedore::config::Config;

const FILE: &str = "fuzz.toml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if ["dev", "proc", "sys", "run", "\\u", "\\U", "\\x"]
        .iter()
        .any(|s| text.contains(s))
    {
        return;
    }
    if let Err(e) = Config::from_toml(text, FILE) {
        assert_eq!(e.file, FILE);
        assert!(!e.problems.is_empty());
        for p in &e.problems {
            assert!(!p.key.is_empty(), "{e:?}");
            assert!(!p.message.is_empty(), "{e:?}");
        }
        assert!(e.to_string().starts_with(FILE), "{e}");
    }
});
