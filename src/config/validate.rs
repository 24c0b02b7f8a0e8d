//! Cross-field rules of the configuration. Every problem is collected, not just the first.

use std::collections::BTreeMap;

use url::Url;

use super::{Config, Problem, RegistryConfig};
use crate::policy::is_restricted_ip;
use crate::reference::{RegistryHost, RegistryPattern};

pub(super) fn check(config: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut push = |key: String, message: String| out.push(Problem { key, message });

    let mut canonical: BTreeMap<RegistryPattern, &str> = BTreeMap::new();
    for (name, reg) in &config.registries {
        let key = format!("registries.{name:?}");
        match RegistryPattern::parse(name) {
            Ok(pattern) => {
                if !pattern.is_exact() && !reg.endpoints.is_empty() {
                    push(
                        format!("{key}.endpoints"),
                        "a section for several registries cannot have endpoints: each \
                         registry it matches is reached at https://<its host>"
                            .to_owned(),
                    );
                }
                if let Some(first) = canonical.insert(pattern.clone(), name) {
                    push(
                        key.clone(),
                        format!("names the same registries as registries.{first:?} ({pattern})"),
                    );
                }
            }
            Err(e) => push(
                key.clone(),
                format!(
                    "{e} (or a fully qualified \"host.\", \".domain.\" for its subdomains, \
                     \".\" for every registry)"
                ),
            ),
        }
        check_registry(&key, reg, &mut push);
    }

    // A default registry without a section is allowed: requests that name no registry are
    // then refused with a message naming the section to add.
    if let Err(e) = RegistryHost::parse(&config.routing.default_registry) {
        push("routing.default-registry".to_owned(), e.to_string());
    }

    let up = &config.upstream;
    for (key, zero) in [
        ("upstream.connect-timeout", up.connect_timeout.is_zero()),
        ("upstream.read-timeout", up.read_timeout.is_zero()),
        (
            "credentials.helper-timeout",
            config.credentials.helper_timeout.is_zero(),
        ),
    ] {
        if zero {
            push(key.to_owned(), "must be longer than 0s".to_owned());
        }
    }
    if up.max_manifest_bytes < 1024 {
        push(
            "upstream.max-manifest-bytes".to_owned(),
            "must be at least 1024".to_owned(),
        );
    }

    let tls = &config.server.tls;
    if tls.cert.is_some() != tls.key.is_some() {
        push(
            "server.tls".to_owned(),
            "give both cert and key (or neither, to have one issued from stevedore's CA)"
                .to_owned(),
        );
    }
    if config.server.tls_listen.is_some() && tls.cert.is_none() && tls.names.is_empty() {
        push(
            "server.tls.names".to_owned(),
            "the TLS listener needs cert and key, or names to issue a certificate for".to_owned(),
        );
    }
    for (key, path) in [
        ("server.tls.cert", &tls.cert),
        ("server.tls.key", &tls.key),
        ("server.tls.client-ca", &tls.client_ca),
        ("ca.cert", &config.ca.cert),
        ("ca.key", &config.ca.key),
    ] {
        if let Some(p) = path
            && let Err(e) = std::fs::metadata(p)
        {
            push(key.to_owned(), format!("cannot read {}: {e}", p.display()));
        }
    }
    if config.ca.cert.is_some() != config.ca.key.is_some() {
        push(
            "ca".to_owned(),
            "give both cert and key (or neither, to have a CA generated in ca.dir)".to_owned(),
        );
    }
    for (i, t) in config.proxy.tunnel.iter().enumerate() {
        let ok = t
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !ok {
            push(
                format!("proxy.tunnel[{i}]"),
                format!("{t:?} is not host:port"),
            );
        }
    }

    let limits = &config.limits;
    for (key, zero) in [
        (
            "limits.header-read-timeout",
            limits.header_read_timeout.is_zero(),
        ),
        ("limits.idle-timeout", limits.idle_timeout.is_zero()),
        ("limits.send-timeout", limits.send_timeout.is_zero()),
        ("limits.max-connections", limits.max_connections == 0),
        (
            "limits.max-connections-per-client",
            limits.max_connections_per_client == 0,
        ),
        (
            "limits.http2-max-concurrent-streams",
            limits.http2_max_concurrent_streams == 0,
        ),
    ] {
        if zero {
            push(key.to_owned(), "must be more than 0".to_owned());
        }
    }
    if limits.max_header_bytes.0 < 8192 {
        push(
            "limits.max-header-bytes".to_owned(),
            "must be at least 8KiB (8192)".to_owned(),
        );
    }
    if limits.max_header_bytes.0 > 16 * 1024 * 1024 {
        push(
            "limits.max-header-bytes".to_owned(),
            "must be at most 16MiB".to_owned(),
        );
    }
    if limits.stream_buffer.0 < 1024 * 1024 {
        push(
            "limits.stream-buffer".to_owned(),
            "must be at least 1MiB".to_owned(),
        );
    }
    if limits.socket_send_buffer.0 != 0 && limits.socket_send_buffer.0 < 16 * 1024 {
        push(
            "limits.socket-send-buffer".to_owned(),
            "must be 0 (the kernel's autotuning) or at least 16KiB".to_owned(),
        );
    }
    if limits.socket_send_buffer.0 > 64 * 1024 * 1024 {
        push(
            "limits.socket-send-buffer".to_owned(),
            "must be at most 64MiB".to_owned(),
        );
    }
    if limits.requests_per_second > 0 && limits.request_burst == 0 {
        push(
            "limits.request-burst".to_owned(),
            "must be at least 1 when limits.requests-per-second is set".to_owned(),
        );
    }

    let store = &config.store;
    if store.max_size.0 < 1024 * 1024 {
        push(
            "store.max-size".to_owned(),
            "must be at least 1MiB".to_owned(),
        );
    }
    if store.max_concurrent_fills == 0 {
        push(
            "store.max-concurrent-fills".to_owned(),
            "must be at least 1".to_owned(),
        );
    }
    if store.fill_timeout.is_zero() {
        push(
            "store.fill-timeout".to_owned(),
            "must be longer than 0s".to_owned(),
        );
    }
    if let Some(path) = &store.path
        && path.exists()
        && !path.is_dir()
    {
        push(
            "store.path".to_owned(),
            format!("{} exists and is not a directory", path.display()),
        );
    }

    for (list, paths) in [
        (
            "credentials.docker-config",
            &config.credentials.docker_config,
        ),
        (
            "credentials.kubernetes-secrets",
            &config.credentials.kubernetes_secrets,
        ),
    ] {
        for (i, path) in paths.iter().enumerate() {
            if let Err(e) = std::fs::metadata(path) {
                push(format!("{list}[{i}]"), format!("{}: {e}", path.display()));
            }
        }
    }
    out
}

