//! The peer of `cargo xtask bench`: the kernel's own XDP SYN proxy selftest
//! (`tools/testing/selftests/bpf/progs/xdp_synproxy_kern.c` of Debian's `linux-source-6.12`),
//! built here, never committed, and timed on the same SYNs as ours, the same way.
//!
//! Build: the three files it needs are extracted from /usr/src/linux-source-6.12.tar.xz into
//! target/selftest-peer/; `vmlinux.h` is generated from the running kernel's BTF (bpftool);
//! clang (Debian's clang-22, the LLVM the eBPF toolchain already uses) compiles it against
//! libbpf-dev's headers. Load: aya cannot load it (kfunc externs, `.ksyms`), so bpftool
//! (libbpf) loads and pins it in a bpffs that exists only in the bench's private mount
//! namespace, and aya opens the pins for BPF_PROG_TEST_RUN and the maps.
//!
//! Configuration, as its user program (`xdp_synproxy.c`) does: `values[0]` = MSS4 | wscale << 16
//! | TTL << 24 | MSS6 << 32 (1460, 7, 64, 1440, the selftest's values), `allowed_ports` =
//! [BENCH_PORT, 0]. Its SYN path needs no listener: it asks conntrack (`bpf_xdp_ct_lookup`)
//! about the flow, gets -ENOENT for a new one, checks the IPv4 and TCP checksums (so the
//! frames get real checksums here; ours does not read them), makes a raw-helper cookie
//! with a timestamp and answers XDP_TX. `values[1]` counts the SYN-ACKs it built: it must
//! equal the packets sent, which proves the cookie path ran for each.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use aya::{
    maps::{Array, Map, MapData},
    programs::Xdp,
};

use crate::{bench_cases::timed_run, bench_report::Report, bench_rounds::ROUNDS, workspace_root};

const TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";
const TREE: &str = "linux-source-6.12/tools/testing/selftests/bpf";
const SOURCES: [&str; 2] = ["progs/xdp_synproxy_kern.c", "progs/bpf_compiler.h"];
const COMPILERS: [&str; 3] = ["clang-22", "clang-19", "clang"];

/// What the peer cost, and what loading it cost.
pub struct Peer {
    pub ns_per_packet: f64,
    /// The same packets interleaved: ns per packet of the selftest, of ours and of the
    /// trivial XDP_PASS, each packet through the three in turn (see `report`).
    pub interleaved: [f64; 3],
    pub verified_insns: Option<u32>,
    pub load_ms: f64,
    pub compiler: String,
}

/// Runs one packet through our cookie path and the trivial XDP_PASS, right after the
/// selftest had it: their kernel-measured times.
pub type Beside<'a> = dyn FnMut(&[u8]) -> Result<[Duration; 2]> + 'a;

