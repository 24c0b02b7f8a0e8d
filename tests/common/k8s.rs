//! The Kubernetes manifests under `deploy/kubernetes/`, rendered and read back: `kubectl
//! kustomize` renders a kustomization, `kubernetes-validate` checks it against the API schemas,
//! and Python's PyYAML turns the YAML documents into JSON values to inspect. All three come
//! from `PATH` (`tests/run.sh` installs kubectl and kubernetes-validate); a missing tool fails
//! the test, saying so.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use base64::Engine;
use serde_json::Value;

/// The overlays under deploy/kubernetes/overlays.
pub const OVERLAYS: [&str; 3] = ["node-local", "shared", "scale-out"];
/// Secrets an overlay mounts that its user creates (never shipped), with sample files.
pub const USER_SECRETS: [(&str, &[(&str, &str)]); 2] = [
    (
        "stevedore-peers",
        &[("secret", "a-sample-peer-secret-of-32-chars")],
    ),
    (
        "stevedore-s3",
        &[
            ("access-key-id", "GK0123456789abcdef01234567"),
            ("secret-access-key", "0123456789abcdef0123456789abcdef"),
        ],
    ),
];
/// The Kubernetes version whose schemas the manifests must satisfy.
pub const KUBERNETES_VERSION: &str = "1.32.0";
/// stevedore's config in the pods: a file of a ConfigMap mounted as a directory.
pub const CONFIG_PATH: &str = "/etc/stevedore/config/stevedore.toml";
/// `[server] metrics-listen`: /metrics, /healthz and /readyz.
pub const ADMIN_PORT: u64 = 9102;
/// `[server] listen`: the mirror API and the forward proxy.
pub const MIRROR_PORT: u64 = 5000;

pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// Runs `cmd` with `stdin`; panics with everything it said when it cannot start or fails.
pub fn run(cmd: &mut Command, stdin: &[u8]) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {what}: {e} (bash tests/run.sh installs kubectl and kubernetes-validate)")
        });
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    let feeder = std::thread::spawn(move || input.write_all(&stdin));
    let out = child.wait_with_output().expect("wait");
    feeder.join().expect("stdin thread").expect("write stdin");
    assert!(
        out.status.success(),
        "{what} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `kubectl kustomize DIR`: the YAML documents.
pub fn render(dir: &Path) -> String {
    let out = run(Command::new("kubectl").arg("kustomize").arg(dir), b"");
    String::from_utf8(out.stdout).expect("kustomize output is UTF-8")
}

/// `kubernetes-validate --strict` of rendered YAML; returns how many resources passed.
pub fn validate(yaml: &str) -> usize {
    let out = run(
        Command::new("kubernetes-validate").args([
            "--strict",
            "--kubernetes-version",
            KUBERNETES_VERSION,
            "-",
        ]),
        yaml.as_bytes(),
    );
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    said.matches(" passed for resource ").count()
}

/// The YAML documents as JSON values.
pub fn parse(yaml: &str) -> Vec<Value> {
    let script = "import json, sys\n\
                  try:\n    import yaml\n\
                  except ImportError:\n    sys.exit('PyYAML is missing (pip install kubernetes-validate brings it)')\n\
                  json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)";
    let out = run(
        Command::new("python3").args(["-c", script]),
        yaml.as_bytes(),
    );
    serde_json::from_slice(&out.stdout).expect("python's JSON")
}

/// A rendered kustomization.
pub struct Rendered {
    pub docs: Vec<Value>,
}

impl Rendered {
    /// One of deploy/kubernetes/overlays.
    pub fn of(overlay: &str) -> Self {
        Self::dir(&deploy_dir().join("overlays").join(overlay))
    }

    pub fn dir(dir: &Path) -> Self {
        Rendered {
            docs: parse(&render(dir)),
        }
    }

    pub fn find(&self, kind: &str, name: &str) -> &Value {
        self.find_optional(kind, name)
            .unwrap_or_else(|| panic!("no {kind} {name} in the rendered overlay"))
    }

    pub fn find_optional(&self, kind: &str, name: &str) -> Option<&Value> {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
    }

    /// The workloads (anything with a pod template).
    pub fn workloads(&self) -> Vec<&Value> {
        self.docs
            .iter()
            .filter(|d| !d["spec"]["template"]["spec"].is_null())
            .collect()
    }

    /// Each stevedore server container (`args` starting with `serve`) and what runs it.
    pub fn servers(&self) -> Vec<Server<'_>> {
        let mut out = Vec::new();
        for workload in self.workloads() {
            let pod = &workload["spec"]["template"]["spec"];
            for container in containers(pod) {
                if container["args"].get(0).and_then(Value::as_str) == Some("serve") {
                    out.push(Server {
                        workload,
                        pod,
                        container,
                    });
                }
            }
        }
        assert!(!out.is_empty(), "no stevedore container in the overlay");
        out
    }

    /// The files of a ConfigMap or Secret (`data` base64-decoded for secrets).
    pub fn files(&self, kind: &str, name: &str) -> BTreeMap<String, Vec<u8>> {
        let doc = self.find(kind, name);
        let mut files = BTreeMap::new();
        let text = |v: &Value| v.as_str().expect("string value").as_bytes().to_vec();
        for (key, value) in doc["data"].as_object().into_iter().flatten() {
            let bytes = if kind == "Secret" {
                // kustomize folds long values; Kubernetes' decoder skips the line breaks.
                let folded = value.as_str().expect("string value");
                let unfolded: String = folded.split_whitespace().collect();
                base64::engine::general_purpose::STANDARD
                    .decode(unfolded)
                    .expect("base64 secret data")
            } else {
                text(value)
            };
            files.insert(key.clone(), bytes);
        }
        for (key, value) in doc["stringData"].as_object().into_iter().flatten() {
            files.insert(key.clone(), text(value));
        }
        files
    }

    /// The rendered name (with its hash suffix) of the ConfigMap generated as `name`.
    pub fn configmap_named(&self, name: &str) -> String {
        let prefix = format!("{name}-");
        self.docs
            .iter()
            .filter(|d| d["kind"] == "ConfigMap")
            .filter_map(|d| d["metadata"]["name"].as_str())
            .find(|n| n.strip_prefix(&prefix).is_some_and(|h| !h.contains('-')))
            .unwrap_or_else(|| panic!("no ConfigMap generated as {name}"))
            .to_owned()
    }

    /// The text of the stevedore config that container `c` of `pod` mounts at [`CONFIG_PATH`],
    /// with the ConfigMap's name.
    pub fn config_of(&self, pod: &Value, c: &Value) -> (String, String) {
        let (dir, key) = CONFIG_PATH.rsplit_once('/').expect("an absolute path");
        let mount = mounts(c)
            .find(|m| m["mountPath"] == dir)
            .unwrap_or_else(|| panic!("the config's directory {dir} is not a mount"));
        // A subPath mount never sees an updated ConfigMap, and stevedore could not reload it.
        assert!(
            mount["subPath"].is_null(),
            "the config is mounted by subPath"
        );
        let vol = volume(pod, str_of(&mount["name"]));
        let name = vol["configMap"]["name"]
            .as_str()
            .expect("a ConfigMap volume");
        let files = self.files("ConfigMap", name);
        let text = String::from_utf8(files[key].clone()).expect("UTF-8 config");
        (text, name.to_owned())
    }

    /// Lays out what container `c` mounts under `root`, as the kubelet would, and returns the
    /// config's path there with its absolute paths moved under `root`.
    pub fn lay_out_mounts(&self, pod: &Value, c: &Value, root: &Path) -> PathBuf {
        for m in mounts(c) {
            let target = root.join(str_of(&m["mountPath"]).trim_start_matches('/'));
            let vol = volume(pod, str_of(&m["name"]));
            let files = if let Some(name) = vol["configMap"]["name"].as_str() {
                self.files("ConfigMap", name)
            } else if let Some(name) = vol["secret"]["secretName"].as_str() {
                let user = USER_SECRETS.iter().find(|(n, _)| *n == name);
                match self.find_optional("Secret", name) {
                    Some(_) => self.files("Secret", name),
                    None if vol["secret"]["optional"] == true => BTreeMap::new(),
                    None if user.is_some() => user
                        .into_iter()
                        .flat_map(|(_, files)| files.iter())
                        .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                        .collect(),
                    None => panic!("secret {name} is neither rendered nor optional"),
                }
            } else {
                assert!(vol["emptyDir"].is_object(), "unexpected volume {vol}");
                BTreeMap::new()
            };
            if let Some(key) = m["subPath"].as_str() {
                std::fs::create_dir_all(target.parent().expect("a parent")).expect("mkdir");
                std::fs::write(&target, &files[key]).expect("write a mounted file");
            } else {
                std::fs::create_dir_all(&target).expect("mkdir");
                for (key, bytes) in files {
                    std::fs::write(target.join(key), bytes).expect("write a mounted file");
                }
            }
        }
        let config = root.join(CONFIG_PATH.trim_start_matches('/'));
        let text = std::fs::read_to_string(&config).expect("the config is mounted");
        let rooted = text.replace("\"/", &format!("\"{}/", root.display()));
        std::fs::write(&config, rooted).expect("write the config");
        config
    }
}

