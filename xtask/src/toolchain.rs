//! Which route builds the eBPF half here (docs/toolchain.md): a rustup nightly with
//! `rust-src`, or Debian's `rustc-web` with its library source and `RUSTC_BOOTSTRAP`.

use std::{path::Path, process::Command};

/// Debian's compiler and the library source `-Z build-std` needs.
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_LIBRARY_SRC: &str = "/usr/lib/rustlib/src/rust/library";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `cargo +nightly` with the rust-src component.
    Nightly,
    /// Stable cargo driving Debian's rustc (`RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1`).
    Debian,
}

impl Route {
    pub fn describe(self) -> &'static str {
        match self {
            Route::Nightly => "rustup nightly with rust-src",
            Route::Debian => "Debian rustc-web + rust-web-src (RUSTC_BOOTSTRAP=1)",
        }
    }
}

/// The route to use, preferring a rustup nightly with rust-src when there is one.
pub fn detect() -> Option<Route> {
    if nightly_has_rust_src() {
        Some(Route::Nightly)
    } else if debian_route_present() {
        Some(Route::Debian)
    } else {
        None
    }
}

pub fn nightly_has_rust_src() -> bool {
    let Ok(out) = Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]).output()
    else {
        return false;
    };
    out.status.success()
        && Path::new(String::from_utf8_lossy(&out.stdout).trim())
            .join("lib/rustlib/src/rust/library")
            .is_dir()
}

pub fn debian_route_present() -> bool {
    Path::new(DEBIAN_RUSTC).exists() && Path::new(DEBIAN_LIBRARY_SRC).is_dir()
}

/// A `cargo` command for building the eBPF crate by `route`.
pub fn ebpf_cargo(route: Route) -> Command {
    let mut cmd = Command::new("cargo");
    // Settings meant for the host build must not leak into the BPF one.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTC",
        "RUSTDOC",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", "bpf-linker");
    match route {
        Route::Nightly => {
            cmd.env_remove("RUSTUP_TOOLCHAIN");
            cmd.arg("+nightly");
        }
        Route::Debian => {
            cmd.env("RUSTC", DEBIAN_RUSTC).env("RUSTC_BOOTSTRAP", "1");
        }
    }
    cmd
}

pub fn bpf_linker_version() -> Option<String> {
    let out = Command::new("bpf-linker").arg("--version").output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