/// Measures the peer and adds its rows to the report (`base`: the trivial XDP_PASS to
/// subtract, `ours`: our cookie path's net figure, `raw_floor`: the raw helper alone,
/// net); if anything fails, a note says why and the bench goes on.
///
/// The selftest is timed twice on the same SYNs. First alone, after our cases, as they
/// were timed: its figure and `ours` give the "one after the other" ratio. Then
/// interleaved: each SYN through the selftest, then ours (`beside`), then the trivial
/// XDP_PASS, so that a change of load on this shared machine moves all three alike. Whole
/// runs minutes apart put the ratio anywhere between 0.48 and 0.97 on the same build
/// (docs/hotpaths.md); the interleaved ratio is the one the target is read against. Each
/// program evicts the other's maps from the cache there, so both absolute figures are
/// higher than alone. Both are timed in `bench_rounds::ROUNDS` rounds, the median round reported.
pub fn report(
    report: &mut Report,
    frames: &mut dyn Iterator<Item = Vec<u8>>,
    port: u16,
    base: f64,
    ours: f64,
    raw_floor: Option<f64>,
    beside: &mut Beside<'_>,
) {
    let peer = match measure(frames, port, beside) {
        Ok(peer) => peer,
        Err(e) => return report.note(format!("kernel selftest peer not measured: {e:#}")),
    };
    let theirs = peer.ns_per_packet - base;
    let ratio = ours / theirs.max(0.1);
    let [peer_i, ours_i, pass_i] = peer.interleaved;
    let (theirs_i, ours_i) = (peer_i - pass_i, ours_i - pass_i);
    let ratio_i = ours_i / theirs_i.max(0.1);
    println!(
        "\nkernel selftest xdp_synproxy_kern ({}): {theirs:.1} ns/packet minus PASS; ours / selftest {ratio:.2}",
        peer.compiler
    );
    println!("interleaved: selftest {theirs_i:.1}, ours {ours_i:.1} ns/packet minus PASS; ours / selftest {ratio_i:.2}");
    report
        .row("peer", "kernel selftest xdp_synproxy_kern (6.12), IPv4, TS options", theirs, "ns/packet")
        .ratio = Some(format!("ours / selftest = {ratio:.2} (one after the other)"));
    report.row("peer", "selftest, interleaved with ours packet by packet", theirs_i, "ns/packet");
    report.row("peer", "cookie path IPv4, TS options, interleaved with the selftest", ours_i, "ns/packet");
    report.row("peer", "ours / selftest, interleaved packet by packet", ratio_i, "ratio").target =
        Some("≤ 0.55");
    // The issue's ≤ 0.55 against what the raw helper alone costs: the floor under any
    // raw-cookie responder, ours or the selftest's.
    if let Some(floor) = raw_floor {
        let r = floor / theirs.max(0.1);
        println!("raw floor / selftest {r:.2}");
        report.row("peer", "raw floor / selftest (the least any raw-helper path can reach)", r, "ratio");
    }
    if let Some(insns) = peer.verified_insns {
        report.row("peer", "selftest: instructions processed", f64::from(insns), "insns");
    }
    report.row("peer", "selftest: load time (bpftool prog loadall, both programs)", peer.load_ms, "ms");
    report.note(format!(
        "The selftest peer was built from {TARBALL} with {} and loaded with bpftool; its SYNs carry real \
         checksums (it checks them), it needs no listener (conntrack answers -ENOENT for a new flow), and its \
         SYN-ACK counter matched every packet.",
        peer.compiler
    ));
}

/// Builds, loads and times the selftest on `frames` (IPv4 SYNs to `port`, checksums are
/// filled in here). Run inside the bench's private network namespace.
fn measure(frames: &mut dyn Iterator<Item = Vec<u8>>, port: u16, beside: &mut Beside<'_>) -> Result<Peer> {
    let (object, compiler) = build()?;
    enter_private_mount_ns()?;
    let fs = pin_dir();
    std::fs::create_dir_all(&fs)?;
    crate::run(Command::new("mount").args(["-t", "bpf", "bench-peer"]).arg(&fs))
        .context("mounting a bpffs")?;
    let result =
        load_and_time(&object, &fs, frames, port, beside).map(|(ns, interleaved, insns, load_ms)| Peer {
            ns_per_packet: ns,
            interleaved,
            verified_insns: insns,
            load_ms,
            compiler,
        });
    // The mount is private to this process's mount namespace; unmount anyway, so the pins
    // (and the programs they hold) go now.
    let _ = Command::new("umount").arg(&fs).status();
    let _ = std::fs::remove_dir(&fs);
    result
}

/// Where the bpffs for the pins is mounted: a path without a '.'. libbpf replaces every
/// '.' of a map's pin path with '_' (meant for map names such as `.rodata`, applied to the
/// whole path), so under a checkout like `/tmp/ci.XXXX` `pinmaps` tried to create
/// `/tmp/ci_XXXX/...` and the peer was not measured.
fn pin_dir() -> std::path::PathBuf {
    let base = std::env::temp_dir();
    let base = if base.to_string_lossy().contains('.') { std::path::PathBuf::from("/tmp") } else { base };
    base.join(format!("sd-bench-peer-{}", std::process::id()))
}

