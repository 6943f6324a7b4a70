//! `cargo xtask test`: the one test command (README and CI). Builds the XDP object, runs
//! every test of the workspace (unit, BPF_PROG_TEST_RUN, network-namespace end-to-end),
//! then checks the dashboards and alert rules with promtool, the Kubernetes DaemonSet
//! (deploy/kubernetes/check.sh), the Debian package (`dist::check`), and runs
//! `bench --quick` once as a smoke (its report must exist with the expected rows).

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::{build_ebpf, dist, format_command, run, workspace_root};

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Test threads per test binary (the lab tests make namespaces; 2 cores are plenty busy).
    #[arg(long, default_value_t = 2)]
    pub test_threads: usize,
    /// Passed to the test binaries, e.g. a filter: `cargo xtask test -- e2e`.
    #[arg(last = true)]
    pub rest: Vec<String>,
}

pub fn main(args: &TestArgs) -> Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the kernel tests need root (BPF_PROG_TEST_RUN, XDP attach, network namespaces): \
             run `sudo -E cargo xtask test`"
        );
    }
    check_free_disk()?;
    build_ebpf::main(&build_ebpf::BuildEbpfArgs { release: false })?;
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(workspace_root())
        .args(["test", "--workspace", "--no-fail-fast", "--", "--test-threads"])
        .arg(args.test_threads.to_string())
        .args(&args.rest);
    let (tests, totals) = run_counting(&mut cargo);
    let tests = tests.context("cargo test");
    // The whole-repo checks run only with the whole suite (a filter selects tests).
    let whole = args.rest.is_empty();
    let dashboards = if whole { check_script("dashboards/check.sh", "promtool") } else { Ok(()) };
    let daemonset =
        if whole { check_script("deploy/kubernetes/check.sh", "kubernetes-validate") } else { Ok(()) };
    let package = if whole { dist::check().context("the Debian package") } else { Ok(()) };
    let bench = if whole || args.rest.iter().any(|f| BENCH_SMOKE.contains(f.as_str())) {
        bench_smoke().context("the bench smoke run (bench --quick)")
    } else {
        Ok(())
    };
    // One closing line for every test binary together (cargo prints one per binary, the
    // last ones being doc-test runs with nothing in them).
    println!("tests: {} passed, {} failed, {} skipped", totals.passed, totals.failed, totals.ignored);
    tests?;
    dashboards?;
    daemonset?;
    package?;
    bench
}

/// What a whole run writes into the checkout, rounded up: a fresh clone under `.ci/run`
/// peaked at 4.9 GiB (target/ 3.9 GiB and detector-ebpf/target/ 1 GiB at the end; the
/// debug and release builds, the test binaries, the package, the bench's selftest peer).
const RUN_WRITES_GIB: u64 = 6;

/// Fails before building anything when the disk cannot take a whole run: a full disk
/// otherwise shows as a compiler's "No space left on device" minutes in, or as a test
/// failing on a write (CI saw the first on a machine with little space left).
fn check_free_disk() -> Result<()> {
    let root = workspace_root();
    let path = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()).context("workspace path")?;
    // SAFETY: a zeroed statvfs is valid, and `path` is a NUL-terminated string.
    let mut fs: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; statvfs writes only into `fs`.
    if unsafe { libc::statvfs(path.as_ptr(), &raw mut fs) } != 0 {
        bail!("statvfs {}: {}", root.display(), std::io::Error::last_os_error());
    }
    let free_gib = (fs.f_bavail * fs.f_frsize) >> 30;
    println!(
        "test: {free_gib} GiB free on the disk of {} (a whole run writes about {RUN_WRITES_GIB} GiB)",
        root.display()
    );
    if free_gib < RUN_WRITES_GIB {
        bail!(
            "only {free_gib} GiB free on the disk of {}: a whole test run writes about \
             {RUN_WRITES_GIB} GiB (builds, test binaries, fuzz targets); free some space first \
             (`cargo clean` removes earlier builds)",
            root.display()
        );
    }
    Ok(())
}

/// Runs one of the repo's check scripts (`bash <script>` from the workspace root).
fn check_script(script: &str, what: &str) -> Result<()> {
    run(Command::new("bash").arg(workspace_root().join(script)).current_dir(workspace_root()))
        .with_context(|| format!("{script} ({what})"))
}

/// The smoke run's name: a filter that is part of it selects it (`cargo xtask test -- bench`).
const BENCH_SMOKE: &str = "bench_quick";

/// Rows every report of `bench --quick` must have (by the start of their "what" column).
const BENCH_ROWS: &[&str] = &[
    "| verifier | syndetector: instructions processed |",
    // From the test object: the shipped one has no baselines.
    "| verifier | baseline_helper_floor: instructions processed |",
    "| per path | trivial XDP_PASS (subtracted from all), absolute |",
    "| per path | helper floor (lookup + cookie helper) |",
    "| per path | minimal responder (raw helper + SYN-ACK) |",
    "| per path | cookie path, IPv4, TS options |",
    "| per path | cookie path IPv4 / helper floor |",
];

