//! `--platform os/arch[/variant]` and how it selects manifests from an image index.

use std::fmt;
use std::str::FromStr;

/// A platform asked for on the command line, normalised (`x86_64` → `amd64`,
/// `aarch64` → `arm64`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformSpec {
    pub os: String,
    pub architecture: String,
    /// `None` matches every variant.
    pub variant: Option<String>,
}

impl FromStr for PlatformSpec {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let parts: Vec<&str> = raw.trim().split('/').collect();
        let valid = |s: &&str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(valid) {
            return Err(format!(
                "invalid platform {raw:?}: expected os/arch[/variant], e.g. linux/arm64"
            ));
        }
        Ok(Self {
            os: parts[0].to_ascii_lowercase(),
            architecture: normalise_arch(parts[1]),
            variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
        })
    }
}

impl fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl PlatformSpec {
    /// Whether an index entry's platform is this one. arm64's variant defaults to `v8`, so
    /// `linux/arm64/v8` matches an entry without a variant.
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        let architecture = normalise_arch(architecture);
        if !self.os.eq_ignore_ascii_case(os) || self.architecture != architecture {
            return false;
        }
        let Some(wanted) = &self.variant else {
            return true;
        };
        let default = (architecture == "arm64").then_some("v8");
        variant
            .or(default)
            .is_some_and(|v| v.eq_ignore_ascii_case(wanted))
    }
}

/// Architecture names as Go's GOARCH spells them, which image indexes use.
fn normalise_arch(arch: &str) -> String {
    match arch.to_ascii_lowercase().as_str() {
        "x86_64" | "x86-64" => "amd64".to_owned(),
        "aarch64" => "arm64".to_owned(),
        "i386" | "i686" => "386".to_owned(),
        other => other.to_owned(),
    }
}

/// `os/arch[/variant]` of an index entry, for messages.
pub fn describe(os: &str, architecture: &str, variant: Option<&str>) -> String {
    match variant {
        Some(v) => format!("{os}/{architecture}/{v}"),
        None => format!("{os}/{architecture}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PlatformSpec {
        s.parse().unwrap()
    }

    #[test]
    fn parsing() {
        assert_eq!(p("linux/amd64").to_string(), "linux/amd64");
        assert_eq!(p("linux/x86_64").to_string(), "linux/amd64");
        assert_eq!(p("Linux/arm/v7").to_string(), "linux/arm/v7");
        assert!("linux".parse::<PlatformSpec>().is_err());
        assert!("linux/arm/v7/x".parse::<PlatformSpec>().is_err());
        assert!("linux//v7".parse::<PlatformSpec>().is_err());
    }

    #[test]
    fn matching() {
        assert!(p("linux/arm64").matches("linux", "arm64", Some("v8")));
        assert!(p("linux/arm64").matches("linux", "arm64", None));
        assert!(p("linux/arm64/v8").matches("linux", "arm64", None));
        assert!(p("linux/aarch64").matches("linux", "arm64", None));
        assert!(!p("linux/arm/v7").matches("linux", "arm", Some("v6")));
        assert!(!p("linux/arm/v7").matches("linux", "arm", None));
        assert!(!p("linux/amd64").matches("windows", "amd64", None));
        assert!(!p("linux/amd64").matches("linux", "arm64", None));
    }
}
