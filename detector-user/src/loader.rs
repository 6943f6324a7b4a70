//! Loads the embedded XDP object with the configured map sizes (its maps pinned, or the
//! pinned ones reused, when a maps directory is given), hands its config slot to the
//! control loop (which writes and re-checks it), and attaches it (driver mode first, skb
//! as fallback unless forced) as a bpf_link that is pinned, or switches a pinned link of
//! a previous run over to it in one step (BPF_LINK_UPDATE).

use std::path::{Path, PathBuf};

use aya::{
    maps::{Array, MapData},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
        Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use detector_common::{config::Config as KernelConfig, names};
use tracing::{info, warn};

use crate::{
    config::{AttachMode, Config},
    error::LoadError,
};

/// The XDP object, built by `cargo xtask build-ebpf` and embedded by build.rs.
pub(crate) static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/detector-ebpf.o"));

/// An attachment made by the agent, to undo on exit (or to leave, when pinned).
pub struct Attachment {
    pub iface: String,
    pub mode: &'static str,
    link: Link,
    /// A previous run's pinned link, switched over to this program.
    pub inherited: bool,
}

enum Link {
    /// Owned by the program: detached when the program is dropped (netlink-mode
    /// attachments, or no pin directory).
    Owned(XdpLinkId),
    /// A bpf_link pinned at `path`: attached until the pin is removed, whatever this
    /// process does.
    Pinned { link: FdLink, path: PathBuf },
    /// Only between taking a new link out of the program and pinning it.
    Detached,
}

impl Attachment {
    pub fn pinned(&self) -> bool {
        matches!(self.link, Link::Pinned { .. })
    }
}

/// The program's log reader: keep it alive (dropping it closes the log map) and flush it
/// when its fd is readable.
pub type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Loads and verifies the program; nothing is attached yet. The logger is `None` if the
/// object has no log map (the program then simply logs nothing).
/// With `maps_dir`, the maps of `names::PINNED_MAPS` are opened from there when pinned
/// (`pins::Pins::prepare_maps` removed them unless compatible) and pinned there otherwise.
pub fn load(cfg: &Config, maps_dir: Option<&Path>) -> Result<(Ebpf, Option<Logger>), LoadError> {
    check_capabilities()?;
    let maps = &cfg.file.maps;
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(names::MAP_SOURCES, maps.sources)
        .map_max_entries(names::MAP_PENDING, maps.pending)
        .map_max_entries(names::MAP_SKETCH, cfg.sketch_words())
        .map_max_entries(names::MAP_CLOSED_FILTER, cfg.closed_filter_entries());
    if let Some(dir) = maps_dir {
        for name in names::PINNED_MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    let mut ebpf = loader.load(OBJECT).map_err(|e| map_refused(e, cfg))?;
    // Before the program is loaded: the logger takes the log map out of the object.
    let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(logger) => Some(logger),
        Err(e) => {
            warn!(error = %e, "no log events from the XDP program");
            None
        }
    };
    let prog = program(&mut ebpf)?;
    prog.load().map_err(program_load_error)?;
    Ok((ebpf, logger))
}

/// A map the kernel would not create: for the maps whose size is configured, the error
/// names the key and its value (the kernel's limits depend on memory, so `validate` cannot
/// know them all).
fn map_refused(error: aya::EbpfError, cfg: &Config) -> LoadError {
    let aya::EbpfError::MapError(aya::maps::MapError::CreateError { name, io_error }) = &error else {
        return error.into();
    };
    let maps = &cfg.file.maps;
    let key = match name.as_str() {
        names::MAP_SOURCES => Some(("maps.sources", maps.sources)),
        names::MAP_PENDING => Some(("maps.pending", maps.pending)),
        names::MAP_SKETCH => Some(("maps.sketch_width", maps.sketch_width)),
        names::MAP_CLOSED_FILTER => Some(("maps.closed_filter_lines", maps.closed_filter_lines)),
        _ => None,
    };
    match key {
        Some((key, value)) => {
            LoadError::MapRefused { key, value, map: name.clone(), problem: io_error.to_string() }
        }
        None => error.into(),
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp, LoadError> {
    ebpf.program_mut(names::PROGRAM)
        .ok_or(LoadError::Missing("XDP program"))?
        .try_into()
        .map_err(|source| LoadError::Program { what: "the program is not XDP".into(), source })
}

/// The map `name`, taken out of the loaded object as the type its user wants (each part of
/// the agent owns the maps it reads and writes).
pub fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, LoadError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(LoadError::Missing(name))?;
    T::try_from(map).map_err(|source| LoadError::Map { map: name, source })
}

/// The program's config slot, taken out of the object so the control loop can own it.
pub fn config_map(ebpf: &mut Ebpf) -> Result<Array<MapData, KernelConfig>, LoadError> {
    take_map(ebpf, names::MAP_CONFIG)
}

/// Attaches to `iface`, pinning the link at `pin` if given. A link already pinned there (a
/// previous run's) is switched over to this program atomically: the old program answers
/// every packet until the new one does. In auto mode a driver that refuses native XDP gets
/// generic mode.
pub fn attach(
    ebpf: &mut Ebpf,
    iface: &str,
    mode: AttachMode,
    pin: Option<&Path>,
) -> Result<Attachment, LoadError> {
    let prog = program(ebpf)?;
    if let Some(path) = pin.filter(|p| std::fs::symlink_metadata(p).is_ok()) {
        match update_pinned(prog, path) {
            Ok(link) => {
                // XDP_ATTACHED_SKB (if_link.h): the old link's mode is kept by the update.
                let mode = if xdp_attach_mode(iface) == Some(2) { "skb" } else { "driver" };
                info!(iface, mode, pin = %path.display(), "XDP link of the previous run switched to this program");
                return Ok(Attachment { iface: iface.to_owned(), mode, link, inherited: true });
            }
            Err(e) => {
                // E.g. the interface was deleted and made again: that link is defunct.
                warn!(iface, error = %e, "cannot switch the pinned link; removing it and attaching anew");
                if let Err(e) = std::fs::remove_file(path) {
                    warn!(iface, error = %e, "cannot remove the stale link pin");
                }
            }
        }
    }
    let mut attached = attach_new(prog, iface, mode)?;
    if let Some(path) = pin {
        let Link::Owned(id) = std::mem::replace(&mut attached.link, Link::Detached) else {
            unreachable!("attach_new makes owned links")
        };
        let owned = prog
            .take_link(id)
            .map_err(|source| LoadError::Program { what: format!("taking the link of {iface}"), source })?;
        match FdLink::try_from(owned) {
            Ok(fd_link) => {
                let pinned = fd_link.pin(path).map_err(|e| LoadError::Pin { path: path.to_owned(), source: e })?;
                attached.link = Link::Pinned { link: FdLink::from(pinned), path: path.to_owned() };
            }
            // aya falls back to a netlink attachment only where the kernel has no XDP
            // links (before 5.9): such an attachment cannot be pinned, and is already
            // out of aya's hands here.
            Err(e) => return Err(LoadError::Link { what: format!("{iface} was attached in netlink mode, which cannot be pinned (kernel without XDP links?): detach it with `ip link set dev {iface} xdp off` and set pin_dir to a directory outside bpffs to run without pinning"), source: e }),
        }
    }
    Ok(attached)
}

/// Switches the link pinned at `path` to `prog` (BPF_LINK_UPDATE).
fn update_pinned(prog: &mut Xdp, path: &Path) -> Result<Link, LoadError> {
    let what = |w: &str| format!("{w} {}", path.display());
    let pinned = PinnedLink::from_pin(path)
        .map_err(|e| LoadError::Link { what: what("opening the pinned link"), source: e })?;
    let xdp_link = XdpLink::try_from(FdLink::from(pinned))
        .map_err(|e| LoadError::Link { what: what("not an XDP link:"), source: e })?;
    let id = prog
        .attach_to_link(xdp_link)
        .map_err(|source| LoadError::Program { what: what("updating the link"), source })?;
    let owned =
        prog.take_link(id).map_err(|source| LoadError::Program { what: what("taking the link"), source })?;
    let link = FdLink::try_from(owned).map_err(|e| LoadError::Link { what: what("the link"), source: e })?;
    Ok(Link::Pinned { link, path: path.to_owned() })
}

fn attach_new(prog: &mut Xdp, iface: &str, mode: AttachMode) -> Result<Attachment, LoadError> {
    let try_mode = |prog: &mut Xdp, xdp_mode: XdpMode, name: &'static str, forced: bool| {
        prog.attach(iface, xdp_mode)
            .map(|link| Attachment {
                iface: iface.to_owned(),
                mode: name,
                link: Link::Owned(link),
                inherited: false,
            })
            .map_err(|source| LoadError::Attach { iface: iface.to_owned(), mode: name, forced, source })
    };
    let attached = match mode {
        AttachMode::Driver => {
            try_mode(prog, XdpMode::Driver, "driver", true).map_err(|e| occupied(iface, e))?
        }
        AttachMode::Skb => try_mode(prog, XdpMode::Skb, "skb", true).map_err(|e| occupied(iface, e))?,
        AttachMode::Auto => match try_mode(prog, XdpMode::Driver, "driver", false) {
            Ok(a) => a,
            // Generic mode would be refused as well: name the program in the way.
            Err(e) if other_program(iface).is_some() => return Err(occupied(iface, e)),
            Err(e) => {
                warn!(iface, error = %e, "native XDP refused; falling back to generic (skb) mode");
                try_mode(prog, XdpMode::Skb, "skb", false).map_err(|e| occupied(iface, e))?
            }
        },
    };
    info!(iface, mode = attached.mode, "XDP program attached");
    Ok(attached)
}

/// Undoes one `attach`: detaches, and removes the link's pin.
pub fn detach(ebpf: &mut Ebpf, attachment: Attachment) -> Result<(), LoadError> {
    match attachment.link {
        Link::Owned(id) => program(ebpf)?.detach(id).map_err(|source| LoadError::Program {
            what: format!("detaching from {}", attachment.iface),
            source,
        }),
        Link::Detached => Ok(()),
        Link::Pinned { link, path } => {
            let removed = std::fs::remove_file(&path);
            // Closing the last descriptor of an unpinned link detaches it.
            drop(link);
            match removed {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(LoadError::Unpin { path, source: e })
                }
                _ => Ok(()),
            }
        }
    }
}

