//! The Kubernetes manifests under `deploy/kubernetes/`, black-box: each overlay is rendered by
//! `kubectl kustomize`, checked against the Kubernetes API schemas by `kubernetes-validate
//! --strict`, and read back for what the pods promise: hardened containers with memory limits,
//! probes on stevedore's admin listener, a grace period that outlasts stevedore's drain, and a
//! stevedore config that `stevedore check-config` accepts with the files the pod mounts laid
//! out under a temporary root. The containerd `hosts.toml` writer's script is run against a
//! temporary directory, and the overlay docs/kubernetes.md shows for one's own image and
//! credentials is rendered. `tests/run.sh` installs kubectl and kubernetes-validate.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::k8s::{
    ADMIN_PORT, CONFIG_PATH, MIRROR_PORT, OVERLAYS, Rendered, containers, deploy_dir, effective,
    mounts, parse, port_number, port_of, render, stevedore, str_of, toml_table, validate, volume,
};

#[test]
fn overlays_pass_strict_schema_validation() {
    for dir in [
        "base",
        "overlays/node-local",
        "overlays/shared",
        "overlays/scale-out",
    ] {
        let yaml = render(&deploy_dir().join(dir));
        // kubernetes-validate says one "passed" line per resource; counting them guards against
        // a run that checked nothing.
        assert_eq!(validate(&yaml), parse(&yaml).len(), "{dir}:\n{yaml}");
    }
}

#[test]
fn every_container_is_hardened_and_limited() {
    for overlay in OVERLAYS {
        let r = Rendered::of(overlay);
        for w in r.workloads() {
            let pod = &w["spec"]["template"]["spec"];
            let at = format!("{overlay}: {} {}", w["kind"], w["metadata"]["name"]);
            assert_eq!(pod["automountServiceAccountToken"], false, "{at}");
            assert_eq!(
                pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                "{at}"
            );
            for c in containers(pod) {
                let at = format!("{at}, container {}", c["name"]);
                let sc = &c["securityContext"];
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{at}");
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{at}");
                assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{at}");
                assert!(sc["capabilities"]["add"].is_null(), "{at}");
                assert!(sc["privileged"] != true, "{at}");
                assert!(
                    c["resources"]["limits"]["memory"].is_string(),
                    "{at}: no memory limit"
                );
                assert!(c["resources"]["requests"]["memory"].is_string(), "{at}");
                assert!(c["resources"]["requests"]["cpu"].is_string(), "{at}");
                if c["name"] == "containerd-hosts" {
                    // The one exception: it writes root's /etc/containerd/certs.d on the node,
                    // as root without capabilities, and mounts nothing else.
                    assert_eq!(sc["runAsUser"], 0, "{at}");
                    let paths: Vec<_> = pod["volumes"]
                        .as_array()
                        .expect("volumes")
                        .iter()
                        .map(|v| v["hostPath"]["path"].clone())
                        .collect();
                    assert_eq!(paths, ["/etc/containerd/certs.d"], "{at}");
                } else {
                    assert_eq!(effective(pod, c, "runAsNonRoot"), true, "{at}");
                    for key in ["runAsUser", "runAsGroup"] {
                        assert_eq!(effective(pod, c, key), 65532, "{at}: {key}");
                    }
                    assert_eq!(pod["securityContext"]["fsGroup"], 65532, "{at}");
                }
            }
        }
    }
}

