//! Keeps the desired cookie policy current for the control loop, and the control loop's
//! step that brings the policy maps to it.
//!
//! The watchers are event-driven (rtnetlink, nftables netlink); a task rebuilds the
//! desired policy on each event, and at least once per poll interval because the VLAN
//! check reads ethtool state, which sends no event. When the policy changed it wakes the
//! control thread, which reconciles the maps at once; every poll reconciles them anyway
//! (level-triggered: a map changed behind our back is repaired).

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tracing::{info, warn};

use crate::{
    control::reconcile::Reconciler,
    error::NetlinkError,
    metrics::WHAT_POLICY,
    policy::{addresses::LinkEvent, inputs::PolicyInputs, maps::PolicyMaps, DesiredPolicy, PolicyConfig},
};

/// The latest desired policy, written by the feed task, read by the control thread.
pub type SharedPolicy = Arc<Mutex<DesiredPolicy>>;

fn lock(shared: &SharedPolicy) -> MutexGuard<'_, DesiredPolicy> {
    // A panic while holding it left a whole value behind (replaced, never mutated in place).
    shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts the watchers in the agent's network namespace and builds the first desired
/// policy, so the maps are filled before anything is attached.
pub fn start(
    cfg: PolicyConfig,
    attached: Vec<(u32, String)>,
) -> Result<(PolicyInputs, SharedPolicy), NetlinkError> {
    let mut inputs = PolicyInputs::start(cfg, attached)?;
    let first = inputs.desired();
    Ok((inputs, Arc::new(Mutex::new(first))))
}

/// Rebuilds the desired policy on every host change (and every `every`), publishes it
/// and calls `wake` when it changed. Returns when `wake` says the control loop is gone.
/// Every link event is also handed to `on_link` (the attachments follow interfaces).
pub async fn run(
    mut inputs: PolicyInputs,
    shared: SharedPolicy,
    every: Duration,
    wake: impl Fn() -> bool,
    on_link: impl Fn(&LinkEvent),
) {
    loop {
        let event = tokio::select! {
            event = inputs.changed() => event,
            () = tokio::time::sleep(every) => None,
        };
        if let Some(event) = &event {
            on_link(event);
        }
        match event {
            Some(LinkEvent::Gone { ifindex, name }) => {
                warn!(event = "link_gone", ifindex, iface = name, "an interface went away");
            }
            Some(LinkEvent::Changed { ifindex, name, up }) => {
                info!(event = "link_changed", ifindex, iface = name, up, "an interface changed");
                // An attached interface re-created under its name has a new ifindex: the
                // VLAN check (keyed by ifindex in IFACES) follows it.
                inputs.follow_link(ifindex, &name);
            }
            None => {}
        }
        let desired = inputs.desired();
        let changed = {
            let mut current = lock(&shared);
            let changed = *current != desired;
            if changed {
                *current = desired;
            }
            changed
        };
        if changed && !wake() {
            return;
        }
    }
}

/// The control loop's step for the policy maps.
pub struct PolicyStep {
    maps: PolicyMaps,
    desired: SharedPolicy,
    /// `DesiredPolicy::empty_map_flags` of the policy the last reconcile applied: what the
    /// maps are known to hold nothing of. 0 until a reconcile succeeds, and after one fails.
    applied_empty: u32,
}

impl PolicyStep {
    pub fn new(maps: PolicyMaps, desired: SharedPolicy) -> Self {
        Self { maps, desired, applied_empty: 0 }
    }
}

impl Reconciler for PolicyStep {
    fn what(&self) -> &'static str {
        WHAT_POLICY
    }

    /// A `FLAG_NO_*` bit (skip a lookup) only when both the desired policy and the one the
    /// maps hold allow it. The control loop writes the config before this step reconciles:
    /// a kernel destination being added is looked up from that write on, and one being
    /// removed stays looked up until the map is empty. (A policy published between the two
    /// wakes the loop again at once.)
    fn program_flags(&self) -> u32 {
        let desired = lock(&self.desired);
        desired.config_flags() | (desired.empty_map_flags() & self.applied_empty)
    }

    fn reconcile(&mut self) -> Result<(), String> {
        // A copy, so the feed task never waits on a map walk.
        let desired = lock(&self.desired).clone();
        self.applied_empty = 0; // unknown until this pass succeeds
        let diff = self.maps.reconcile(&desired).map_err(|e| e.to_string())?;
        self.applied_empty = desired.empty_map_flags();
        if !diff.is_empty() {
            info!(event = "policy_applied", ?diff, "policy maps brought to the desired policy");
        }
        Ok(())
    }
}
