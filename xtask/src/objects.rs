//! Where `cargo xtask build-ebpf` leaves the two XDP objects, for everything that loads
//! one (the agent's build script has its own copy of the shipped path: it cannot depend
//! on xtask).
//!
//! - The shipped object: `syndetector` alone. The agent embeds it and the package ships
//!   it, so nothing a test or the bench needs may add code, maps or verifier time to it.
//! - The test object: the same crate built with the `test-programs` feature, adding the
//!   bench's baselines (`baseline_*`) and the fixtures' cookie probe
//!   (`probe_check_cookie`). Anything that loads one of those loads this object.

use std::path::{Path, PathBuf};

/// The detector-ebpf feature that adds the test-only programs.
pub const TEST_FEATURE: &str = "test-programs";

/// The file name of the test object, next to the shipped one in the profile's directory.
const TEST_OBJECT: &str = "detector-ebpf-test-programs";

fn profile_dir(release: bool) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .join("detector-ebpf/target/bpfel-unknown-none")
        .join(if release { "release" } else { "debug" })
}

/// The object the agent embeds and the package ships (cargo's own output path).
pub fn shipped(release: bool) -> PathBuf {
    profile_dir(release).join("detector-ebpf")
}

/// The object with the test-only programs as well (a copy `build-ebpf` makes, since
/// cargo's output path holds whichever build ran last).
pub fn test_programs(release: bool) -> PathBuf {
    profile_dir(release).join(TEST_OBJECT)
}