/// The selftest's ns per packet alone, then interleaved with `beside` ([selftest, ours,
/// PASS]), its verified instructions and its load time.
fn load_and_time(
    object: &Path,
    fs: &Path,
    frames: &mut dyn Iterator<Item = Vec<u8>>,
    port: u16,
    beside: &mut Beside<'_>,
) -> Result<(f64, [f64; 3], Option<u32>, f64)> {
    let started = std::time::Instant::now();
    crate::run(
        Command::new("bpftool")
            .args(["prog", "loadall"])
            .arg(object)
            .arg(fs.join("progs"))
            .arg("pinmaps")
            .arg(fs.join("maps")),
    )
    .context("bpftool prog loadall (libbpf) refused the selftest object")?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let prog = Xdp::from_pin(fs.join("progs/syncookie_xdp"), aya_obj::programs::XdpAttachType::Interface)
        .context("opening the pinned syncookie_xdp")?;
    let insns = prog.info().ok().and_then(|i| i.verified_instruction_count());
    let mut values: Array<MapData, u64> =
        Array::try_from(Map::Array(MapData::from_pin(fs.join("maps/values"))?))?;
    let mut ports: Array<MapData, u16> =
        Array::try_from(Map::Array(MapData::from_pin(fs.join("maps/allowed_ports"))?))?;
    values.set(0, tcpipopts(1460, 1440, 7, 64), 0)?;
    values.set(1, 0, 0)?;
    ports.set(0, port, 0)?;
    ports.set(1, 0, 0)?;

    let frames: Vec<Vec<u8>> = frames
        .map(|mut frame| {
            fill_ipv4_checksums(&mut frame);
            frame
        })
        .collect();
    let mut out = vec![0u8; 256];
    let mut selftest = |frame: &[u8]| timed_run(&prog, frame, &mut out, 3, &"selftest (XDP_TX expected)");
    // In rounds, as the bench's cases (`bench_rounds::ROUNDS`): each round times its share of the
    // frames alone, then interleaved; the figures are the median rounds.
    let (mut alone, mut interleaved) = (Vec::new(), Vec::new());
    for chunk in frames.chunks(frames.len().div_ceil(ROUNDS as usize).max(1)) {
        #[allow(clippy::cast_precision_loss, reason = "a duration in ns, far below 2^52")]
        let per_packet = |d: Duration| d.as_nanos() as f64 / chunk.len() as f64;
        let mut sum = Duration::ZERO;
        for frame in chunk {
            sum += selftest(frame)?;
        }
        alone.push(per_packet(sum));
        let mut sums = [Duration::ZERO; 3];
        for frame in chunk {
            sums[0] += selftest(frame)?;
            let [ours, pass] = beside(frame)?;
            sums[1] += ours;
            sums[2] += pass;
        }
        interleaved.push(sums.map(per_packet));
    }
    let packets = frames.len() as u64;
    let synacks = values.get(&1, 0)?;
    ensure!(
        synacks == 2 * packets,
        "selftest: {synacks} SYN-ACKs counted for {packets} SYNs sent twice: another path ran"
    );
    alone.sort_by(f64::total_cmp);
    // The interleaved rounds by their ratio, ours / selftest, both net of the PASS.
    let ratio = |[peer, ours, pass]: &[f64; 3]| (ours - pass) / (peer - pass).max(0.1);
    interleaved.sort_by(|a, b| ratio(a).total_cmp(&ratio(b)));
    let median = |n: usize| n / 2;
    let alone = *alone.get(median(alone.len())).context("no frames")?;
    let interleaved = *interleaved.get(median(interleaved.len())).context("no frames")?;
    Ok((alone, interleaved, insns, load_ms))
}

