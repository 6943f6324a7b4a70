//! The program's attachments, owned in one place: made at start (pinned links of a
//! previous run switched over, see `loader::attach`), followed through link events while
//! the agent runs, and at exit left pinned (the next start adopts them) or undone.
//!
//! An attached interface that goes away (deleted, or its namespace gone) takes the
//! kernel's attachment with it: `syndetector_interface_attached` drops to 0, a warning is
//! logged and `/healthz` answers 503 naming the interface. When an interface of that name
//! appears again the program is attached to it in the configured mode, and all of that
//! is undone.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
};

use aya::Ebpf;
use tracing::{error, info, warn};

use crate::{
    config::AttachMode,
    error::LoadError,
    http::Health,
    loader::{self, Attachment},
    metrics::Metrics,
    pins::Pins,
    policy::addresses::LinkEvent,
};

/// Shared by `main` (attach at start, detach at exit) and the link-event hook.
#[derive(Clone)]
pub struct Attachments(Arc<Mutex<Inner>>);

struct Inner {
    ebpf: Ebpf,
    mode: AttachMode,
    metrics: Arc<Metrics>,
    health: Health,
    /// Where links are pinned; `None`: not pinned (detached at exit).
    pins: Option<Arc<Pins>>,
    /// Configured interface → its attachment; `None` while the interface is gone.
    by_iface: BTreeMap<String, Option<Attachment>>,
}

impl Attachments {
    /// Takes the loaded program; nothing is attached yet.
    pub fn new(
        ebpf: Ebpf,
        mode: AttachMode,
        pins: Option<Arc<Pins>>,
        metrics: Arc<Metrics>,
        health: Health,
    ) -> Self {
        Self(Arc::new(Mutex::new(Inner { ebpf, mode, metrics, health, pins, by_iface: BTreeMap::new() })))
    }

    /// Attaches to every interface; on the first failure, detaches what this run attached
    /// (a previous run's pinned links that were switched over stay: they protect on).
    pub fn attach_all(&self, interfaces: &[String]) -> Result<(), LoadError> {
        let mut inner = self.lock();
        for iface in interfaces {
            if let Err(e) = inner.attach(iface) {
                let inner = &mut *inner;
                for (iface, slot) in std::mem::take(&mut inner.by_iface) {
                    let Some(a) = slot else { continue };
                    inner.metrics.interface_attached.with_label_values(&[&a.iface, a.mode]).set(0);
                    let undone = if a.inherited {
                        loader::release(&mut inner.ebpf, a).map(|_| ())
                    } else {
                        loader::detach(&mut inner.ebpf, a)
                    };
                    if let Err(e) = undone {
                        warn!(iface, error = %e, "detaching failed");
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Detaches everything and removes the link pins; failures are logged, the rest still
    /// detached.
    pub fn detach_all(&self) {
        self.lock().detach_all();
    }

    /// Lets go of everything at a stop that keeps protecting: pinned links stay attached,
    /// others are detached. Returns whether every attachment stays.
    pub fn release_all(&self) -> bool {
        let mut inner = self.lock();
        let mut all_kept = true;
        for (iface, slot) in std::mem::take(&mut inner.by_iface) {
            let Some(a) = slot else { continue };
            match loader::release(&mut inner.ebpf, a) {
                Ok(true) => info!(iface, "XDP program left attached (pinned link): it keeps protecting"),
                Ok(false) => {
                    all_kept = false;
                    info!(iface, "XDP program detached (not pinned)");
                }
                Err(e) => {
                    all_kept = false;
                    warn!(iface, error = %e, "detaching failed");
                }
            }
        }
        all_kept
    }

    /// The hook for `policy::feed::run`: follows attached interfaces going and coming back.
    pub fn on_link_event(&self, event: &LinkEvent) {
        let mut inner = self.lock();
        match event {
            LinkEvent::Gone { name, .. } => inner.gone(name),
            LinkEvent::Changed { name, .. } => {
                if matches!(inner.by_iface.get(name), Some(None)) {
                    inner.returned(name);
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Each change leaves the map and the metrics consistent before the next can panic.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Inner {
    fn attach(&mut self, iface: &str) -> Result<(), LoadError> {
        let pin = match &self.pins {
            Some(pins) => Some(pins.iface_dir(iface).map(|_| pins.link_path(iface))?),
            None => None,
        };
        let a = loader::attach(&mut self.ebpf, iface, self.mode, pin.as_deref())?;
        self.metrics.interface_attached.with_label_values(&[&a.iface, a.mode]).set(1);
        self.health.clear_problem(iface);
        self.by_iface.insert(iface.to_owned(), Some(a));
        Ok(())
    }

    fn gone(&mut self, iface: &str) {
        let Some(slot) = self.by_iface.get_mut(iface) else { return };
        let Some(a) = slot.take() else { return };
        warn!(
            event = "interface_gone",
            iface, "an attached interface went away; XDP is off there until it returns"
        );
        self.metrics.interface_attached.with_label_values(&[&a.iface, a.mode]).set(0);
        self.health.set_problem(iface, format!("{iface}: interface gone, XDP program not attached"));
        // The kernel removed the attachment with the device; this releases our handle and
        // the defunct link's pin.
        let _ = loader::detach(&mut self.ebpf, a);
    }

    fn returned(&mut self, iface: &str) {
        match self.attach(iface) {
            Ok(()) => info!(
                event = "interface_reattached",
                iface, "the interface is back; XDP program attached again"
            ),
            Err(e) => {
                error!(event = "reattach_failed", iface, error = %e, "the interface is back but attaching failed");
                self.health.set_problem(iface, format!("{iface}: back, but attaching failed: {e}"));
            }
        }
    }

    fn detach_all(&mut self) {
        for (iface, slot) in std::mem::take(&mut self.by_iface) {
            if let Some(a) = slot {
                self.metrics.interface_attached.with_label_values(&[&a.iface, a.mode]).set(0);
                match loader::detach(&mut self.ebpf, a) {
                    Ok(()) => info!(iface, "XDP program detached"),
                    Err(e) => warn!(iface, error = %e, "detaching failed"),
                }
            }
        }
    }
}
