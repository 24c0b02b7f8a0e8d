//! Docker credential helpers (`credHelpers` / `credsStore`), following the
//! docker-credential-helpers protocol (github.com/docker/docker-credential-helpers,
//! `client.Get`):
//!
//! - run `docker-credential-<name> get`, write the server URL to its stdin (no newline);
//! - on success it prints `{"ServerURL": …, "Username": …, "Secret": …}` on stdout, and a
//!   `Username` of `<token>` means `Secret` is an identity token (docker/cli `nativeStore`);
//! - when it has nothing it exits non-zero with `credentials not found in native keychain` on
//!   stdout, which is an answer (no credential), not a failure.
//!
//! Results are cached briefly so a pull of many layers runs a helper once, and concurrent
//! lookups of the same server share one run.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use moka::future::Cache;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, Command};

use super::Credential;
use super::docker_config::describe_json_error;
use crate::reference::RegistryHost;
use crate::secret::SecretString;

/// How long a helper's answer (a credential or "not found") is reused.
const CACHE_TTL: Duration = Duration::from_secs(60);
const CACHE_CAPACITY: u64 = 1024;
/// Larger answers are refused: a helper prints a few hundred bytes.
const MAX_OUTPUT_BYTES: u64 = 1024 * 1024;
/// The protocol's "no credentials" message (`credentials.errCredentialsNotFoundMessage` is
/// `credentials not found in native keychain`; some helpers shorten it).
const NOT_FOUND_MESSAGE: &str = "credentials not found";
/// `Username` value meaning the secret is an identity token.
const TOKEN_USERNAME: &str = "<token>";
/// Docker's server address for Docker Hub, which helpers store its credentials under.
const DOCKER_HUB_SERVER_URL: &str = "https://index.docker.io/v1/";
/// Attempts to start a helper whose executable is momentarily busy (being replaced).
const SPAWN_ATTEMPTS: u32 = 3;

/// The server URL docker passes to a helper for `registry`.
pub(super) fn server_url(registry: &RegistryHost) -> String {
    if registry.is_docker_hub() {
        DOCKER_HUB_SERVER_URL.to_owned()
    } else {
        registry.as_str().to_owned()
    }
}

/// Runs helpers and caches their answers.
pub(super) struct HelperRunner {
    timeout: Duration,
    /// Where `docker-credential-<name>` is looked up; `None` means `PATH`.
    dir: Option<PathBuf>,
    cache: Cache<(String, String), Option<Credential>>,
}

/// Why a helper gave no answer. Never holds the helper's output.
#[derive(Debug, Clone)]
pub(super) struct HelperFailure {
    pub(super) program: String,
    pub(super) server_url: String,
    pub(super) problem: String,
}

impl HelperRunner {
    pub(super) fn new(timeout: Duration, dir: Option<PathBuf>) -> Self {
        Self {
            timeout,
            dir,
            cache: Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(CACHE_TTL)
                .build(),
        }
    }

    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The credential helper `name` holds for `server_url`, from the cache when fresh.
    /// Failures are not cached, so a repaired helper is used on the next lookup.
    pub(super) async fn get(
        &self,
        name: &str,
        server_url: &str,
    ) -> Result<Option<Credential>, HelperFailure> {
        let key = (name.to_owned(), server_url.to_owned());
        self.cache
            .try_get_with(key, self.run(name, server_url))
            .await
            .map_err(|e| HelperFailure::clone(&e))
    }

    async fn run(&self, name: &str, server_url: &str) -> Result<Option<Credential>, HelperFailure> {
        let program = format!("docker-credential-{name}");
        let fail = |problem: String| HelperFailure {
            program: program.clone(),
            server_url: server_url.to_owned(),
            problem,
        };
        let path = match &self.dir {
            Some(dir) => dir.join(&program),
            None => PathBuf::from(&program),
        };
        let exchange = async {
            let child = spawn(&path).await?;
            exchange(child, server_url).await
        };
        let (status, stdout) = match tokio::time::timeout(self.timeout, exchange).await {
            // Dropping the exchange drops the child, which `kill_on_drop` kills.
            Err(_) => {
                return Err(fail(format!(
                    "no answer within {:?} (credentials.helper-timeout); killed",
                    self.timeout
                )));
            }
            Ok(result) => result.map_err(fail)?,
        };
        interpret(status, &stdout).map_err(fail)
    }
}