#[test]
fn stevedore_runs_its_config_with_probes_on_the_admin_listener() {
    for overlay in OVERLAYS {
        let r = Rendered::of(overlay);
        for server in r.servers() {
            let (pod, c) = (server.pod, server.container);
            let at = server.at(overlay);
            assert_eq!(c["image"], "stevedore:latest", "{at}");
            // A locally built or loaded image is used as it is (`:latest` would mean Always).
            assert_eq!(c["imagePullPolicy"], "IfNotPresent", "{at}");
            assert_eq!(c["args"], json!(["serve", "--config", CONFIG_PATH]), "{at}");
            let env = c["env"].as_array().expect("env");
            let config_env = env.iter().find(|e| e["name"] == "STEVEDORE_CONFIG");
            assert_eq!(
                config_env.map(|e| &e["value"]),
                Some(&json!(CONFIG_PATH)),
                "{at}"
            );
            for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
                let get = &c[probe]["httpGet"];
                assert_eq!(get["path"], path, "{at}: {probe}");
                assert_eq!(port_number(c, &get["port"]), ADMIN_PORT, "{at}: {probe}");
            }
            let annotations = &server.template()["metadata"]["annotations"];
            assert_eq!(annotations["prometheus.io/scrape"], "true", "{at}");
            assert_eq!(
                annotations["prometheus.io/port"],
                ADMIN_PORT.to_string(),
                "{at}"
            );

            // The ConfigMap keeps its name: an edited config reaches the running pods, and
            // stevedore reloads it.
            let (config, configmap) = r.config_of(pod, c);
            assert_eq!(configmap, "stevedore-config", "{at}");
            let config = toml_table(&config);
            let server = config["server"].as_table().expect("[server]");
            let admin = server["metrics-listen"].as_str().expect("metrics-listen");
            assert_eq!(port_of(admin), ADMIN_PORT, "{at}");
            let listen = server["listen"].as_str().expect("listen");
            assert_eq!(port_of(listen), MIRROR_PORT, "{at}");
            assert_eq!(port_number(c, &json!("mirror")), MIRROR_PORT, "{at}");
            if pod["hostNetwork"] == true {
                // On the node's network, the mirror (and its credentials) stays on loopback.
                assert!(listen.starts_with("127.0.0.1:"), "{at}: listen = {listen}");
            }

            // The store: a writable emptyDir with a size limit at store.path.
            let store = config["store"]["path"].as_str().expect("store.path");
            let m = mounts(c).find(|m| m["mountPath"] == store).expect("store");
            assert!(m["readOnly"] != true, "{at}");
            let vol = volume(pod, str_of(&m["name"]));
            assert!(vol["emptyDir"]["sizeLimit"].is_string(), "{at}: {vol}");

            // Registry credentials: a dockerconfigjson secret mounted as a directory, so that
            // Kubernetes can swap it under the running process.
            let secrets = config["credentials"]["kubernetes-secrets"]
                .as_array()
                .expect("credentials.kubernetes-secrets");
            assert!(!secrets.is_empty(), "{at}");
            for path in secrets {
                let m = mounts(c)
                    .find(|m| m["mountPath"] == path.as_str().expect("a path"))
                    .unwrap_or_else(|| panic!("{at}: {path} is not a mount"));
                assert!(
                    m["subPath"].is_null(),
                    "{at}: a subPath mount never updates"
                );
                let vol = volume(pod, str_of(&m["name"]));
                let secret = r.find("Secret", str_of(&vol["secret"]["secretName"]));
                assert_eq!(secret["type"], "kubernetes.io/dockerconfigjson", "{at}");
            }
        }
    }
}

/// Whether a Service of the overlay sends clients to the pods of `template`.
fn behind_a_service(r: &Rendered, template: &Value) -> bool {
    let labels = &template["metadata"]["labels"];
    r.docs.iter().filter(|d| d["kind"] == "Service").any(|s| {
        let selector = s["spec"]["selector"].as_object();
        selector.is_some_and(|sel| !sel.is_empty() && sel.iter().all(|(k, v)| labels[k] == *v))
    })
}

