//! The agent under test: `syndetector run` inside the server namespace, its log kept in
//! the lab's scratch directory, stopped with SIGTERM like an operator would.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{Lab, Scrape};

pub struct Agent {
    child: Option<Child>,
    pub metrics_addr: SocketAddr,
    pub log: PathBuf,
    ns: String,
}

impl Agent {
    /// Starts `binary run --iface <server veth> --metrics-addr ... <extra>` in the server
    /// namespace and waits until its metrics answer.
    pub fn start(lab: &Lab, binary: &Path, extra: &[&str]) -> Result<Self> {
        Self::start_with(lab, binary, extra, &[], None)
    }

    /// `start` with environment variables, and, if `ready_log` is given, ready when its log
    /// holds that text instead of when its metrics answer: a scrape is a connection to a
    /// listener in the server namespace, which the kernel answers with a cookie when
    /// `tcp_syncookies = 2`, and some tests count exactly those.
    pub fn start_with(
        lab: &Lab,
        binary: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        ready_log: Option<&str>,
    ) -> Result<Self> {
        let metrics_addr: SocketAddr = "127.0.0.1:9787".parse()?;
        let log = lab.scratch().join("agent.log");
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new("ip")
            .envs(env.iter().copied())
            .args(["netns", "exec", &lab.server_ns])
            .arg(binary)
            .args(["run", "--iface", &lab.server_if, "--metrics-addr", &metrics_addr.to_string()])
            .arg("--state-dir")
            .arg(lab.scratch().join("state"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut agent = Self { child: Some(child), metrics_addr, log, ns: lab.server_ns.clone() };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = match ready_log {
                Some(text) => agent.log_text().contains(text),
                None => agent.scrape().is_ok(),
            };
            if ready {
                return Ok(agent);
            }
            if let Some(status) = agent.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("the agent exited ({status}) during start-up:\n{}", agent.log_text());
            }
            if Instant::now() > deadline {
                bail!("the agent's metrics did not answer within 20 s:\n{}", agent.log_text());
            }
            std::thread::sleep(Duration::from_millis(if ready_log.is_some() { 20 } else { 200 }));
        }
    }

    /// The agent's process id (`ip netns exec` execs it), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the agent has exited (and how), without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn scrape(&self) -> Result<Scrape> {
        Scrape::fetch(&self.ns, self.metrics_addr)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the agent.
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        let pid = libc::pid_t::try_from(self.child.as_ref().context("not running")?.id())?;
        // SAFETY: signalling our own child.
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// SIGKILL, as a crash would end it: nothing of its own clean-up runs.
    pub fn crash(&mut self) -> Result<()> {
        let mut child = self.child.take().context("not running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// SIGTERM, then waits (10 s at most) and returns how it exited.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        // `ip netns exec` execs the agent, so the child's pid is the agent's.
        let pid = libc::pid_t::try_from(child.id())?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("the agent did not stop within 10 s of SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
