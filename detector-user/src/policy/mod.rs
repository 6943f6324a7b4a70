//! Which SYNs the cookie responder may answer (docs/real-hosts.md): the agent's side of
//! the policy maps.
//!
//! - `addresses`: the host's own addresses, from rtnetlink events.
//! - `nat`, `nat_chains`, `nat_watch`: ports and destinations published by DNAT/redirect,
//!   from the nftables ruleset, re-read on nftables netlink events.
//! - `vlan`: interfaces whose NIC strips VLAN tags under VLAN devices.
//! - `listeners`: the host's TCP listening ports (sock_diag), read on every rebuild;
//!   `sock_diag`: the kernel's socket dump it uses (also for TIME_WAIT tuples).
//! - `desired`: what the maps should hold, from all of the above and `[policy]`.
//! - `inputs`: the watchers together; `maps`: the maps and their level-triggered diff;
//!   `local_table`: the inlined copy of the local addresses, rewritten in a safe order;
//!   `map_shape`: each map taken out of the object checked, its errors named after it;
//!   `feed`: the task that keeps the desired policy current and the control loop's step.

pub mod addresses;
pub mod desired;
pub mod feed;
pub mod inputs;
pub mod listeners;
pub mod local_table;
mod map_shape;
pub mod maps;
pub mod nat;
pub mod nat_watch;
pub mod sock_diag;
#[cfg(test)]
mod test_support;
pub mod vlan;

pub use desired::{DesiredPolicy, Note, PolicyConfig};