impl std::fmt::Debug for HelperRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HelperRunner")
            .field("timeout", &self.timeout)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

async fn spawn(path: &std::path::Path) -> Result<Child, String> {
    let mut attempt = 1;
    loop {
        let spawned = Command::new(path)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Its diagnostics could quote anything; they are not kept.
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        match spawned {
            Ok(child) => return Ok(child),
            Err(e)
                if e.kind() == std::io::ErrorKind::ExecutableFileBusy
                    && attempt < SPAWN_ATTEMPTS =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(format!("cannot run it: {e}")),
        }
    }
}

/// Writes the server URL, reads stdout to its end (bounded), and waits for the exit.
async fn exchange(mut child: Child, server_url: &str) -> Result<(ExitStatus, Vec<u8>), String> {
    if let Some(mut stdin) = child.stdin.take() {
        match stdin.write_all(server_url.as_bytes()).await {
            // A helper may answer without reading its input.
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(format!("cannot write to it: {e}"));
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        stdout
            .take(MAX_OUTPUT_BYTES + 1)
            .read_to_end(&mut out)
            .await
            .map_err(|e| format!("cannot read its output: {e}"))?;
    }
    if out.len() as u64 > MAX_OUTPUT_BYTES {
        return Err(format!("its output exceeds {MAX_OUTPUT_BYTES} bytes"));
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("cannot wait for it: {e}"))?;
    Ok((status, out))
}

/// Turns the helper's exit status and stdout into an answer.
fn interpret(status: ExitStatus, stdout: &[u8]) -> Result<Option<Credential>, String> {
    if !status.success() {
        let text = String::from_utf8_lossy(stdout);
        if text.to_ascii_lowercase().contains(NOT_FOUND_MESSAGE) {
            return Ok(None);
        }
        return Err(format!(
            "failed ({status}); its output is not shown as it may hold secrets"
        ));
    }
    let value: Value = serde_json::from_slice(stdout)
        .map_err(|e| format!("answer is not JSON: {}", describe_json_error(&e)))?;
    let Value::Object(fields) = value else {
        return Err("answer is not a JSON object".to_owned());
    };
    let field = |name: &str| match fields.get(name) {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(s)) => Ok(s.as_str()),
        Some(_) => Err(format!("`{name}` in its answer is not a string")),
    };
    let (username, secret) = (field("Username")?, field("Secret")?);
    if secret.is_empty() {
        return Ok(None);
    }
    let secret = SecretString::new(secret);
    match username {
        TOKEN_USERNAME => Ok(Some(Credential::IdentityToken {
            username: None,
            token: secret,
        })),
        "" => Err("answer has a secret but no username".to_owned()),
        user => Ok(Some(Credential::Basic {
            username: user.to_owned(),
            password: secret,
        })),
    }
}

