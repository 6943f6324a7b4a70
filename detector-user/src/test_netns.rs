//! Unit-test helper: a scratch network namespace with a per-run name, removed on drop
//! (docs/lab.md: names with a per-run suffix, only test addresses, nothing on the host).

use std::{
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

static RUNS: AtomicU32 = AtomicU32::new(0);

pub struct TestNs {
    pub name: String,
    /// A per-run suffix for interface names made inside it (at most 8 characters).
    pub suffix: String,
}

pub fn assert_root() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test makes network namespaces: run it as root");
}

impl TestNs {
    pub fn new(what: &str) -> Self {
        assert_root();
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        let suffix: String = format!("{:x}{n:x}", std::process::id()).chars().take(8).collect();
        let ns = Self { name: format!("sd-{what}-{suffix}"), suffix };
        Self::ip(&["netns", "add", &ns.name]);
        Self::ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// Runs `ip ARGS`, panicking with its stderr on failure.
    pub fn ip(args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("running ip");
        assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }

    /// Runs `ip -n NS ARGS`.
    pub fn ip_in(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        Self::ip(&all);
    }

    /// Loads `rules` with `nft -f -` inside the namespace (never the host's ruleset).
    pub fn nft(&self, rules: &str) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running nft (apt-get install nftables)");
        child.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "nft -f: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Runs `f` on a thread inside the namespace; threads it starts stay there.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        xtask::lab::in_netns(&self.name, f).expect("entering the test namespace")
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}
