//! `cargo xtask setup`: installs, idempotently, what a fresh Debian 12 machine lacks to
//! build and test (docs/toolchain.md), and says what it found and what it did.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{run, toolchain};

/// Debian packages: the eBPF toolchain (Debian route), what bpf-linker links against,
/// and the lab's tools (flood generators, capture, Prometheus and promtool).
const PACKAGES: &[(&str, &str)] = &[
    ("rustc-web", "rustc with LLVM 22 for the eBPF build"),
    ("rust-web-src", "the standard library source for -Z build-std"),
    ("llvm-22-dev", "LLVM that bpf-linker links against"),
    ("libpolly-22-dev", "needed to link bpf-linker"),
    ("libzstd-dev", "needed to link bpf-linker"),
    ("zlib1g-dev", "needed to link bpf-linker"),
    ("iproute2", "network namespaces and veth for the lab"),
    ("ethtool", "offload settings in the lab"),
    ("nftables", "DNAT rules inside the lab's real-host namespaces"),
    ("curl", "legit clients in the lab"),
    ("python3-scapy", "spoofed SYN floods in the lab (sources inside 198.18.0.0/15)"),
    ("netsniff-ng", "trafgen"),
    ("hping3", "single-source floods"),
    ("tshark", "captures in the lab"),
    ("bpftool", "inspecting programs and maps"),
    ("prometheus", "a real Prometheus server and promtool"),
    ("nftables", "nft: the agent reads DNAT/redirect rules; NAT tests in namespaces"),
    ("dpkg-dev", "dpkg-shlibdeps and strip, which cargo-deb uses for the package's Depends"),
    ("systemd", "systemd-analyze verify of the packaged unit"),
    ("util-linux", "setpriv: the packaged agent run as a non-root user with capabilities"),
    ("python3-venv", "a virtualenv for kubernetes-validate (the DaemonSet check)"),
    ("g++", "libFuzzer (C++), built by cargo xtask fuzz"),
    (
        "linux-source-6.12",
        "the kernel selftest xdp_synproxy_kern, the bench's peer (extracted under target/)",
    ),
    ("clang-22", "compiles the selftest peer (-target bpf; the LLVM bpf-linker uses)"),
    ("libbpf-dev", "bpf_helpers.h for the selftest peer"),
    ("fonts-dejavu-core", "the font of the bench's plot (bench.png)"),
];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Validates the DaemonSet manifest against the Kubernetes schemas (deploy/kubernetes/check.sh),
/// installed from PyPI into a virtualenv under target/ (nothing global).
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";
/// Builds the Debian package (`cargo xtask dist`).
const CARGO_DEB_VERSION: &str = "3.8.0";
/// `cargo xtask fuzz` (libFuzzer targets in fuzz/; built with RUSTC_BOOTSTRAP=1 on stable).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn cargo_deb_version() -> Option<String> {
    let out = Command::new("cargo").args(["deb", "--version"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

pub fn main() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter_map(|(p, why)| {
            if installed(p) {
                println!("setup: present    {p}");
                None
            } else {
                println!("setup: missing    {p} ({why})");
                Some(*p)
            }
        })
        .collect();
    if !missing.is_empty() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            bail!("installing {} needs root (apt-get)", missing.join(" "));
        }
        run(Command::new("apt-get").args(["update", "-q"])).context("apt-get update")?;
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing))
        .context("apt-get install")?;
        println!("setup: installed  {}", missing.join(" "));
    }
    match toolchain::bpf_linker_version() {
        Some(v) if v.contains(BPF_LINKER_VERSION) => println!("setup: present    {v}"),
        found => {
            println!(
                "setup: installing bpf-linker {BPF_LINKER_VERSION} (found: {})",
                found.as_deref().unwrap_or("none")
            );
            // bpf-linker must link the LLVM that rustc-web uses; without llvm-config on
            // PATH its build fails with "unable to find -lLLVM".
            let path = format!("/usr/lib/llvm-22/bin:{}", std::env::var("PATH").unwrap_or_default());
            run(Command::new("cargo")
                .env("PATH", path)
                .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
                .args(["--no-default-features", "--features", "llvm-22"]))
            .context("cargo install bpf-linker")?;
        }
    }
    match cargo_deb_version() {
        Some(v) if v.contains(CARGO_DEB_VERSION) => println!("setup: present    {v}"),
        found => {
            println!(
                "setup: installing cargo-deb {CARGO_DEB_VERSION} (found: {})",
                found.as_deref().unwrap_or("none")
            );
            run(Command::new("cargo").args([
                "install",
                "cargo-deb",
                "--locked",
                "--version",
                CARGO_DEB_VERSION,
            ]))
            .context("cargo install cargo-deb")?;
        }
    }
    install_cargo_fuzz()?;
    install_kubernetes_validate()?;
    let route = toolchain::detect().context("neither eBPF toolchain route is usable after setup")?;
    println!("setup: eBPF build route: {}", route.describe());
    if toolchain::nightly_has_rust_src() && toolchain::debian_route_present() {
        println!("setup: (both routes are present; the nightly one is preferred)");
    }
    println!("setup: done");
    Ok(())
}

fn install_cargo_fuzz() -> Result<()> {
    let out = Command::new("cargo").args(["fuzz", "--version"]).output().ok().filter(|o| o.status.success());
    match out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()) {
        Some(v) if v.contains(CARGO_FUZZ_VERSION) => {
            println!("setup: present    {v}");
            Ok(())
        }
        found => {
            println!(
                "setup: installing cargo-fuzz {CARGO_FUZZ_VERSION} (found: {})",
                found.as_deref().unwrap_or("none")
            );
            run(Command::new("cargo").args([
                "install",
                "cargo-fuzz",
                "--locked",
                "--version",
                CARGO_FUZZ_VERSION,
            ]))
            .context("cargo install cargo-fuzz")
        }
    }
}

/// The virtualenv `deploy/kubernetes/check.sh` looks for.
fn install_kubernetes_validate() -> Result<()> {
    let venv = crate::workspace_root().join("target/tools/k8s-venv");
    let tool = venv.join("bin/kubernetes-validate");
    let found = Command::new(&tool).arg("--version").output().ok().filter(|o| o.status.success());
    if let Some(out) =
        found.filter(|o| String::from_utf8_lossy(&o.stdout).contains(KUBERNETES_VALIDATE_VERSION))
    {
        println!("setup: present    kubernetes-validate {}", String::from_utf8_lossy(&out.stdout).trim());
        return Ok(());
    }
    println!("setup: installing kubernetes-validate {KUBERNETES_VALIDATE_VERSION} into {}", venv.display());
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv)).context("python3 -m venv")?;
    run(Command::new(venv.join("bin/pip")).args([
        "install",
        "-q",
        &format!("kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"),
    ]))
    .context("pip install kubernetes-validate")
}