#[test]
fn deployed_configs_pass_check_config_and_the_grace_period_outlasts_the_drain() {
    let base = std::fs::read_to_string(deploy_dir().join("base/stevedore.toml")).expect("base");
    for overlay in OVERLAYS {
        let r = Rendered::of(overlay);
        for server in r.servers() {
            let (pod, c) = (server.pod, server.container);
            let at = server.at(overlay);
            if overlay == "shared" {
                assert_eq!(
                    r.config_of(pod, c).0,
                    base,
                    "shared uses base/stevedore.toml"
                );
            }
            let root = tempfile::tempdir().expect("tempdir");
            let config = r.lay_out_mounts(pod, c, root.path());
            let out = stevedore(&["check-config", config.to_str().expect("UTF-8 path")]);
            assert!(String::from_utf8_lossy(&out.stdout).ends_with(": ok\n"));

            // SIGTERM: readiness off, shutdown-delay, listeners closed, drain-timeout.
            let settings = stevedore::config::Config::load(&config)
                .expect("a valid config")
                .server;
            let grace = pod["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap_or_else(|| panic!("{at}: no terminationGracePeriodSeconds"));
            let drain = settings.shutdown_delay + settings.drain_timeout;
            assert!(
                Duration::from_secs(grace) >= drain + Duration::from_secs(5),
                "{at}: {grace} s of grace for a {drain:?} drain"
            );
            if behind_a_service(&r, server.template()) {
                assert!(
                    settings.shutdown_delay >= Duration::from_secs(3),
                    "{at}: endpoints need time to drop the pod before its listeners close"
                );
            }
        }
    }
}

/// The shared overlay's documented "One CA": a CA made by `stevedore ca show` in the
/// `stevedore-ca` secret, and base/stevedore.toml's commented `[ca]` lines switched on.
#[test]
fn shared_overlay_takes_one_ca_from_its_secret() {
    let r = Rendered::of("shared");
    let server = &r.servers()[0];
    let (pod, c) = (server.pod, server.container);
    let root = tempfile::tempdir().expect("tempdir");
    let config = r.lay_out_mounts(pod, c, root.path());

    let text = std::fs::read_to_string(&config).expect("config");
    let mut switched_on = 0;
    let text: String = text
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest == "[ca]" || rest.starts_with("cert = ") || rest.starts_with("key = ") =>
            {
                switched_on += 1;
                format!("{rest}\n")
            }
            _ => format!("{line}\n"),
        })
        .collect();
    assert_eq!(
        switched_on, 3,
        "base/stevedore.toml shows [ca] cert and key"
    );
    std::fs::write(&config, &text).expect("write config");
    let ca = toml_table(&text)["ca"].clone();

    // Make the CA as docs/kubernetes.md says, for the registries the config serves.
    let made = root.path().join("made");
    let mut ca_config = format!("[ca]\ndir = \"{}\"\n", made.display());
    for name in toml_table(&text)["registries"]
        .as_table()
        .expect("[registries]")
        .keys()
    {
        ca_config.push_str(&format!("[registries.\"{name}\"]\n"));
    }
    let gen_path = root.path().join("ca-gen.toml");
    std::fs::write(&gen_path, ca_config).expect("write");
    let pem = stevedore(&["ca", "show", "--config", gen_path.to_str().expect("path")]).stdout;
    assert!(String::from_utf8_lossy(&pem).contains("BEGIN CERTIFICATE"));
    for (key, file) in [("cert", "ca.pem"), ("key", "ca-key.pem")] {
        let at = PathBuf::from(ca[key].as_str().expect("a path"));
        assert!(
            at.starts_with(root.path().join("etc/stevedore/ca")),
            "{at:?}"
        );
        std::fs::copy(made.join(file), &at).expect("copy");
    }
    stevedore(&["check-config", config.to_str().expect("path")]);
}

#[test]
fn shared_overlay_is_a_service_over_two_replicas() {
    let r = Rendered::of("shared");
    let deployment = r.find("Deployment", "stevedore");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let template = &deployment["spec"]["template"];
    let labels = template["metadata"]["labels"].as_object().expect("labels");
    let selects = |selector: &Value| {
        let selector = selector.as_object().expect("a selector");
        !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    let c = &template["spec"]["containers"][0];

    let service = r.find("Service", "stevedore");
    assert!(selects(&service["spec"]["selector"]));
    let ports: BTreeMap<_, _> = service["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            let target = port_number(c, &p["targetPort"]);
            (str_of(&p["name"]).to_owned(), (p["port"].clone(), target))
        })
        .collect();
    assert_eq!(ports["mirror"], (Value::from(MIRROR_PORT), MIRROR_PORT));
    assert_eq!(ports["admin"], (Value::from(ADMIN_PORT), ADMIN_PORT));

    let pdb = r.find("PodDisruptionBudget", "stevedore");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"]));
}

