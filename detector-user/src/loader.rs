//! Loads the embedded XDP object with the configured map sizes, hands its config slot to
//! the control loop (which writes and re-checks it), and attaches it (driver mode first,
//! skb as fallback unless forced).

use aya::{
    maps::{Array, MapData},
    programs::{xdp::XdpLinkId, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use detector_common::{config::Config as KernelConfig, names};
use tracing::{info, warn};

use crate::{
    config::{AttachMode, Config},
    error::LoadError,
};

/// The XDP object, built by `cargo xtask build-ebpf` and embedded by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/detector-ebpf.o"));

/// An attachment made by the agent, to undo on exit.
pub struct Attachment {
    pub iface: String,
    pub mode: &'static str,
    link: XdpLinkId,
}

/// The program's log reader: keep it alive (dropping it closes the log map) and flush it
/// when its fd is readable.
pub type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Loads and verifies the program; nothing is attached yet. The logger is `None` if the
/// object has no log map (the program then simply logs nothing).
pub fn load(cfg: &Config) -> Result<(Ebpf, Option<Logger>), LoadError> {
    let maps = &cfg.file.maps;
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(names::MAP_SOURCES, maps.sources)
        .map_max_entries(names::MAP_PENDING, maps.pending)
        .map_max_entries(names::MAP_SKETCH, cfg.sketch_cells())
        .load(OBJECT)?;
    // Before the program is loaded: the logger takes the log map out of the object.
    let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(logger) => Some(logger),
        Err(e) => {
            warn!(error = %e, "no log events from the XDP program");
            None
        }
    };
    let prog = program(&mut ebpf)?;
    prog.load().map_err(|source| LoadError::Program { what: "verifying the XDP program".into(), source })?;
    Ok((ebpf, logger))
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp, LoadError> {
    ebpf.program_mut(names::PROGRAM)
        .ok_or(LoadError::Missing("XDP program"))?
        .try_into()
        .map_err(|source| LoadError::Program { what: "the program is not XDP".into(), source })
}

/// The program's config slot, taken out of the object so the control loop can own it.
pub fn config_map(ebpf: &mut Ebpf) -> Result<Array<MapData, KernelConfig>, LoadError> {
    let map = ebpf.take_map(names::MAP_CONFIG).ok_or(LoadError::Missing("CONFIG map"))?;
    Array::try_from(map).map_err(|source| LoadError::Map { map: names::MAP_CONFIG, source })
}

/// Attaches to `iface`. In auto mode a driver that refuses native XDP gets generic mode.
pub fn attach(ebpf: &mut Ebpf, iface: &str, mode: AttachMode) -> Result<Attachment, LoadError> {
    let prog = program(ebpf)?;
    let try_mode = |prog: &mut Xdp, xdp_mode: XdpMode, name: &'static str, forced: bool| {
        prog.attach(iface, xdp_mode)
            .map(|link| Attachment { iface: iface.to_owned(), mode: name, link })
            .map_err(|source| LoadError::Attach { iface: iface.to_owned(), mode: name, forced, source })
    };
    let attached = match mode {
        AttachMode::Driver => try_mode(prog, XdpMode::Driver, "driver", true)?,
        AttachMode::Skb => try_mode(prog, XdpMode::Skb, "skb", true)?,
        AttachMode::Auto => match try_mode(prog, XdpMode::Driver, "driver", false) {
            Ok(a) => a,
            Err(e) => {
                warn!(iface, error = %e, "native XDP refused; falling back to generic (skb) mode");
                try_mode(prog, XdpMode::Skb, "skb", false)?
            }
        },
    };
    info!(iface, mode = attached.mode, "XDP program attached");
    Ok(attached)
}

/// Detaches everything `attach` made; failures are logged, the rest still detached.
pub fn detach_all(ebpf: &mut Ebpf, attachments: Vec<Attachment>) {
    let Ok(prog) = program(ebpf) else { return };
    for a in attachments {
        match prog.detach(a.link) {
            Ok(()) => info!(iface = a.iface, "XDP program detached"),
            Err(e) => warn!(iface = a.iface, error = %e, "detaching failed"),
        }
    }
}
