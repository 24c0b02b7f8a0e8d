//! stevedore: an OCI registry pull-through proxy that holds registry credentials centrally,
//! verifies every byte by digest and streams content to anonymous pullers.
//!
//! The shape: front doors (`server`) parse requests once into a [`route::Route`], the pull
//! engine (`pull`) serves it from upstream registries (`upstream`) with central credentials
//! (`credentials`). See `docs/architecture.md`.

pub mod body;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod peers;
pub mod policy;
pub mod pull;
pub mod reference;
pub mod route;
pub mod secret;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod upstream;
