//! `WWW-Authenticate` challenges, parsed per RFC 9110 §11.6.1:
//!
//! ```text
//! WWW-Authenticate = #challenge
//! challenge        = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
//! auth-param       = token BWS "=" BWS ( token / quoted-string )
//! ```
//!
//! One header line may carry several challenges, and a response may carry several lines.

/// One authentication challenge, scheme lowercased, parameter names lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses all challenges of all given header values. Malformed trailing input is dropped,
/// keeping the challenges parsed before it.
pub fn parse_all<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    values.into_iter().flat_map(parse).collect()
}

/// Parses one header value.
pub fn parse(value: &str) -> Vec<Challenge> {
    let mut p = Parser {
        s: value.as_bytes(),
        i: 0,
    };
    let mut out = Vec::new();
    loop {
        p.skip_list_separators();
        let Some(scheme) = p.token() else { break };
        let mut challenge = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: Vec::new(),
        };
        p.skip_ws();
        if !p.params(&mut challenge) {
            out.push(challenge);
            break;
        }
        out.push(challenge);
    }
    out
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn skip_list_separators(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }

    fn token(&mut self) -> Option<String> {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn quoted(&mut self) -> Option<String> {
        if self.peek() != Some(b'"') {
            return None;
        }
        self.i += 1;
        let mut out = Vec::new();
        while let Some(b) = self.peek() {
            self.i += 1;
            match b {
                b'"' => return Some(String::from_utf8_lossy(&out).into_owned()),
                b'\\' => {
                    if let Some(next) = self.peek() {
                        out.push(next);
                        self.i += 1;
                    }
                }
                _ => out.push(b),
            }
        }
        None
    }

    /// Whether the next thing is `token BWS "="` (an auth-param rather than a new scheme).
    fn at_param(&self) -> bool {
        let mut j = self.i;
        while self.s.get(j).copied().is_some_and(is_tchar) {
            j += 1;
        }
        if j == self.i {
            return false;
        }
        while matches!(self.s.get(j), Some(b' ' | b'\t')) {
            j += 1;
        }
        if self.s.get(j) != Some(&b'=') {
            return false;
        }
        // `token68` ends in `=` padding followed by the end or a comma; a param has a value.
        let mut k = j;
        while self.s.get(k) == Some(&b'=') {
            k += 1;
        }
        while matches!(self.s.get(k), Some(b' ' | b'\t')) {
            k += 1;
        }
        !matches!(self.s.get(k), None | Some(b','))
    }

    /// Reads the challenge's parameters; false when the input was malformed.
    fn params(&mut self, c: &mut Challenge) -> bool {
        if !self.at_param() {
            // token68 (e.g. `Negotiate abc==`) or nothing: keep it as one unnamed value.
            let start = self.i;
            while self
                .peek()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
            {
                self.i += 1;
            }
            if self.i > start {
                let v = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                c.params.push((String::new(), v));
            }
            return true;
        }
        while self.at_param() {
            let Some(name) = self.token() else {
                return false;
            };
            self.skip_ws();
            self.i += 1; // '='
            self.skip_ws();
            let value = if self.peek() == Some(b'"') {
                match self.quoted() {
                    Some(v) => v,
                    None => return false,
                }
            } else {
                match self.token() {
                    Some(v) => v,
                    None => return false,
                }
            };
            c.params.push((name.to_ascii_lowercase(), value));
            self.skip_ws();
            // After a comma comes either another param of this challenge or a new challenge.
            while self.peek() == Some(b',') {
                self.i += 1;
                self.skip_ws();
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_bearer() {
        let c = parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(c[0].param("scope"), Some("repository:library/alpine:pull"));
    }

    #[test]
    fn several_challenges_quoted_commas_and_escapes() {
        let c = parse(
            r#"Basic realm="a, \"quoted\" realm", charset=UTF-8, Bearer realm="https://t/x",scope="repository:a:pull,push", Negotiate abc=="#,
        );
        assert_eq!(c.len(), 3, "{c:?}");
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some(r#"a, "quoted" realm"#));
        assert_eq!(c[0].param("charset"), Some("UTF-8"));
        assert_eq!(c[1].param("scope"), Some("repository:a:pull,push"));
        assert_eq!(c[2].scheme, "negotiate");
        assert_eq!(c[2].param(""), Some("abc=="));
    }

    #[test]
    fn case_and_whitespace() {
        let c = parse_all(["BEARER  Realm = \"r\" ,  Service=s", "basic"]);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("r"));
        assert_eq!(c[0].param("service"), Some("s"));
        assert_eq!(c[1].scheme, "basic");
    }

    #[test]
    fn malformed_input_keeps_what_parsed() {
        let c = parse(r#"Bearer realm="unterminated"#);
        assert_eq!(c.len(), 1);
        assert!(c[0].params.is_empty());
        assert!(parse("").is_empty());
        assert!(parse(" , ,").is_empty());
    }
}
