//! The content store against a real registry, with a fault-injecting proxy in between: one
//! upstream fetch per digest under concurrency, resume after a cut, corrupt content never
//! committed, offline serving, tag revalidation, repository scoping and eviction.

mod common;

// The topic modules live in tests/cache/ (not picked up by cargo as test targets). A crate
// root resolves `mod x;` next to itself (tests/x.rs, which cargo would build as a test
// binary of its own), hence the `#[path]`s.
#[path = "cache/fills.rs"]
mod fills;
#[path = "cache/helpers.rs"]
mod helpers;
#[path = "cache/manifests.rs"]
mod manifests;
#[path = "cache/store.rs"]
mod store;