fn check_registry(key: &str, reg: &RegistryConfig, push: &mut impl FnMut(String, String)) {
    for (i, raw) in reg.endpoints.iter().enumerate() {
        let k = format!("{key}.endpoints[{i}]");
        match Url::parse(raw) {
            Err(e) => push(k, format!("{raw:?} is not a URL: {e}")),
            Ok(url) => {
                if let Err(msg) = check_endpoint(&url, reg.allow_private_network) {
                    push(k, msg);
                }
            }
        }
    }
    for (i, path) in reg.ca_certs.iter().enumerate() {
        let k = format!("{key}.ca-certs[{i}]");
        match super::read_file(path) {
            Err(e) => push(k, format!("cannot read {}: {e}", path.display())),
            Ok(pem) => match reqwest::Certificate::from_pem_bundle(&pem) {
                Ok(certs) if !certs.is_empty() => {}
                Ok(_) => push(k, format!("{} holds no PEM certificate", path.display())),
                Err(_) => push(
                    k,
                    format!(
                        "{} is not a PEM bundle: a block in it is not a readable certificate",
                        path.display()
                    ),
                ),
            },
        }
    }
    for (i, realm) in reg.auth_realms.iter().enumerate() {
        if realm_host(realm).is_none() {
            push(
                format!("{key}.auth-realms[{i}]"),
                format!("{realm:?} is neither a URL nor a host name"),
            );
        }
    }
    if let Some(proxy) = &reg.proxy
        && proxy != "env"
        && proxy != "none"
    {
        match Url::parse(proxy) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
            _ => push(
                format!("{key}.proxy"),
                format!("{proxy:?}: expected \"env\", \"none\" or an http(s):// proxy URL"),
            ),
        }
    }
    if let Some(b) = &reg.budget {
        if b.manifest_gets.is_none() && b.requests.is_none() {
            push(
                format!("{key}.budget"),
                "needs manifest-gets or requests".to_owned(),
            );
        }
        for (field, n) in [("manifest-gets", b.manifest_gets), ("requests", b.requests)] {
            if n == Some(0) {
                push(
                    format!("{key}.budget.{field}"),
                    "must be at least 1 (leave it out for no limit)".to_owned(),
                );
            }
        }
        if b.per < std::time::Duration::from_secs(1) {
            push(
                format!("{key}.budget.per"),
                "must be at least 1s".to_owned(),
            );
        }
    }
    check_credentials(key, reg, push);
}