/// Lets go of one attachment: a pinned one stays attached (the next start adopts it), an
/// owned one is detached. Returns whether it stays.
pub fn release(ebpf: &mut Ebpf, attachment: Attachment) -> Result<bool, LoadError> {
    if attachment.pinned() {
        return Ok(true);
    }
    detach(ebpf, attachment).map(|()| false)
}

/// The capabilities loading and attaching needs, by number (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The capabilities missing from the effective set `effective` (bit n = capability n),
/// by name. CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON (as on kernels before
/// 5.8, which have neither); attaching XDP always needs CAP_NET_ADMIN.
pub fn missing_capabilities(effective: u64) -> Vec<&'static str> {
    let has = |cap: u32| effective & (1 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_SYS_ADMIN) {
        // Verifying the program needs both: CAP_PERFMON for its pointer arithmetic and
        // speculation checks, CAP_BPF for the maps and the load itself.
        missing.extend(
            [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
                .iter()
                .filter(|(c, _)| !has(*c))
                .map(|(_, n)| *n),
        );
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    missing
}

/// The effective capability set of this thread (capget).
fn effective_capabilities() -> std::io::Result<u64> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    /// _LINUX_CAPABILITY_VERSION_3: 64 bits, as two `Data`.
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header { version: VERSION_3, pid: 0 };
    let mut data = [Data::default(); 2];
    // SAFETY: capget with a v3 header writes two `Data` to the pointer it is given.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(u64::from(data[1].effective) << 32 | u64::from(data[0].effective))
}

