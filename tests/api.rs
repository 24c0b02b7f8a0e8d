//! The distribution API surface of stevedore, black-box over real sockets, with Debian's
//! `docker-registry` (distribution 2.8) as the upstream and a fault proxy in between where
//! failures are needed: routing forms, manifests, blobs and ranges, tag pagination (through
//! a small paging front, since distribution 2.8 does not paginate tags), referrers, refused
//! methods, OCI error JSON, the network policy, upstream faults, endpoint fallback, h2c and
//! streaming of a large blob.

mod common;

// The topic modules live in tests/api/ (not picked up by cargo as test targets). A crate
// root resolves `mod x;` next to itself (tests/x.rs, which cargo would build as a test
// binary of its own), hence the `#[path]`s.
#[path = "api/errors.rs"]
mod errors;
#[path = "api/faults.rs"]
mod faults;
#[path = "api/helpers.rs"]
mod helpers;
#[path = "api/listing.rs"]
mod listing;
#[path = "api/policy.rs"]
mod policy;
#[path = "api/serving.rs"]
mod serving;