/// `values[0]` as xdp_synproxy.c packs it: MSS4 | wscale << 16 | TTL << 24 | MSS6 << 32.
fn tcpipopts(mss4: u16, mss6: u16, wscale: u8, ttl: u8) -> u64 {
    (u64::from(mss6) << 32) | (u64::from(ttl) << 24) | (u64::from(wscale) << 16) | u64::from(mss4)
}

/// Extracts, generates and compiles (each step only if its output is missing); returns the
/// object and the compiler used.
fn build() -> Result<(PathBuf, String)> {
    let dir = workspace_root().join("target/selftest-peer");
    let tree = dir.join(TREE);
    if !SOURCES.iter().all(|s| tree.join(s).exists()) {
        ensure!(
            Path::new(TARBALL).exists(),
            "{TARBALL} is missing (Debian package linux-source-6.12; `cargo xtask setup` installs it)"
        );
        std::fs::create_dir_all(&dir)?;
        println!("selftest peer: extracting {} from {TARBALL}", SOURCES.join(", "));
        crate::run(
            Command::new("tar")
                .current_dir(&dir)
                .arg("-xJf")
                .arg(TARBALL)
                .args(SOURCES.iter().map(|s| format!("{TREE}/{s}"))),
        )?;
    }
    let vmlinux = tree.join("progs/vmlinux.h");
    if !vmlinux.exists() {
        let out = Command::new("bpftool")
            .args(["btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "c"])
            .output()
            .context("bpftool btf dump (package bpftool)")?;
        ensure!(out.status.success(), "bpftool btf dump: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(&vmlinux, out.stdout)?;
    }
    ensure!(
        Path::new("/usr/include/bpf/bpf_helpers.h").exists(),
        "/usr/include/bpf/bpf_helpers.h is missing (package libbpf-dev)"
    );
    let compiler = COMPILERS
        .iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
        .with_context(|| format!("no clang found (tried {}; package clang-22)", COMPILERS.join(", ")))?;
    let object = dir.join("xdp_synproxy_kern.o");
    if !object.exists() {
        let out = Command::new(compiler)
            .current_dir(&tree)
            .args(["-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86", "-w"])
            .args(["-Iprogs", "-I/usr/include/x86_64-linux-gnu", "-c", "progs/xdp_synproxy_kern.c", "-o"])
            .arg(&object)
            .output()?;
        ensure!(out.status.success(), "{compiler} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((object, (*compiler).to_owned()))
}

/// A mount namespace of the bench's own, with no propagation to the host's: the bpffs
/// mounted for the pins is invisible outside and goes with the process.
fn enter_private_mount_ns() -> Result<()> {
    // SAFETY: plain syscalls with valid, NUL-terminated arguments.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            bail!("unshare(CLONE_NEWNS): {}", std::io::Error::last_os_error());
        }
        if libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            bail!("making / private: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The IPv4 header checksum and the TCP checksum (over the header length the IPv4 total
/// length gives), which the selftest checks before answering.
fn fill_ipv4_checksums(f: &mut [u8]) {
    let ip = 14;
    let ihl = usize::from(f[ip] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([f[ip + 2], f[ip + 3]]));
    f[ip + 10..ip + 12].fill(0);
    let c = fold(sum(&f[ip..ip + ihl], 0));
    f[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
    let tcp = ip + ihl;
    let tcp_len = total - ihl;
    f[tcp + 16..tcp + 18].fill(0);
    let mut s = sum(&f[ip + 12..ip + 20], 0);
    s += 6 + u32::try_from(tcp_len).unwrap_or(0);
    let c = fold(sum(&f[tcp..tcp + tcp_len], s));
    f[tcp + 16..tcp + 18].copy_from_slice(&c.to_be_bytes());
}

fn sum(bytes: &[u8], mut acc: u32) -> u32 {
    for pair in bytes.chunks(2) {
        acc += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    acc
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    #[allow(clippy::cast_possible_truncation, reason = "folded to 16 bits above")]
    !(s as u16)
}