fn check_endpoint(url: &Url, allow_private: bool) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{url}: scheme must be http or https"));
    }
    let Some(host) = url.host() else {
        return Err(format!("{url}: no host"));
    };
    if crate::upstream::endpoint_names_registry(url).is_none() {
        return Err(format!(
            "{url}: give scheme://host[:port] (stevedore adds /v2/ itself), or another \
             stevedore with the registry: scheme://host[:port]/v2/<registry> or \
             scheme://host[:port]/?ns=<registry>"
        ));
    }
    let ip = match host {
        url::Host::Ipv4(v4) => Some(std::net::IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(std::net::IpAddr::V6(v6)),
        url::Host::Domain(d) if d.eq_ignore_ascii_case("localhost") => {
            Some(std::net::IpAddr::from([127, 0, 0, 1]))
        }
        url::Host::Domain(_) => None,
    };
    if let Some(ip) = ip
        && !allow_private
        && is_restricted_ip(ip)
    {
        return Err(format!(
            "{url} is a loopback, private or link-local address: set allow-private-network = \
             true in this registry's section if that is intended"
        ));
    }
    Ok(())
}

/// The host of a realm given as a URL or a bare host name.
pub fn realm_host(realm: &str) -> Option<String> {
    if let Ok(url) = Url::parse(realm)
        && let Some(h) = url.host_str()
    {
        return Some(h.to_ascii_lowercase());
    }
    RegistryHost::parse(realm)
        .ok()
        .map(|h| h.hostname().to_owned())
}