/// Refuses to start without the capabilities the kernel would refuse us for, naming them.
fn check_capabilities() -> Result<(), LoadError> {
    match effective_capabilities() {
        Ok(effective) => {
            let missing = missing_capabilities(effective);
            if missing.is_empty() {
                Ok(())
            } else {
                Err(LoadError::Capabilities { missing: missing.join(", ") })
            }
        }
        Err(e) => {
            // Let the kernel decide; its error is less precise but still an error.
            warn!(error = %e, "cannot read this process's capabilities");
            Ok(())
        }
    }
}

/// How many lines of the verifier's log an error carries: the last ones say what failed.
const VERIFIER_LOG_LINES: usize = 5;

/// The last `n` non-empty lines of `log`, joined by newlines.
pub fn log_tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A failed load; a verifier rejection keeps only the end of its log.
fn program_load_error(source: aya::programs::ProgramError) -> LoadError {
    match source {
        aya::programs::ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            match crate::kernel_features::missing_helper(&log) {
                Some(missing) => LoadError::KernelTooOld { missing },
                None => LoadError::Verifier { io_error, tail: log_tail(&log, VERIFIER_LOG_LINES) },
            }
        }
        source => LoadError::Program { what: "verifying the XDP program".into(), source },
    }
}

/// An attach error, or, when another XDP program holds `iface`, that program by id and name.
fn occupied(iface: &str, error: LoadError) -> LoadError {
    match other_program(iface) {
        Some((id, name)) => {
            LoadError::Occupied { iface: iface.to_owned(), id, name, source: Box::new(error) }
        }
        None => error,
    }
}