/// `cargo xtask bench --quick` in a process of its own (it enters private namespaces), then
/// checks that its report exists with the expected rows and a PNG. Never a timing: the
/// figures are whatever they are.
fn bench_smoke() -> Result<()> {
    let dir = workspace_root().join("target/bench-results/smoke");
    let _ = std::fs::remove_dir_all(&dir);
    run(Command::new(std::env::current_exe()?).args(["bench", "--quick", "--results"]).arg(&dir))?;
    let md = std::fs::read_to_string(dir.join("bench.md")).context("bench.md was not written")?;
    let missing: Vec<&&str> = BENCH_ROWS.iter().filter(|row| !md.contains(**row)).collect();
    if !missing.is_empty() {
        bail!("bench.md lacks the rows {missing:?}:\n{md}");
    }
    // The peer either has its rows (alone and interleaved with ours) or a note saying why not.
    let peer_rows = ["| peer | kernel selftest", "| peer | ours / selftest, interleaved packet by packet"];
    if !peer_rows.iter().all(|row| md.contains(row)) && !md.contains("selftest peer not measured:") {
        bail!("bench.md lacks the kernel selftest peer's rows {peer_rows:?}:\n{md}");
    }
    let png = std::fs::read(dir.join("bench.png")).context("bench.png was not written")?;
    if !png.starts_with(b"\x89PNG\r\n\x1a\n") || png.len() < 1000 {
        bail!("bench.png is not a PNG image ({} bytes)", png.len());
    }
    compare_smoke()?;
    println!("test: bench_quick ... ok (report in {})", dir.display());
    Ok(())
}

/// `bench --compare` with the shipped object twice, few packets: every detector case gets
/// its row with both objects' figures and the ratio. Never a timing either.
fn compare_smoke() -> Result<()> {
    let object = xtask::objects::shipped(true);
    let both = format!("{},{}", object.display(), object.display());
    let out = Command::new(std::env::current_exe()?)
        .args([
            "bench",
            "--compare",
            &both,
            "--packets",
            "300",
            "--many-sources",
            "300",
            "--few-sources",
            "100",
        ])
        .output()
        .context("running bench --compare")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("bench --compare failed ({}):\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    for case in [
        "cookie path, IPv4, TS options",
        "cookie path, IPv4, MSS only",
        "drop path, blocked source",
        "ACK, calm (no cookies)",
    ] {
        // The name, then PASS, both objects and the ratio: four figures.
        let row = stdout
            .lines()
            // The whole name: another case's name may begin with this one's.
            .find(|l| l.strip_prefix(case).is_some_and(|rest| rest.starts_with(' ')))
            .with_context(|| format!("no row for {case}:\n{stdout}"))?;
        let figures = row[case.len()..].split_whitespace().filter(|w| w.parse::<f64>().is_ok()).count();
        if figures != 4 {
            bail!("the row for {case} has {figures} figures, not 4: {row}");
        }
    }
    Ok(())
}

/// Sums of the "test result:" lines of every test binary.
#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    /// Adds a libtest summary line ("test result: ok. 3 passed; 0 failed; 1 ignored; ...").
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else { return };
        for part in rest.split(';') {
            let words: Vec<&str> = part.split_whitespace().collect();
            let (count, what) = match words.as_slice() {
                [_, n, what, ..] if n.parse::<u64>().is_ok() => (*n, *what),
                [n, what, ..] => (*n, *what),
                _ => continue,
            };
            let Ok(n) = count.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Runs `cmd` like `run`, echoing its standard output line by line while summing the
/// test result lines.
fn run_counting(cmd: &mut Command) -> (Result<()>, Totals) {
    println!("$ {}", format_command(cmd));
    let mut totals = Totals::default();
    let mut child = match cmd.stdout(Stdio::piped()).spawn() {
        Ok(child) => child,
        Err(e) => return (Err(e).context("starting cargo"), totals),
    };
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
            totals.add_line(&line);
        }
    }
    let result = match child.wait() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(anyhow::anyhow!("`{}` failed ({status})", format_command(cmd))),
        Err(e) => Err(e.into()),
    };
    (result, totals)
}

#[cfg(test)]
mod tests {
    use super::Totals;

    #[test]
    fn summary_lines_of_every_binary_add_up() {
        let mut t = Totals::default();
        t.add_line(
            "test result: ok. 98 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 9.07s",
        );
        t.add_line("test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out");
        t.add_line("running 3 tests");
        t.add_line("test foo ... ok");
        assert_eq!(t, Totals { passed: 101, failed: 2, ignored: 1 });
    }
}
