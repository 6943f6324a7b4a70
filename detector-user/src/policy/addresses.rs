//! The host's own addresses and links, kept current from rtnetlink events (no polling):
//! one NETLINK_ROUTE socket subscribed to link and IPv4/IPv6 address groups, a dump at
//! start (and again after an overrun), published as a `watch` snapshot.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::{
    address::{AddressAttribute, AddressHeaderFlags, AddressMessage},
    link::{LinkAttribute, LinkFlags, LinkMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::{error::NetlinkError, prefix::mapped};

/// One address configured on one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostAddr {
    pub ifindex: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// One interface as rtnetlink last described it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    /// Administratively up (IFF_UP).
    pub up: bool,
}

/// A change of an interface, for the VLAN check and re-attaching.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// New, renamed, or brought up/down.
    Changed {
        ifindex: u32,
        name: String,
        up: bool,
    },
    Gone {
        ifindex: u32,
        name: String,
    },
}

/// Everything known about this network namespace's addresses and links.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostSnapshot {
    /// Usable addresses (tentative and DAD-failed IPv6 addresses are left out: the kernel
    /// does not accept connections to them). Loopback and link-local included.
    pub addrs: BTreeSet<HostAddr>,
    pub links: BTreeMap<u32, Link>,
    /// Bumped on every published change.
    pub generation: u64,
}

impl HostSnapshot {
    /// The addresses as `LOCAL_ADDRS` keys (IPv4 mapped).
    pub fn local_keys(&self) -> BTreeSet<[u8; 16]> {
        self.addrs.iter().map(|a| mapped(a.addr)).collect()
    }

    /// Applies one rtnetlink message; returns the link event it amounts to, if any.
    fn apply(&mut self, msg: &RouteNetlinkMessage) -> Option<LinkEvent> {
        match msg {
            RouteNetlinkMessage::NewAddress(m) => {
                if let Some((a, usable)) = host_addr(m) {
                    self.addrs.retain(|o| (o.ifindex, o.addr) != (a.ifindex, a.addr));
                    if usable {
                        self.addrs.insert(a);
                    }
                }
                None
            }
            RouteNetlinkMessage::DelAddress(m) => {
                if let Some((a, _)) = host_addr(m) {
                    self.addrs.retain(|o| (o.ifindex, o.addr) != (a.ifindex, a.addr));
                }
                None
            }
            RouteNetlinkMessage::NewLink(m) => {
                let ifindex = m.header.index;
                let link = Link { name: link_name(m), up: m.header.flags.contains(LinkFlags::Up) };
                let event = (self.links.get(&ifindex) != Some(&link)).then(|| LinkEvent::Changed {
                    ifindex,
                    name: link.name.clone(),
                    up: link.up,
                });
                self.links.insert(ifindex, link);
                event
            }
            RouteNetlinkMessage::DelLink(m) => {
                let ifindex = m.header.index;
                self.addrs.retain(|a| a.ifindex != ifindex);
                self.links.remove(&ifindex).map(|l| LinkEvent::Gone { ifindex, name: l.name })
            }
            _ => None,
        }
    }
}

/// The address of an address message and whether it is usable. IPv4 carries the local
/// address in IFA_LOCAL (IFA_ADDRESS is the peer on point-to-point links); IPv6 in
/// IFA_ADDRESS.
fn host_addr(m: &AddressMessage) -> Option<(HostAddr, bool)> {
    let mut local = None;
    let mut address = None;
    let mut flags = u32::from(m.header.flags.bits());
    for attr in &m.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Flags(f) => flags = f.bits(),
            _ => {}
        }
    }
    let addr = local.or(address)?;
    let unusable = u32::from((AddressHeaderFlags::Tentative | AddressHeaderFlags::Dadfailed).bits());
    Some((HostAddr { ifindex: m.header.index, addr, prefix_len: m.header.prefix_len }, flags & unusable == 0))
}

fn link_name(m: &LinkMessage) -> String {
    m.attributes
        .iter()
        .find_map(|a| if let LinkAttribute::IfName(n) = a { Some(n.clone()) } else { None })
        .unwrap_or_default()
}

/// The receiving ends of the watcher.
pub struct AddressWatch {
    /// The latest snapshot; `changed()` wakes on every change.
    pub snapshot: watch::Receiver<HostSnapshot>,
    /// Link changes as they happen (dropped with a warning if nobody reads them; the
    /// snapshot's `links` stays right regardless).
    pub link_events: mpsc::Receiver<LinkEvent>,
}

const LINK_EVENT_QUEUE: usize = 256;