/// The XDP program attached to `iface` (id, name), if any.
fn other_program(iface: &str) -> Option<(u32, String)> {
    let id = xdp_program_id(iface)
        .map_err(|e| warn!(iface, error = %e, "cannot ask rtnetlink for XDP"))
        .ok()??;
    let name = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    Some((id, name))
}

/// The id of the XDP program attached to `iface` (IFLA_XDP_PROG_ID), from rtnetlink.
pub fn xdp_program_id(iface: &str) -> std::io::Result<Option<u32>> {
    use netlink_packet_route::link::LinkXdp;
    Ok(xdp_attributes(iface)?.iter().find_map(|x| match x {
        LinkXdp::ProgId(id) if *id != 0 => Some(*id),
        _ => None,
    }))
}

/// IFLA_XDP_ATTACHED of `iface` (1 driver, 2 skb, 3 hardware), if something is attached.
fn xdp_attach_mode(iface: &str) -> Option<u8> {
    use netlink_packet_route::link::LinkXdp;
    xdp_attributes(iface).ok()?.iter().find_map(|x| match x {
        LinkXdp::Attached(netlink_packet_route::link::XdpAttached::Driver) => Some(1),
        LinkXdp::Attached(netlink_packet_route::link::XdpAttached::SocketBuffer) => Some(2),
        LinkXdp::Attached(netlink_packet_route::link::XdpAttached::Hardware) => Some(3),
        _ => None,
    })
}

