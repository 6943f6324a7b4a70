//! Reads pcap and pcapng files into (capture time in ns since the epoch, Ethernet frame).
//!
//! The crate is `pcap-file` 2: one small pure-Rust crate (no libpcap) for both formats,
//! with a streaming reader that never loads the whole file, and its stable 2.x API (3.x is
//! still a release candidate). Two things it leaves to us: pcapng timestamps come out as
//! raw units (it ignores `if_tsresol`), so they are rescaled here; and it reports a file
//! cut short as an I/O `UnexpectedEof`, which is named "truncated" here.
//!
//! Frames of Linux cooked captures (SLL, SLL2) and raw IP are given a synthetic Ethernet
//! header, so the XDP program's parser (which starts at Ethernet) reads every link type.

use std::{fs::File, io::Read, path::Path};

use pcap_file::{
    pcap::PcapReader,
    pcapng::{blocks::interface_description::InterfaceDescriptionOption, Block, PcapNgReader},
    DataLink, PcapError,
};

use crate::analyze::model::Model;

const PCAP_MAGICS: [[u8; 4]; 4] =
    [[0xd4, 0xc3, 0xb2, 0xa1], [0xa1, 0xb2, 0xc3, 0xd4], [0x4d, 0x3c, 0xb2, 0xa1], [0xa1, 0xb2, 0x3c, 0x4d]];
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// Why a capture could not be read. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot open {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("{path} is not a pcap or pcapng capture (it starts with {magic:02x?})")]
    NotACapture { path: String, magic: Vec<u8> },
    #[error("{path} is truncated: it ends inside {what} after {frames} complete frames")]
    Truncated { path: String, what: &'static str, frames: u64 },
    #[error("{path}: unsupported link type {link:?} (supported: Ethernet, Linux cooked SLL/SLL2, raw IP)")]
    UnsupportedLinkType { path: String, link: DataLink },
    #[error("{path}: malformed capture after {frames} frames: {message}")]
    Malformed { path: String, frames: u64, message: String },
}

/// The format and link type, for the report's header.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CaptureInfo {
    pub format: &'static str,
    pub link_types: Vec<String>,
}

/// Reads every frame of `path` into `model`, in file order.
pub fn read_into(path: &Path, model: &mut Model) -> Result<CaptureInfo, CaptureError> {
    let name = path.display().to_string();
    let mut file = File::open(path).map_err(|source| CaptureError::Open { path: name.clone(), source })?;
    let mut magic = Vec::with_capacity(4);
    (&mut file)
        .take(4)
        .read_to_end(&mut magic)
        .map_err(|source| CaptureError::Open { path: name.clone(), source })?;
    let rest = std::io::Cursor::new(magic.clone()).chain(file);
    let ctx = Ctx { path: name.clone(), frames: 0 };
    if PCAP_MAGICS.iter().any(|m| m[..] == magic[..]) {
        read_pcap(rest, ctx, model)
    } else if magic == PCAPNG_MAGIC {
        read_pcapng(rest, ctx, model)
    } else {
        Err(CaptureError::NotACapture { path: name, magic })
    }
}

struct Ctx {
    path: String,
    frames: u64,
}

impl Ctx {
    fn error(&self, e: PcapError, what: &'static str) -> CaptureError {
        match e {
            PcapError::IncompleteBuffer => {
                CaptureError::Truncated { path: self.path.clone(), what, frames: self.frames }
            }
            PcapError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                CaptureError::Truncated { path: self.path.clone(), what, frames: self.frames }
            }
            other => CaptureError::Malformed {
                path: self.path.clone(),
                frames: self.frames,
                message: other.to_string(),
            },
        }
    }

    fn unsupported(&self, link: DataLink) -> CaptureError {
        CaptureError::UnsupportedLinkType { path: self.path.clone(), link }
    }
}

fn read_pcap(input: impl Read, mut ctx: Ctx, model: &mut Model) -> Result<CaptureInfo, CaptureError> {
    let mut reader = PcapReader::new(input).map_err(|e| ctx.error(e, "the file header"))?;
    let link = reader.header().datalink;
    if !supported(link) {
        return Err(ctx.unsupported(link));
    }
    while let Some(packet) = reader.next_packet() {
        let packet = packet.map_err(|e| ctx.error(e, "a packet record"))?;
        let ns = u64::try_from(packet.timestamp.as_nanos()).unwrap_or(u64::MAX);
        if let Some(frame) = to_ethernet(link, &packet.data) {
            model.feed(ns, &frame);
        } else {
            model.feed_unreadable(ns);
        }
        ctx.frames += 1;
    }
    Ok(CaptureInfo { format: "pcap", link_types: vec![link_name(link)] })
}