/// Subscribes, dumps links and addresses, and returns once the first snapshot is
/// complete; a dedicated thread (in the caller's network namespace) keeps it current.
/// The thread stops at the first event after every receiver is gone.
pub fn spawn() -> Result<AddressWatch, NetlinkError> {
    let io = |what| move |source| NetlinkError::Io { what, source };
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(io("opening a NETLINK_ROUTE socket"))?;
    socket.bind_auto().map_err(io("binding the rtnetlink socket"))?;
    // Dumps of many addresses come in bursts: room for them, fewer overruns.
    let _ = socket.set_rx_buf_sz(1 << 20);
    for group in [libc::RTNLGRP_LINK, libc::RTNLGRP_IPV4_IFADDR, libc::RTNLGRP_IPV6_IFADDR] {
        socket
            .add_membership(group)
            .map_err(|source| NetlinkError::Refused { what: "joining an rtnetlink group", source })?;
    }
    let mut watcher = Watcher { socket, state: HostSnapshot::default(), buf: vec![0; 64 * 1024], seq: 0 };
    watcher.resync()?;
    let (tx, snapshot) = watch::channel(watcher.state.clone());
    let (events_tx, link_events) = mpsc::channel(LINK_EVENT_QUEUE);
    std::thread::Builder::new()
        .name("addr-watch".into())
        .spawn(move || watcher.run(&tx, &events_tx))
        .map_err(io("starting the addr-watch thread"))?;
    Ok(AddressWatch { snapshot, link_events })
}

struct Watcher {
    socket: Socket,
    state: HostSnapshot,
    buf: Vec<u8>,
    seq: u32,
}

impl Watcher {
    fn run(mut self, tx: &watch::Sender<HostSnapshot>, events: &mpsc::Sender<LinkEvent>) {
        while !tx.is_closed() {
            let before = (self.state.addrs.clone(), self.state.links.clone());
            let result = self.receive(&mut |e| {
                debug!(?e, "link event");
                if events.try_send(e).is_err() && !events.is_closed() {
                    warn!("link events are not being read; dropping one");
                }
            });
            match result {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    warn!("rtnetlink overrun: events were lost; reading every address again");
                    // A dump can overrun too under an event storm: a few tries.
                    let mut result = self.resync();
                    for _ in 0..2 {
                        if result.is_ok() {
                            break;
                        }
                        result = self.resync();
                    }
                    if let Err(e) = result {
                        warn!(error = %e, "re-reading addresses failed; the address snapshot may be stale");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(error = %e, "the rtnetlink socket failed: local addresses stop following changes");
                    return;
                }
            }
            if (&self.state.addrs, &self.state.links) != (&before.0, &before.1) {
                self.state.generation += 1;
                tx.send_replace(self.state.clone());
            }
        }
    }

    /// Starts from nothing: dumps links, then addresses (one dump at a time per socket).
    fn resync(&mut self) -> Result<(), NetlinkError> {
        let generation = self.state.generation;
        self.state = HostSnapshot { generation: generation + 1, ..HostSnapshot::default() };
        for request in [
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        ] {
            self.seq += 1;
            let mut header = NetlinkHeader::default();
            header.flags = NLM_F_REQUEST | NLM_F_DUMP;
            header.sequence_number = self.seq;
            let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
            msg.finalize();
            let mut bytes = vec![0; msg.buffer_len()];
            msg.serialize(&mut bytes);
            self.socket
                .send(&bytes, 0)
                .map_err(|source| NetlinkError::Io { what: "sending a dump request", source })?;
            while !self
                .receive(&mut |_| {})
                .map_err(|source| NetlinkError::Io { what: "reading a dump", source })?
            {}
        }
        Ok(())
    }

    /// Reads one datagram and applies its messages; true when it ended a dump.
    fn receive(&mut self, on_link: &mut dyn FnMut(LinkEvent)) -> std::io::Result<bool> {
        let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
        let mut done = false;
        let mut off = 0;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(self.buf[off..off + 4].try_into().unwrap_or_default()) as usize;
            if len < 16 || off + len > n {
                break;
            }
            match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..off + len]) {
                Ok(msg) => match msg.payload {
                    NetlinkPayload::InnerMessage(inner) => {
                        if let Some(event) = self.state.apply(&inner) {
                            on_link(event);
                        }
                    }
                    NetlinkPayload::Done(_) => done = true,
                    NetlinkPayload::Error(e) => {
                        warn!(error = ?e, "rtnetlink reported an error");
                        done = true;
                    }
                    _ => {}
                },
                Err(e) => debug!(error = %e, "skipping an rtnetlink message that does not decode"),
            }
            off += (len + 3) & !3;
        }
        Ok(done)
    }
}

#[cfg(test)]
#[path = "addresses_tests.rs"]
mod tests;