/// The IFLA_XDP attributes of `iface`, from rtnetlink.
fn xdp_attributes(iface: &str) -> std::io::Result<Vec<netlink_packet_route::link::LinkXdp>> {
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
    use netlink_packet_route::{
        link::{LinkAttribute, LinkMessage},
        RouteNetlinkMessage,
    };
    use netlink_sys::{protocols::NETLINK_ROUTE, Socket};

    let c_name = std::ffi::CString::new(iface).map_err(std::io::Error::other)?;
    // SAFETY: a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    let mut request = LinkMessage::default();
    request.header.index = index;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = 1;
    let mut msg =
        NetlinkMessage::new(header, NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(request)));
    msg.finalize();
    let mut bytes = vec![0; msg.buffer_len()];
    msg.serialize(&mut bytes);
    socket.send(&bytes, 0)?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = socket.recv(&mut &mut buf[..], 0)?;
    let reply =
        NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..n]).map_err(std::io::Error::other)?;
    let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) = reply.payload else {
        return Err(std::io::Error::other(format!("rtnetlink answered {:?}", reply.payload)));
    };
    Ok(link
        .attributes
        .into_iter()
        .find_map(|a| match a {
            LinkAttribute::Xdp(xdp) => Some(xdp),
            _ => None,
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(list: &[u32]) -> u64 {
        list.iter().fold(0, |set, c| set | 1 << c)
    }

    #[test]
    fn a_map_the_kernel_refuses_names_its_configuration_key() {
        let cfg = crate::config::Config { file: toml::from_str("[maps]\nsources = 16777216\n").unwrap() };
        let refused = |name: &str| {
            let io_error = std::io::Error::from_raw_os_error(libc::ENOMEM);
            map_refused(
                aya::EbpfError::MapError(aya::maps::MapError::CreateError { name: name.into(), io_error }),
                &cfg,
            )
        };
        let text = refused(names::MAP_SOURCES).to_string();
        assert!(
            text.starts_with("maps.sources = 16777216: the kernel refused to create map SOURCES"),
            "{text}"
        );
        assert!(text.contains("Cannot allocate memory"), "{text}");
        assert!(matches!(refused(names::MAP_PENDING), LoadError::MapRefused { key: "maps.pending", .. }));
        // A map whose size is not configured keeps aya's own error.
        assert!(matches!(refused(names::MAP_CONFIG), LoadError::Object(_)));
    }

    #[test]
    fn the_missing_capability_is_named() {
        assert_eq!(missing_capabilities(caps(&[CAP_BPF, CAP_NET_ADMIN])), ["CAP_PERFMON"]);
        assert_eq!(missing_capabilities(caps(&[CAP_BPF, CAP_PERFMON])), ["CAP_NET_ADMIN"]);
        assert_eq!(missing_capabilities(caps(&[CAP_NET_ADMIN])), ["CAP_BPF", "CAP_PERFMON"]);
        assert!(missing_capabilities(caps(&[CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN])).is_empty());
        // CAP_SYS_ADMIN implies the BPF ones, not CAP_NET_ADMIN.
        assert!(missing_capabilities(caps(&[CAP_SYS_ADMIN, CAP_NET_ADMIN])).is_empty());
        assert_eq!(missing_capabilities(caps(&[CAP_SYS_ADMIN])), ["CAP_NET_ADMIN"]);
        assert_eq!(missing_capabilities(0), ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]);
    }

    #[test]
    fn a_verifier_rejection_carries_the_end_of_its_log() {
        let mut log: String = (0..400)
            .fold(String::new(), |log, i| log + &format!("{i}: (bf) r{} = r1 ; R1_w=ctx()\n", i % 10));
        log.push_str("invalid access to packet, off=14 size=1, R2(id=0,off=14,r=0)\n");
        log.push_str("R2 offset is outside of the packet\n");
        log.push_str("processed 400 insns (limit 1000000)\n\n");
        let source = aya::programs::ProgramError::LoadError {
            io_error: std::io::Error::from_raw_os_error(libc::EACCES),
            verifier_log: aya_obj::VerifierLog::new(log),
        };
        let message = program_load_error(source).to_string();
        println!("{message}");
        assert!(message.len() < 600, "{} bytes: {message}", message.len());
        assert!(message.contains("R2 offset is outside of the packet"), "{message}");
        assert!(message.contains("processed 400 insns"), "{message}");
        assert!(!message.contains("0: (bf)"), "{message}");
    }

    #[test]
    fn the_embedded_object_holds_the_detector_alone() {
        // The bench's baselines and the fixtures' cookie probe are built into the test
        // object only (detector-ebpf's `test-programs` feature): here they would ship in
        // the package, dead code an operator could attach and a reviewer must read.
        let object = aya_obj::Object::parse(OBJECT).expect("the embedded object parses");
        let mut programs: Vec<&str> = object.programs.keys().map(String::as_str).collect();
        programs.sort_unstable();
        assert_eq!(programs, [names::PROGRAM], "programs in the object the agent embeds");
    }
}