fn read_pcapng(input: impl Read, mut ctx: Ctx, model: &mut Model) -> Result<CaptureInfo, CaptureError> {
    let mut reader = PcapNgReader::new(input).map_err(|e| ctx.error(e, "the section header"))?;
    let mut link_types = Vec::new();
    while let Some(block) = reader.next_block() {
        let block = block.map_err(|e| ctx.error(e, "a block"))?;
        let (interface, raw_ts, data) = match block {
            Block::InterfaceDescription(idb) => {
                if !supported(idb.linktype) {
                    return Err(ctx.unsupported(idb.linktype));
                }
                let name = link_name(idb.linktype);
                if !link_types.contains(&name) {
                    link_types.push(name);
                }
                continue;
            }
            Block::EnhancedPacket(epb) => (epb.interface_id, epb.timestamp.as_nanos(), epb.data.into_owned()),
            // No timestamp in a simple packet block; it belongs to interface 0.
            Block::SimplePacket(spb) => (0, 0, spb.data.into_owned()),
            _ => continue,
        };
        let Some(idb) = reader.interfaces().get(interface as usize) else {
            return Err(CaptureError::Malformed {
                path: ctx.path.clone(),
                frames: ctx.frames,
                message: format!("a packet names interface {interface}, which is not described"),
            });
        };
        let ns = to_ns(raw_ts, tsresol(&idb.options));
        if let Some(frame) = to_ethernet(idb.linktype, &data) {
            model.feed(ns, &frame);
        } else {
            model.feed_unreadable(ns);
        }
        ctx.frames += 1;
    }
    Ok(CaptureInfo { format: "pcapng", link_types })
}

/// The interface's `if_tsresol`; 6 (microseconds) when absent, as pcapng specifies.
fn tsresol(options: &[InterfaceDescriptionOption]) -> u8 {
    options
        .iter()
        .find_map(|o| match o {
            InterfaceDescriptionOption::IfTsResol(r) => Some(*r),
            _ => None,
        })
        .unwrap_or(6)
}

/// Raw pcapng timestamp units to ns: `resol` is 10^-n seconds, or 2^-n with the top bit.
fn to_ns(units: u128, resol: u8) -> u64 {
    let ns = if resol & 0x80 != 0 {
        let shift = u32::from(resol & 0x7f);
        (units * 1_000_000_000).checked_shr(shift).unwrap_or(0)
    } else if resol <= 9 {
        units * 10u128.pow(9 - u32::from(resol))
    } else {
        units / 10u128.pow(u32::from(resol.min(38)) - 9)
    };
    u64::try_from(ns).unwrap_or(u64::MAX)
}

fn supported(link: DataLink) -> bool {
    matches!(
        link,
        DataLink::ETHERNET
            | DataLink::LINUX_SLL
            | DataLink::LINUX_SLL2
            | DataLink::RAW
            | DataLink::IPV4
            | DataLink::IPV6
    )
}

fn link_name(link: DataLink) -> String {
    match link {
        DataLink::ETHERNET => "Ethernet".into(),
        DataLink::LINUX_SLL => "Linux cooked (SLL)".into(),
        DataLink::LINUX_SLL2 => "Linux cooked (SLL2)".into(),
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => "raw IP".into(),
        other => format!("{other:?}"),
    }
}

/// The frame as the XDP program would see it on an Ethernet interface; `None` when the
/// link-layer header is cut short.
#[must_use]
pub fn to_ethernet(link: DataLink, data: &[u8]) -> Option<Vec<u8>> {
    let (ethertype, payload) = match link {
        DataLink::ETHERNET => return Some(data.to_vec()),
        // SLL: packet type, ARPHRD, address length, 8 address bytes, then the protocol.
        DataLink::LINUX_SLL => (data.get(14..16)?.try_into().ok()?, data.get(16..)?),
        // SLL2: the protocol first, then 18 more bytes of header.
        DataLink::LINUX_SLL2 => (data.get(0..2)?.try_into().ok()?, data.get(20..)?),
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => match data.first()? >> 4 {
            4 => (0x0800u16.to_be_bytes(), data),
            6 => (0x86ddu16.to_be_bytes(), data),
            _ => return None,
        },
        _ => return None,
    };
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&[0; 12]);
    frame.extend_from_slice(&ethertype);
    frame.extend_from_slice(payload);
    Some(frame)
}
