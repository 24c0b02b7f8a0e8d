//! The `prefetch` and `cache` commands, black-box: the built binary against a real
//! distribution registry, checked through its output, its exit status and the store's files.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::images::{self, Format, ImageSpec, PushedImage};
use common::registry::Registry;
use common::stevedore::registry_section;
use common::util::SCRUBBED_ENV;
use tempfile::TempDir;

/// Runs the stevedore binary with a clean environment (plus `env`).
fn stevedore_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stevedore"));
    cmd.args(args).stdin(Stdio::null());
    for var in SCRUBBED_ENV.iter().chain(&["STEVEDORE_CONFIG", "RUST_LOG"]) {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run the stevedore binary")
}

fn stevedore(args: &[&str]) -> Output {
    stevedore_with_env(args, &[])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the exit status, showing everything the command said when it is wrong.
#[track_caller]
fn expect_code(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: unexpected exit status\n--- stdout ---\n{}\n--- stderr ---\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// A tempdir with `stevedore.toml` pointing its store at `<tmp>/store`.
struct Setup {
    dir: TempDir,
    config: PathBuf,
}

impl Setup {
    fn new(registry: &Registry, credentials: &str, store_extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("stevedore.toml");
        let store = dir.path().join("store");
        let toml = format!(
            "[store]\npath = \"{}\"\n{store_extra}\n\n{}",
            store.display(),
            registry_section(&registry.host(), &registry.url(), credentials)
        );
        std::fs::write(&config, toml).expect("write config");
        Self { dir, config }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn config(&self) -> &str {
        self.config.to_str().expect("UTF-8 path")
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        all.extend(["--config", self.config()]);
        stevedore(&all)
    }

    fn stats(&self) -> serde_json::Value {
        let out = self.run(&["cache", "stats", "--json"]);
        expect_code(&out, 0, "cache stats --json");
        serde_json::from_slice(&out.stdout).expect("cache stats prints JSON")
    }
}

/// Digests of the committed files under `store/blobs/sha256/xx/<hex>`.
fn stored_files(store: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(prefixes) = std::fs::read_dir(store.join("blobs/sha256")) else {
        return out;
    };
    for prefix in prefixes.flatten() {
        for file in std::fs::read_dir(prefix.path())
            .expect("read prefix dir")
            .flatten()
        {
            let name = file.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".type") {
                out.insert(format!("sha256:{name}"));
            }
        }
    }
    out
}

fn blob_path(store: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    store.join("blobs/sha256").join(&hex[..2]).join(hex)
}

/// Digests `cache ls` lists.
fn listed(out: &Output) -> BTreeSet<String> {
    text(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("sha256:"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Every digest of `pushed` for the platforms whose architecture is in `archs` (all when
/// empty), with its size, including the index.
fn expected(pushed: &PushedImage, archs: &[&str]) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    if let (Some(d), Some(b)) = (&pushed.index_digest, &pushed.index_bytes) {
        out.push((d.clone(), b.len() as u64));
    }
    for img in &pushed.platforms {
        if !archs.is_empty() && !archs.contains(&img.platform.architecture.as_str()) {
            continue;
        }
        out.push((img.manifest.digest.clone(), img.manifest.size()));
        out.push((img.config.digest.clone(), img.config.size()));
        for layer in &img.layers {
            out.push((layer.blob.digest.clone(), layer.blob.size()));
        }
    }
    out
}

fn digests(items: &[(String, u64)]) -> BTreeSet<String> {
    items.iter().map(|(d, _)| d.clone()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn prefetch_all_platforms_then_verify_repair_and_gc() {
    let registry = Registry::htpasswd("puller", "pull-pw");
    let app = images::push_multiplatform(&registry, "team/app", "v1", &ImageSpec::seed(11)).await;
    let tool = images::push_image(
        &registry,
        "team/tool",
        "v2",
        &ImageSpec::seed(12).small_layers(1),
    )
    .await;
    let setup = Setup::new(
        &registry,
        "username = \"puller\"\npassword = \"pull-pw\"",
        "",
    );
    let host = registry.host();
    let (app_ref, tool_ref) = (
        format!("{host}/team/app:v1"),
        format!("{host}/team/tool:v2"),
    );

    let out = setup.run(&["prefetch", &app_ref, &tool_ref]);
    expect_code(&out, 0, "prefetch");
    let summary = text(&out.stdout);
    assert!(summary.contains("prefetched 2 of 2 images"), "{summary}");
    let stderr = text(&out.stderr);
    let some_layer = &app.platforms[1].layers[0].blob.digest;
    assert!(
        stderr.contains(&format!("prefetch {app_ref} {some_layer}")) && stderr.contains(" done"),
        "plain progress lines name image and digest:\n{stderr}"
    );

    let mut want = expected(&app, &[]);
    want.extend(expected(&tool, &[]));
    assert_eq!(stored_files(&setup.store()), digests(&want));
    let ls = setup.run(&["cache", "ls"]);
    expect_code(&ls, 0, "cache ls");
    assert_eq!(listed(&ls), digests(&want));
    let ls_text = text(&ls.stdout);
    assert!(
        ls_text.contains(&format!("{host}/team/app"))
            && ls_text.contains(&format!("{host}/team/tool")),
        "{ls_text}"
    );
    let index_line = ls_text
        .lines()
        .find(|l| l.starts_with(app.tag_digest()))
        .expect("the index is listed");
    assert!(index_line.ends_with(images::OCI_INDEX), "{index_line}");

    let stats = setup.stats();
    assert_eq!(stats["items"], want.len());
    assert_eq!(stats["bytes"], want.iter().map(|(_, s)| s).sum::<u64>());
    assert_eq!(stats["repositories"], 2);
    assert_eq!(stats["max_bytes"], 20u64 << 30);
    assert_eq!(stats["path"], setup.store().display().to_string());

    // Everything is stored now: a second run fetches nothing.
    let again = setup.run(&["prefetch", &app_ref]);
    expect_code(&again, 0, "second prefetch");
    assert!(
        text(&again.stdout).contains("(0 fetched, 6 already stored)"),
        "{}",
        text(&again.stdout)
    );

    expect_code(
        &setup.run(&["cache", "verify"]),
        0,
        "verify of a good store",
    );

    // Flip one byte of a stored layer.
    let victim = app.platforms[0].layers[1].blob.digest.clone();
    let path = blob_path(&setup.store(), &victim);
    let mut bytes = std::fs::read(&path).expect("read stored layer");
    bytes[10] ^= 0xff;
    std::fs::write(&path, bytes).expect("corrupt stored layer");
    let bad = setup.run(&["cache", "verify"]);
    expect_code(&bad, 1, "verify of a corrupt store");
    let report = text(&bad.stdout);
    assert!(
        report.contains(&format!("BAD {}: expected {victim}", path.display())),
        "{report}"
    );
    assert!(report.contains("1 bad"), "{report}");

    let repaired = setup.run(&["cache", "verify", "--repair"]);
    expect_code(&repaired, 1, "verify --repair still reports what it found");
    assert!(!path.exists(), "the bad item is removed");
    expect_code(&setup.run(&["cache", "verify"]), 0, "verify after repair");
    assert_eq!(setup.stats()["items"], want.len() - 1);

    let gc = setup.run(&["cache", "gc", "--max-size", "1"]);
    expect_code(&gc, 0, "gc");
    assert!(
        text(&gc.stdout).contains(&format!("removed {} items", want.len() - 1)),
        "{}",
        text(&gc.stdout)
    );
    assert!(stored_files(&setup.store()).is_empty());
    assert_eq!(setup.stats()["items"], 0);
    assert_eq!(setup.stats()["bytes"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn prefetch_one_platform_of_a_docker_manifest_list() {
    let registry = Registry::open();
    // A layer over 1 MiB each, so that the smallest max-size a config takes (1 MiB) evicts.
    let spec = ImageSpec::seed(21)
        .format(Format::Docker)
        .large_layer(1_200_000);
    let app = images::push_multiplatform(&registry, "team/app", "v1", &spec).await;
    let setup = Setup::new(&registry, "", "");
    let image = format!("{}/team/app:v1", registry.host());

    let out = setup.run(&["prefetch", "--platform", "linux/arm64", &image]);
    expect_code(&out, 0, "prefetch --platform linux/arm64");
    let want = digests(&expected(&app, &["arm64"]));
    assert_eq!(stored_files(&setup.store()), want);
    for amd64 in digests(&expected(&app, &["amd64"])) {
        if Some(amd64.as_str()) != app.index_digest.as_deref() {
            assert!(!want.contains(&amd64), "no linux/amd64 content: {amd64}");
        }
    }
    assert!(
        text(&out.stderr).contains("(1 of 2 manifests)"),
        "{}",
        text(&out.stderr)
    );

    // A platform the image does not have.
    let none = setup.run(&["prefetch", "--platform", "linux/s390x", &image]);
    expect_code(&none, 1, "prefetch of a missing platform");
    let err = text(&none.stderr);
    assert!(
        err.contains("has no manifest for linux/s390x") && err.contains("linux/arm64/v8"),
        "{err}"
    );

    // `cache gc` without --max-size uses the config's store.max-size; STEVEDORE_CONFIG
    // stands in for --config.
    let small = setup.dir.path().join("small.toml");
    std::fs::write(
        &small,
        format!(
            "[store]\npath = \"{}\"\nmax-size = \"1MiB\"\n",
            setup.store().display()
        ),
    )
    .expect("write config");
    let gc = stevedore_with_env(
        &["cache", "gc"],
        &[("STEVEDORE_CONFIG", small.to_str().expect("UTF-8 path"))],
    );
    expect_code(&gc, 0, "gc with the config's max-size");
    let left = stored_files(&setup.store());
    let left_bytes: u64 = left
        .iter()
        .map(|d| {
            std::fs::metadata(blob_path(&setup.store(), d))
                .expect("stored file")
                .len()
        })
        .sum();
    assert!(left.len() < want.len() && left_bytes <= 1 << 20, "{left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn prefetch_and_cache_errors_are_precise() {
    let registry = Registry::open();
    images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(31)).await;
    let setup = Setup::new(&registry, "", "");
    let missing = format!("{}/team/app:nope", registry.host());

    let out = setup.run(&["prefetch", &missing]);
    expect_code(&out, 1, "prefetch of a missing tag");
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("prefetch {missing}:")) && err.contains("not found"),
        "{err}"
    );
    assert!(text(&out.stdout).contains("prefetched 0 of 1 images"));

    let invalid = setup.run(&["prefetch", "Team/App"]);
    expect_code(&invalid, 2, "prefetch of an invalid name");
    assert!(text(&invalid.stderr).contains("invalid image reference \"Team/App\""));

    // A config without a store.
    let bare = setup.dir.path().join("bare.toml");
    std::fs::write(
        &bare,
        registry_section(&registry.host(), &registry.url(), ""),
    )
    .expect("write config");
    let bare = bare.to_str().expect("UTF-8 path");
    for args in [
        vec!["prefetch", "--config", bare, missing.as_str()],
        vec!["cache", "stats", "--config", bare],
        vec!["cache", "gc", "--config", bare, "--max-size", "1GiB"],
    ] {
        let out = stevedore(&args);
        expect_code(&out, 2, &args.join(" "));
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("no [store] path configured in {bare}")),
            "{err}"
        );
    }

    // A store that was never created.
    let never = setup.dir.path().join("never.toml");
    let never_store = setup.dir.path().join("never");
    std::fs::write(
        &never,
        format!("[store]\npath = \"{}\"\n", never_store.display()),
    )
    .expect("write config");
    let out = stevedore(&[
        "cache",
        "ls",
        "--config",
        never.to_str().expect("UTF-8 path"),
    ]);
    expect_code(&out, 2, "cache ls without a store directory");
    assert!(text(&out.stderr).contains("cannot open the store at"));
    assert!(!never_store.exists(), "cache commands never create a store");

    let out = setup.run(&["cache", "gc", "--max-size", "lots"]);
    expect_code(&out, 2, "gc with a bad size");
    assert!(text(&out.stderr).contains("not a size"));
}

#[test]
fn check_config_reports_every_problem_with_file_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[store]\nmax-size = \"12 parsecs\"\n[registries.\"r.example\"]\n\
         endpoints = [\"ftp://r.example\"]\npassword = \"hunter2\"\n",
    )
    .expect("write");
    let out = stevedore(&["check-config", bad.to_str().expect("utf-8 path")]);
    expect_code(&out, 2, "check-config of a bad file");
    let err = text(&out.stderr);
    assert!(err.contains("bad.toml: line 2"), "{err}");
    assert!(err.contains("unknown size unit"), "{err}");
    assert!(!err.contains("hunter2"), "a secret in an error: {err}");

    // Once it parses, every semantic problem is listed, each with its key.
    std::fs::write(
        &bad,
        "[registries.\"r.example\"]\nendpoints = [\"ftp://r.example\"]\npassword = \"hunter2\"\n\
         [registries.\"Bad Host\"]\n",
    )
    .expect("write");
    let out = stevedore(&["check-config", bad.to_str().expect("utf-8 path")]);
    expect_code(&out, 2, "check-config of a bad file");
    let err = text(&out.stderr);
    for needle in [
        "bad.toml: registries.\"r.example\".endpoints[0]: ftp://r.example/: scheme must be http or https",
        "bad.toml: registries.\"r.example\".password: needs a username",
        "bad.toml: registries.\"Bad Host\": invalid registry host",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(!err.contains("hunter2"), "a secret in an error: {err}");

    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[registries.\"r.example\"]\n").expect("write");
    let out = stevedore(&["check-config", good.to_str().expect("utf-8 path")]);
    expect_code(&out, 0, "check-config of a good file");
    assert!(text(&out.stdout).contains("good.toml: ok"));
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/stevedore.toml");
    expect_code(
        &stevedore(&["check-config", example]),
        0,
        "the annotated example",
    );
}
