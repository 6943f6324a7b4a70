//! Running code inside a lab namespace: a thread that joins it (network namespaces are
//! per thread), so clients and scrapes are plain Rust over the kernel's own TCP stack.

use std::{fs::File, os::fd::AsRawFd, thread};

use anyhow::{anyhow, bail, Context, Result};

/// Runs `f` on a new thread inside network namespace `ns` (a name under /run/netns).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: setns on this thread only, with an fd we own.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns({path}): {}", std::io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow!("a thread in namespace {ns} panicked"))?
    })
}