/// The scale-out overlay: replicas over one bucket that find each other through a headless
/// Service, the one `[peers] dns` names (service, namespace and port), and secrets for the peer
/// path and the bucket that its user creates rather than ones shipped with known values.
#[test]
fn scale_out_overlay_finds_its_replicas_through_a_headless_service() {
    let r = Rendered::of("scale-out");
    let deployment = r.find("Deployment", "stevedore");
    assert!(deployment["spec"]["replicas"].as_u64() >= Some(3));
    let template = &deployment["spec"]["template"];
    let (pod, labels) = (&template["spec"], &template["metadata"]["labels"]);
    let c = &pod["containers"][0];
    let config = toml_table(&r.config_of(pod, c).0);
    assert_eq!(config["store"]["type"].as_str(), Some("s3"));

    let dns = config["peers"]["dns"].as_str().expect("[peers] dns");
    let (host, port) = dns.rsplit_once(':').expect("host:port");
    let peers = r
        .docs
        .iter()
        .find(|d| d["kind"] == "Service" && d["spec"]["clusterIP"] == "None")
        .expect("a headless Service");
    let (name, namespace) = (
        str_of(&peers["metadata"]["name"]),
        str_of(&peers["metadata"]["namespace"]),
    );
    assert_eq!(host, format!("{name}.{namespace}.svc.cluster.local"));
    let selector = peers["spec"]["selector"].as_object().expect("a selector");
    assert!(!selector.is_empty() && selector.iter().all(|(k, v)| labels[k] == *v));
    let mirror = peers["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["port"].as_u64().map(|n| n.to_string()).as_deref() == Some(port))
        .expect("the port [peers] dns names");
    assert_eq!(port_number(c, &mirror["targetPort"]), MIRROR_PORT);

    for (secret, key) in [
        ("stevedore-peers", &config["peers"]["secret"]),
        ("stevedore-s3", &config["store"]["s3"]["secret-access-key"]),
    ] {
        assert!(
            r.find_optional("Secret", secret).is_none(),
            "{secret} is shipped"
        );
        let file = key["file"].as_str().expect("a { file = … } secret");
        let mount = mounts(c)
            .find(|m| file.starts_with(&format!("{}/", str_of(&m["mountPath"]))))
            .unwrap_or_else(|| panic!("{file} is not in a mount"));
        assert_eq!(
            volume(pod, str_of(&mount["name"]))["secret"]["secretName"],
            secret
        );
    }
}

/// Runs the writer's script with `certs_d` as the node's /etc/containerd/certs.d until it has
/// written everything once, then stops it with SIGTERM.
fn run_hosts_writer(r: &Rendered, certs_d: &Path) -> Vec<String> {
    let ds = r.find("DaemonSet", "containerd-hosts");
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["command"], json!(["/bin/sh", "-c"]));
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(str_of(&c["args"][0]));
    for env in c["env"].as_array().expect("env") {
        let value = match env["valueFrom"]["configMapKeyRef"].as_object() {
            Some(key_ref) => {
                let files = r.files("ConfigMap", str_of(&key_ref["name"]));
                String::from_utf8(files[str_of(&key_ref["key"])].clone()).expect("UTF-8")
            }
            None => str_of(&env["value"]).to_owned(),
        };
        cmd.env(str_of(&env["name"]), value);
    }
    cmd.env("CERTS_D", certs_d);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sh");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut said = Vec::new();
    while !said
        .iter()
        .any(|l: &String| l.starts_with("hosts.toml files up to date"))
    {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => said.push(line),
            Err(e) => panic!("the writer did not finish ({e}); it said {said:?}"),
        }
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "SIGTERM ignored"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    said
}

#[test]
fn containerd_hosts_writer_points_each_listed_registry_at_the_node_local_mirror() {
    let r = Rendered::of("node-local");
    let list = r.files("ConfigMap", &r.configmap_named("containerd-hosts"));
    let registries = String::from_utf8(list["registries"].clone()).expect("UTF-8");
    let registries: Vec<&str> = registries.split_whitespace().collect();
    assert_eq!(registries, ["docker.io", "ghcr.io", "quay.io"]);
    let mirror = String::from_utf8(list["mirror"].clone()).expect("UTF-8");
    assert_eq!(mirror, "http://127.0.0.1:5000");

    // stevedore serves every listed registry, on the address the files name.
    let server = &r.servers()[0];
    let (pod, c) = (server.pod, server.container);
    let config = toml_table(&r.config_of(pod, c).0);
    let listen = config["server"]["listen"].as_str().expect("listen");
    assert_eq!(format!("http://{listen}"), mirror);
    let sections = config["registries"].as_table().expect("[registries]");
    for reg in &registries {
        assert!(sections.contains_key(*reg), "no [registries.\"{reg}\"]");
    }

    let certs_d = tempfile::tempdir().expect("tempdir");
    let own = "server = \"https://quay.io\"\n";
    std::fs::create_dir(certs_d.path().join("quay.io")).expect("mkdir");
    std::fs::write(certs_d.path().join("quay.io/hosts.toml"), own).expect("write");
    let said = run_hosts_writer(&r, certs_d.path());
    assert!(said.iter().any(|l| l.starts_with("leaving ")), "{said:?}");
    assert_eq!(
        std::fs::read_to_string(certs_d.path().join("quay.io/hosts.toml")).expect("read"),
        own,
        "a file it did not write is left alone"
    );
    let mut marker = String::new();
    for (reg, server) in [
        ("docker.io", "https://registry-1.docker.io"),
        ("ghcr.io", "https://ghcr.io"),
    ] {
        let file = certs_d.path().join(reg).join("hosts.toml");
        let text = std::fs::read_to_string(file).expect("a written hosts.toml");
        marker = text.lines().next().expect("a first line").to_owned();
        let hosts = toml_table(&text);
        assert_eq!(hosts["server"].as_str(), Some(server), "{text}");
        let host = &hosts["host"][mirror.as_str()];
        assert_eq!(
            host["capabilities"],
            toml::Value::Array(vec!["pull".into(), "resolve".into()]),
            "{text}"
        );
        assert_eq!(hosts["host"].as_table().map(|t| t.len()), Some(1), "{text}");
    }

    // A file it wrote for a registry no longer listed goes; an unchanged file is not rewritten.
    let gone = certs_d.path().join("old.example");
    std::fs::create_dir(&gone).expect("mkdir");
    let stale = format!("{marker}\nserver = \"x\"\n");
    std::fs::write(gone.join("hosts.toml"), stale).expect("write");
    let said = run_hosts_writer(&r, certs_d.path());
    assert!(!gone.exists(), "{said:?}");
    assert!(!said.iter().any(|l| l.starts_with("wrote ")), "{said:?}");
}