fn check_credentials(key: &str, reg: &RegistryConfig, push: &mut impl FnMut(String, String)) {
    let given = |v: &Option<super::SecretSource>| v.is_some();
    let kinds = [
        given(&reg.password) || given(&reg.username) && !given(&reg.identitytoken),
        given(&reg.auth),
        given(&reg.identitytoken),
        given(&reg.registrytoken),
    ];
    if kinds.iter().filter(|k| **k).count() > 1 {
        push(
            key.to_owned(),
            "give one kind of credential: username + password, auth, identitytoken \
             (optionally with username), or registrytoken"
                .to_owned(),
        );
    }
    if given(&reg.password) && !given(&reg.username) {
        push(format!("{key}.password"), "needs a username".to_owned());
    }
    if given(&reg.username) && !given(&reg.password) && !given(&reg.identitytoken) {
        push(
            format!("{key}.username"),
            "needs a password (or an identitytoken)".to_owned(),
        );
    }
    for (field, source) in [
        ("username", &reg.username),
        ("password", &reg.password),
        ("auth", &reg.auth),
        ("identitytoken", &reg.identitytoken),
        ("registrytoken", &reg.registrytoken),
    ] {
        let Some(source) = source else { continue };
        match source.read() {
            Err(e) => push(format!("{key}.{field}"), e.to_string()),
            Ok(value) if field == "auth" => {
                if crate::credentials::decode_auth(value.expose()).is_none() {
                    push(
                        format!("{key}.auth"),
                        format!(
                            "value from {} is not base64 of user:password",
                            source.origin()
                        ),
                    );
                }
            }
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn problems(toml: &str) -> String {
        match Config::from_toml(toml, "t.toml") {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn reports_every_problem_with_its_key() {
        let text = problems(
            r#"
            [routing]
            default-registry = "nowhere example"
            [registries."Bad Host"]
            [registries."r.example"]
            endpoints = ["ftp://r.example", "http://127.0.0.1:5000", "https://r.example/v2/"]
            ca-certs = ["/nonexistent.pem"]
            password = "x"
            registrytoken = { env = "STEVEDORE_TEST_UNSET_VARIABLE" }
            proxy = "socks5://x"
            "#,
        );
        for needle in [
            "t.toml: routing.default-registry: invalid registry host",
            "t.toml: registries.\"Bad Host\": invalid registry host",
            "registries.\"r.example\".endpoints[0]: ftp://r.example/: scheme must be http or https",
            "registries.\"r.example\".endpoints[1]: http://127.0.0.1:5000/ is a loopback",
            "registries.\"r.example\".endpoints[2]: https://r.example/v2/: give scheme://host[:port] (stevedore adds /v2/ itself)",
            "registries.\"r.example\".ca-certs[0]: cannot read /nonexistent.pem",
            "registries.\"r.example\".password: needs a username",
            "registries.\"r.example\".registrytoken: environment variable STEVEDORE_TEST_UNSET_VARIABLE is not set",
            "registries.\"r.example\".proxy:",
            "registries.\"r.example\": give one kind of credential",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn socket_send_buffer_bounds() {
        assert_eq!(problems("[limits]\nsocket-send-buffer = 0\n"), "");
        assert_eq!(problems("[limits]\nsocket-send-buffer = \"1MiB\"\n"), "");
        let text = problems("[limits]\nsocket-send-buffer = \"4KiB\"\n");
        assert!(
            text.contains("limits.socket-send-buffer: must be 0"),
            "{text}"
        );
        let text = problems("[limits]\nsocket-send-buffer = \"1GiB\"\n");
        assert!(text.contains("at most 64MiB"), "{text}");
    }

    #[test]
    fn docker_hub_aliases_collide() {
        let text = problems("[registries.\"docker.io\"]\n[registries.\"index.docker.io\"]\n");
        assert!(text.contains("names the same registries"), "{text}");
        // A fully qualified name is the same registry as its plain key.
        let text = problems("[registries.\"ghcr.io\"]\n[registries.\"ghcr.io.\"]\n");
        assert!(text.contains("names the same registries"), "{text}");
    }

    #[test]
    fn files_that_never_end_are_refused() {
        let text = problems(
            "[registries.\"r.example\"]\nca-certs = [\"/dev/zero\"]\npassword = { file = \"/dev/zero\" }\nusername = \"u\"\n",
        );
        assert!(
            text.contains("ca-certs[0]: cannot read /dev/zero: larger than"),
            "{text}"
        );
        assert!(
            text.contains("password: cannot read secret file /dev/zero"),
            "{text}"
        );
    }

    #[test]
    fn pattern_sections() {
        let text = problems(
            "[registries.\".corp.\"]\nendpoints = [\"https://x.corp\"]\n[registries.\"..\"]\n",
        );
        assert!(
            text.contains("registries.\".corp.\".endpoints: a section for several"),
            "{text}"
        );
        assert!(
            text.contains("registries.\"..\": invalid registry host"),
            "{text}"
        );
        assert!(
            problems(
                "[registries.\".\"]\n[registries.\".corp.\"]\n[registries.\"registry.corp.\"]\n"
            )
            .is_empty()
        );
    }

    #[test]
    fn bad_auth_is_reported_without_its_value() {
        let text = problems("[registries.\"docker.io\"]\nauth = \"bm90LWJhc2U2NC1wYWly\"\n");
        assert!(text.contains("is not base64 of user:password"), "{text}");
        assert!(!text.contains("bm90"), "{text}");
    }
}
