//! Everything the cookie policy is built from, in one place for the control loop: the
//! address watcher, the NAT watcher, the VLAN check and the operator's `[policy]`.
//! `desired()` on every poll, `changed().await` to wake early when the host changes.

use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    error::NetlinkError,
    policy::{
        addresses::{self, AddressWatch, LinkEvent},
        listeners,
        nat::NatFindings,
        nat_watch,
        vlan::VlanCheck,
        DesiredPolicy, Note, PolicyConfig,
    },
};

pub struct PolicyInputs {
    cfg: PolicyConfig,
    addresses: AddressWatch,
    /// `None` when `policy.detect_nat = false`.
    nat: Option<watch::Receiver<NatFindings>>,
    vlan: VlanCheck,
    /// (ifindex, name) of the interfaces the program is attached to.
    attached: Vec<(u32, String)>,
    last_notes: Option<Vec<Note>>,
    /// Whether the last listener read failed (its error is logged once per failure run).
    listeners_failed: bool,
}

impl PolicyInputs {
    /// Starts the watchers in the caller's network namespace (the agent's). Each returns
    /// once its first complete view is in, so the first `desired()` is already right.
    pub fn start(cfg: PolicyConfig, attached: Vec<(u32, String)>) -> Result<Self, NetlinkError> {
        let addresses = addresses::spawn()?;
        let nat = if cfg.detect_nat {
            Some(nat_watch::spawn()?)
        } else {
            info!("policy.detect_nat = false: NAT rules are not read; policy.kernel_ports/destinations rule");
            None
        };
        Ok(Self {
            cfg,
            addresses,
            nat,
            vlan: VlanCheck::default(),
            attached,
            last_notes: None,
            listeners_failed: false,
        })
    }

    /// An interface named like an attached one now has `ifindex` (it was re-created).
    pub fn follow_link(&mut self, ifindex: u32, name: &str) {
        for (index, attached) in &mut self.attached {
            if attached == name {
                *index = ifindex;
            }
        }
    }

    /// What the maps should hold now; logs the exclusions when they changed.
    pub fn desired(&mut self) -> DesiredPolicy {
        let local = self.addresses.snapshot.borrow_and_update().local_keys();
        let nat = self.nat.as_mut().map(|rx| rx.borrow_and_update().clone()).unwrap_or_default();
        let ifaces = self.vlan.run(&self.attached);
        let listeners = match listeners::listening_ports() {
            Ok(ports) => {
                self.listeners_failed = false;
                Some(ports)
            }
            Err(e) => {
                if !self.listeners_failed {
                    warn!(error = %e, "cannot read the TCP listeners (sock_diag): every port gets a socket lookup");
                }
                self.listeners_failed = true;
                None
            }
        };
        let desired =
            DesiredPolicy::build(&self.cfg, &local, &nat, ifaces).with_listeners(listeners.as_ref());
        desired.log_if_changed(&mut self.last_notes);
        desired
    }

    /// Waits until addresses or NAT rules changed (then call `desired()`), or returns a
    /// link event (then also re-check attachments). Cancel-safe, for `select!`.
    pub async fn changed(&mut self) -> Option<LinkEvent> {
        let nat_rx = self.nat.as_mut();
        let nat = async move {
            let alive = match nat_rx {
                Some(rx) => rx.changed().await.is_ok(),
                None => false,
            };
            if !alive {
                std::future::pending::<()>().await;
            }
        };
        let addresses = &mut self.addresses;
        tokio::select! {
            Ok(()) = addresses.snapshot.changed() => None,
            () = nat => None,
            Some(event) = addresses.link_events.recv() => Some(event),
            // Every watcher is gone (each logged why): only the poll interval is left.
            else => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{prefix::mapped, test_netns::TestNs};

    #[test]
    fn a_new_address_and_a_new_dnat_rule_wake_the_loop_and_show_in_the_policy() {
        let ns = TestNs::new("inp");
        let mut inputs = ns.run(|| {
            PolicyInputs::start(PolicyConfig { detect_nat: true, ..PolicyConfig::default() }, Vec::new())
                .expect("watchers")
        });
        let first = inputs.desired();
        assert!(first.local_addrs.contains(&mapped("127.0.0.1".parse().unwrap())));
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();

        ns.ip_in(&["addr", "add", "198.18.0.7/32", "dev", "lo"]);
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(3), inputs.changed()).await })
            .expect("woken by the address");
        let key = mapped("198.18.0.7".parse().unwrap());
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while !inputs.desired().local_addrs.contains(&key) {
            assert!(std::time::Instant::now() < deadline, "the new address never showed");
            std::thread::sleep(Duration::from_millis(20));
        }

        ns.nft(concat!(
            "table inet sdtest {\n",
            "  chain pre {\n",
            "    type nat hook prerouting priority dstnat;\n",
            "    tcp dport 8099 redirect to :80\n",
            "  }\n",
            "}\n",
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while inputs.desired().ports[8099] != detector_common::policy::PORT_KERNEL {
            assert!(std::time::Instant::now() < deadline, "the redirect never reached the policy");
            let _ =
                rt.block_on(async { tokio::time::timeout(Duration::from_secs(1), inputs.changed()).await });
        }
    }
}
