//! Embeds the XDP object so that the agent is one binary to copy. The object must be
//! built first (`cargo xtask build-ebpf`): it needs a different target and toolchain
//! set-up, which a build script cannot provide cleanly.

use std::{env, fs, path::PathBuf};

fn main() {
    let profile = if env::var("PROFILE").as_deref() == Ok("release") { "release" } else { "debug" };
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let object = env::var_os("SYNDETECTOR_EBPF_OBJECT").map_or_else(
        || manifest.join("../detector-ebpf/target/bpfel-unknown-none").join(profile).join("detector-ebpf"),
        PathBuf::from,
    );
    println!("cargo:rerun-if-env-changed=SYNDETECTOR_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("detector-ebpf.o");
    if let Err(e) = fs::copy(&object, &out) {
        eprintln!();
        eprintln!("error: the XDP object is missing at {} ({e}).", object.display());
        eprintln!(
            "       Build it with `cargo xtask build-ebpf{}` (or `cargo xtask build` for both halves).",
            if profile == "release" { " --release" } else { "" }
        );
        eprintln!();
        std::process::exit(1);
    }
}
