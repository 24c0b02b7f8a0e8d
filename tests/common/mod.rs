//! Black-box integration-test harness: real upstream components only.
//!
//! * [`registry::Registry`] — CNCF distribution 2.8 (`docker-registry`) as a
//!   child process, open / htpasswd / token auth.
//! * [`token_server::TokenServer`] — Docker-style token server whose JWTs
//!   distribution accepts, with request recording.
//! * [`images`] — deterministic test images and a push client.
//! * [`faults`] — a fault-injecting, recording proxy between stevedore and a
//!   real registry.
//! * [`stevedore`] — stevedore itself, in-process on 127.0.0.1:0.
//! * [`clients`] — skopeo, containerd/ctr and oci-client pulling through a
//!   mirror.
//! * [`k8s`] — the Kubernetes manifests under `deploy/kubernetes/`, rendered by
//!   `kubectl kustomize` and read back.
//!
//! Each integration test binary includes this with `mod common;` and uses a
//! subset of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod clients;
pub mod docker;
pub mod faults;
pub mod garage;
pub mod images;
pub mod k8s;
pub mod lab;
pub mod otlp;
pub mod pki;
pub mod process;
pub mod pulls;
pub mod registry;
pub mod stevedore;
pub mod token_server;
pub mod util;

#[allow(unused_imports)]
pub use images::{ImageSpec, PushedImage, RegistryClient};
#[allow(unused_imports)]
pub use registry::Registry;
#[allow(unused_imports)]
pub use token_server::{Credentials, TokenServer};