/// The fenced block of docs/kubernetes.md whose first line is `first`.
fn doc_block(first: &str) -> String {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/kubernetes.md"))
            .expect("docs/kubernetes.md");
    let start = doc
        .find(&format!("```yaml\n{first}\n"))
        .unwrap_or_else(|| panic!("docs/kubernetes.md shows no block starting with {first}"));
    let body = &doc[start + "```yaml\n".len()..];
    body[..body.find("\n```").expect("a closed block") + 1].to_owned()
}

/// An empty `my-cluster/` next to `stevedore/` (this checkout), as docs/kubernetes.md lays out
/// an overlay of one's own.
fn my_cluster() -> (tempfile::TempDir, PathBuf) {
    let top = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(env!("CARGO_MANIFEST_DIR"), top.path().join("stevedore"))
        .expect("symlink");
    let dir = top.path().join("my-cluster");
    std::fs::create_dir(&dir).expect("mkdir");
    (top, dir)
}

/// docs/kubernetes.md's overlay for one's own image and credentials, over the shared overlay:
/// the image is replaced, and the credentials secret keeps its name (no hash suffix, so a
/// change reaches the running pods as files) and its namespace.
#[test]
fn documented_overlay_sets_the_image_and_the_registry_credentials() {
    let (_top, dir) = my_cluster();
    let kustomization = doc_block("# my-cluster/kustomization.yaml");
    std::fs::write(dir.join("kustomization.yaml"), kustomization).expect("write");
    let auth = r#"{"auths": {"ghcr.io": {"username": "bot", "password": "secret"}}}"#;
    std::fs::write(dir.join("dockerconfig.json"), auth).expect("write");

    let yaml = render(&dir);
    assert_eq!(validate(&yaml), parse(&yaml).len(), "{yaml}");
    let r = Rendered::dir(&dir);
    let shipped = Rendered::of("shared");
    assert_eq!(r.docs.len(), shipped.docs.len(), "the same resources");
    let server = &r.servers()[0];
    let (pod, c) = (server.pod, server.container);
    assert_eq!(c["image"], "registry.example/stevedore:0.1.0");
    let vol = volume(pod, "registry-secret");
    let name = str_of(&vol["secret"]["secretName"]);
    assert_eq!(name, "stevedore-registry-credentials");
    let secret = r.find("Secret", name);
    assert_eq!(secret["metadata"]["namespace"], "stevedore");
    assert_eq!(secret["type"], "kubernetes.io/dockerconfigjson");
    assert_eq!(
        r.files("Secret", name)[".dockerconfigjson"],
        auth.as_bytes()
    );
    assert_eq!(r.config_of(pod, c).1, "stevedore-config");
    let root = tempfile::tempdir().expect("tempdir");
    let config = r.lay_out_mounts(pod, c, root.path());
    stevedore(&["check-config", config.to_str().expect("path")]);
}

/// docs/kubernetes.md's patch for a Secret managed elsewhere: the overlay renders without it.
#[test]
fn documented_patch_drops_the_shipped_secret() {
    let (_top, dir) = my_cluster();
    let patch =
        doc_block("# my-cluster/drop-registry-secret.yaml, listed under patchesStrategicMerge:");
    std::fs::write(dir.join("drop-registry-secret.yaml"), patch).expect("write");
    let kustomization = "bases:\n- ../stevedore/deploy/kubernetes/overlays/shared\n\
                         patchesStrategicMerge:\n- drop-registry-secret.yaml\n";
    std::fs::write(dir.join("kustomization.yaml"), kustomization).expect("write");

    let r = Rendered::dir(&dir);
    assert!(r.docs.iter().all(|d| d["kind"] != "Secret"));
    // kustomize v2.0.3 (kubectl 1.20) leaves an empty document in the deleted one's place.
    let left = r
        .docs
        .iter()
        .filter(|d| d.as_object().is_some_and(|o| !o.is_empty()));
    assert_eq!(left.count() + 1, Rendered::of("shared").docs.len());
}
