//! Who may reach what: which clients may pull which content (`access.rs`, the `[policy]`
//! section), and which network addresses clients may steer stevedore to (`address.rs`).

mod access;
mod address;
mod cidr;

pub use access::{Caller, Decision, Need, Policy, Presented, Unrecognised};
pub use address::is_restricted_ip;
pub use cidr::Cidr;
