//! A real Garage cluster on loopback (`garage` from `cargo install --locked garage`): three
//! nodes with replication factor 3, the layout assigned and applied, a bucket and a key made
//! by the test. Nodes can be stopped one by one.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::util::{free_port, wait_until};

pub const BUCKET: &str = "stevedore";

pub struct Node {
    child: Option<Child>,
    config: PathBuf,
    pub s3_port: u16,
}

pub struct Garage {
    pub nodes: Vec<Node>,
    pub key_id: String,
    pub secret: String,
    _dir: tempfile::TempDir,
}

fn garage(config: &Path, args: &[&str]) -> String {
    let out = Command::new("garage")
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .expect("run garage (bash tests/run.sh installs it with cargo install --locked garage)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "garage {args:?} failed:\n{text}");
    text
}

impl Garage {
    pub fn start(nodes: usize) -> Garage {
        let dir = tempfile::Builder::new()
            .prefix("garage")
            .tempdir()
            .expect("tempdir");
        let secret: String = (0..32)
            .map(|i| format!("{:02x}", (i * 37 + 11) % 256))
            .collect();
        let port = || free_port(Ipv4Addr::LOCALHOST.into());
        let mut list = Vec::new();
        for i in 0..nodes {
            let root = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&root).expect("node dir");
            let (rpc, s3, admin) = (port(), port(), port());
            let config = root.join("garage.toml");
            std::fs::write(
                &config,
                format!(
                    "metadata_dir = \"{r}/meta\"\ndata_dir = \"{r}/data\"\ndb_engine = \"lmdb\"\n\
                     replication_factor = {nodes}\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                     rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
                     [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\
                     root_domain = \".s3.garage.localhost\"\n\
                     [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
                    r = root.display()
                ),
            )
            .expect("garage.toml");
            let log = std::fs::File::create(root.join("log")).expect("log");
            let child = Command::new("garage")
                .arg("-c")
                .arg(&config)
                .arg("server")
                .env("RUST_LOG", "garage=warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start garage (bash tests/run.sh installs it)");
            list.push(Node {
                child: Some(child),
                config,
                s3_port: s3,
            });
        }
        let first = list[0].config.clone();
        let ids: Vec<String> = list
            .iter()
            .map(|n| {
                wait_until(Duration::from_secs(20), || {
                    Command::new("garage")
                        .arg("-c")
                        .arg(&n.config)
                        .args(["node", "id", "-q"])
                        .output()
                        .ok()
                        .filter(|o| o.status.success())
                        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                })
                .expect("garage node id")
            })
            .collect();
        for id in &ids[1..] {
            garage(&first, &["node", "connect", id]);
        }
        for id in &ids {
            let short = &id[..16];
            garage(
                &first,
                &["layout", "assign", "-z", "dc1", "-c", "1G", short],
            );
        }
        garage(&first, &["layout", "apply", "--version", "1"]);
        let _ = wait_until(Duration::from_secs(20), || {
            let out = garage(&first, &["status"]);
            (out.matches("dc1").count() >= nodes).then_some(())
        });
        garage(&first, &["bucket", "create", BUCKET]);
        let key = garage(&first, &["key", "create", "stevedore-key"]);
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| panic!("no {name} in:\n{key}"))
        };
        let (key_id, secret) = (field("Key ID:"), field("Secret key:"));
        garage(
            &first,
            &[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                BUCKET,
                "--key",
                "stevedore-key",
            ],
        );
        Garage {
            nodes: list,
            key_id,
            secret,
            _dir: dir,
        }
    }

    pub fn endpoint(&self, node: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[node].s3_port)
    }

    /// A `[store]` section for stevedore on `node`'s S3 API, its local tier at `path`.
    pub fn store_section(&self, node: usize, path: &Path) -> String {
        format!(
            "[store]\npath = \"{}\"\ntype = \"s3\"\n[store.s3]\nendpoint = \"{}\"\nbucket = \"{BUCKET}\"\n\
             region = \"garage\"\naccess-key-id = \"{}\"\nsecret-access-key = \"{}\"\n",
            path.display(),
            self.endpoint(node),
            self.key_id,
            self.secret
        )
    }

    /// An S3 client of the test's own, on `node`.
    pub fn client(&self, node: usize) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(self.endpoint(node))
            .with_bucket_name(BUCKET)
            .with_region("garage")
            .with_allow_http(true)
            .with_access_key_id(&self.key_id)
            .with_secret_access_key(&self.secret)
            .build()
            .expect("S3 client")
    }

    /// Stops a node (SIGKILL).
    pub fn stop(&mut self, node: usize) {
        if let Some(mut c) = self.nodes[node].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i);
        }
    }
}