/// A stevedore server container, its pod spec and its workload.
pub struct Server<'a> {
    pub workload: &'a Value,
    pub pod: &'a Value,
    pub container: &'a Value,
}

impl Server<'_> {
    pub fn template(&self) -> &Value {
        &self.workload["spec"]["template"]
    }

    /// `<overlay>: <kind> <name>`, for assertion messages.
    pub fn at(&self, overlay: &str) -> String {
        let w = self.workload;
        format!("{overlay}: {} {}", w["kind"], w["metadata"]["name"])
    }
}

/// A pod's containers, init containers first.
pub fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"]
        .into_iter()
        .flat_map(move |key| pod[key].as_array().into_iter().flatten())
}

/// A container's security setting, the container's own or else the pod's.
pub fn effective<'a>(pod: &'a Value, c: &'a Value, key: &str) -> &'a Value {
    match &c["securityContext"][key] {
        Value::Null => &pod["securityContext"][key],
        v => v,
    }
}

pub fn volume<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

pub fn mounts(c: &Value) -> impl Iterator<Item = &Value> {
    c["volumeMounts"].as_array().into_iter().flatten()
}

/// The port number a probe or Service names (a number, or a container port's name).
pub fn port_number(c: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    c["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == *port)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("container {} has no port {port}", c["name"]))
}

/// A JSON string, or a panic naming what it was instead.
pub fn str_of(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

pub fn toml_table(text: &str) -> toml::Table {
    toml::from_str(text).expect("TOML")
}

/// The port of a `host:port` listen address.
pub fn port_of(addr: &str) -> u64 {
    let (_, port) = addr
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{addr} has no port"));
    port.parse().expect("a port number")
}

/// Runs the stevedore binary with `args` (no config from the environment); it must succeed.
pub fn stevedore(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stevedore"));
    cmd.args(args)
        .env_remove("STEVEDORE_CONFIG")
        .env_remove("RUST_LOG");
    run(&mut cmd, b"")
}