/// Writes an executable `docker-credential-<name>` shell script into `dir`.
#[cfg(test)]
pub(super) fn write_test_helper(dir: &std::path::Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(format!("docker-credential-{name}"));
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;
    use std::time::Instant;

    use super::*;

    fn exit(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn answers_are_interpreted_per_protocol() {
        let basic = interpret(exit(0), br#"{"ServerURL":"r","Username":"u","Secret":"s"}"#);
        assert_eq!(
            basic.unwrap(),
            Some(Credential::Basic {
                username: "u".into(),
                password: "s".into()
            })
        );
        let token = interpret(exit(0), br#"{"Username":"<token>","Secret":"t"}"#);
        assert_eq!(
            token.unwrap(),
            Some(Credential::IdentityToken {
                username: None,
                token: "t".into()
            })
        );
        assert_eq!(
            interpret(exit(0), br#"{"Username":"","Secret":""}"#).unwrap(),
            None
        );
        let not_found = b"credentials not found in native keychain\n";
        assert_eq!(interpret(exit(1), not_found).unwrap(), None);
        assert!(interpret(exit(0), br#"{"Username":"","Secret":"s3cret"}"#).is_err());
    }

    #[test]
    fn failures_never_quote_the_output() {
        for (status, out) in [
            (exit(1), &b"oops s3cret"[..]),
            (exit(0), &b"{\"Username\": s3cret}"[..]),
            (exit(0), &b"\"s3cret\""[..]),
            (exit(0), &b"{\"Username\": \"u\", \"Secret\": 12345}"[..]),
        ] {
            let e = interpret(status, out).unwrap_err();
            assert!(!e.contains("s3cret") && !e.contains("12345"), "{e}");
        }
    }

    #[test]
    fn docker_hub_uses_the_legacy_server_url() {
        let hub = RegistryHost::parse("registry-1.docker.io").unwrap();
        assert_eq!(server_url(&hub), "https://index.docker.io/v1/");
        let other = RegistryHost::parse("GHCR.io").unwrap();
        assert_eq!(server_url(&other), "ghcr.io");
    }

    #[tokio::test]
    async fn helper_reads_the_server_url_from_stdin() {
        let dir = tempfile::tempdir().unwrap();
        write_test_helper(
            dir.path(),
            "echo",
            r#"[ "$1" = get ] || exit 2
host=$(cat)
printf '{"ServerURL":"%s","Username":"user-for-%s","Secret":"s3cret"}' "$host" "$host""#,
        );
        let runner = HelperRunner::new(Duration::from_secs(10), Some(dir.path().into()));
        let got = runner
            .get("echo", "https://index.docker.io/v1/")
            .await
            .unwrap();
        assert_eq!(
            got,
            Some(Credential::Basic {
                username: "user-for-https://index.docker.io/v1/".into(),
                password: "s3cret".into()
            })
        );
    }

    #[tokio::test]
    async fn concurrent_lookups_share_one_run_and_answers_are_cached() {
        let dir = tempfile::tempdir().unwrap();
        let counter = dir.path().join("calls");
        write_test_helper(
            dir.path(),
            "counted",
            &format!(
                r#"echo call >> '{}'
sleep 0.3
echo '{{"Username":"u","Secret":"s"}}'"#,
                counter.display()
            ),
        );
        let runner = HelperRunner::new(Duration::from_secs(10), Some(dir.path().into()));
        let lookups = (0..20).map(|_| runner.get("counted", "r.example"));
        for got in futures_util::future::join_all(lookups).await {
            assert!(got.unwrap().is_some());
        }
        assert!(runner.get("counted", "r.example").await.unwrap().is_some());
        let calls = std::fs::read_to_string(&counter).unwrap();
        assert_eq!(calls.lines().count(), 1, "{calls}");

        // Another server is another question.
        assert!(runner.get("counted", "s.example").await.unwrap().is_some());
        let calls = std::fs::read_to_string(&counter).unwrap();
        assert_eq!(calls.lines().count(), 2, "{calls}");
    }

    #[tokio::test]
    async fn not_found_is_no_credential() {
        let dir = tempfile::tempdir().unwrap();
        write_test_helper(
            dir.path(),
            "empty",
            "cat >/dev/null\necho 'credentials not found in native keychain'\nexit 1",
        );
        let runner = HelperRunner::new(Duration::from_secs(10), Some(dir.path().into()));
        assert_eq!(runner.get("empty", "r.example").await.unwrap(), None);
    }

    #[tokio::test]
    async fn slow_helpers_are_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        write_test_helper(dir.path(), "slow", "exec sleep 30");
        let runner = HelperRunner::new(Duration::from_millis(300), Some(dir.path().into()));
        let started = Instant::now();
        let e = runner.get("slow", "r.example").await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(e.program, "docker-credential-slow");
        assert!(
            e.problem.contains("credentials.helper-timeout"),
            "{}",
            e.problem
        );
    }

    #[tokio::test]
    async fn failures_name_the_helper_and_are_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        write_test_helper(dir.path(), "broken", "echo 'leaked s3cret'\nexit 3");
        let runner = HelperRunner::new(Duration::from_secs(10), Some(dir.path().into()));
        let e = runner.get("broken", "r.example").await.unwrap_err();
        assert_eq!(e.program, "docker-credential-broken");
        assert!(e.problem.contains("exit status: 3"), "{}", e.problem);
        assert!(!e.problem.contains("s3cret"));

        write_test_helper(
            dir.path(),
            "broken",
            r#"echo '{"Username":"u","Secret":"s"}'"#,
        );
        assert!(runner.get("broken", "r.example").await.unwrap().is_some());

        let e = runner.get("missing", "r.example").await.unwrap_err();
        assert!(e.problem.starts_with("cannot run it"), "{}", e.problem);
    }
}
