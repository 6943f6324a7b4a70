//! Live control over a Unix socket (docs/control.md): the protocol, the server side
//! (`socket`: bind, peer check, limits; `handler`: what each request does; `start`: the
//! pieces in the order the agent starts them) and the CLI client (`client`).

pub mod client;
pub mod handler;
pub mod protocol;
pub mod socket;
pub mod start;
