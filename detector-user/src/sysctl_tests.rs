//! Tests of `sysctl`.

use super::*;

fn fake_proc() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("net/ipv4")).unwrap();
    fs::write(dir.path().join("net/ipv4/tcp_syncookies"), "1\n").unwrap();
    fs::write(dir.path().join("net/ipv4/tcp_timestamps"), "1\n").unwrap();
    dir
}

fn value(root: &Path, key: &str) -> String {
    fs::read_to_string(root.join(key.replace('.', "/"))).unwrap().trim().to_owned()
}

#[test]
fn set_then_restore_puts_the_original_back_and_removes_the_state_file() {
    let proc = fake_proc();
    let state = proc.path().join("run/state.toml");
    let (mut s, recovered) = Sysctls::open(proc.path(), &state).unwrap();
    assert!(recovered.is_empty());
    s.set("net.ipv4.tcp_syncookies", "2").unwrap();
    s.set("net.ipv4.tcp_syncookies", "2").unwrap();
    assert_eq!(value(proc.path(), "net.ipv4.tcp_syncookies"), "2");
    assert!(state.exists(), "the original is on disk before the change");
    assert!(s.restore_all().complete());
    assert_eq!(value(proc.path(), "net.ipv4.tcp_syncookies"), "1");
    assert!(!state.exists());
}

#[test]
fn a_crashed_run_is_repaired_on_the_next_start() {
    let proc = fake_proc();
    let state = proc.path().join("run/state.toml");
    let (mut s, _) = Sysctls::open(proc.path(), &state).unwrap();
    s.set("net.ipv4.tcp_syncookies", "2").unwrap();
    s.set("net.ipv4.tcp_timestamps", "2").unwrap();
    std::mem::forget(s); // a crash: no Drop, no restore
    assert_eq!(value(proc.path(), "net.ipv4.tcp_timestamps"), "2");
    let (_s, recovered) = Sysctls::open(proc.path(), &state).unwrap();
    assert_eq!(recovered.len(), 2);
    assert_eq!(value(proc.path(), "net.ipv4.tcp_syncookies"), "1");
    assert_eq!(value(proc.path(), "net.ipv4.tcp_timestamps"), "1");
    assert!(!state.exists());
}

#[test]
fn drop_restores() {
    let proc = fake_proc();
    let state = proc.path().join("state.toml");
    {
        let (mut s, _) = Sysctls::open(proc.path(), &state).unwrap();
        s.set("net.ipv4.tcp_timestamps", "2").unwrap();
    }
    assert_eq!(value(proc.path(), "net.ipv4.tcp_timestamps"), "1");
}

#[test]
fn state_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let proc = fake_proc();
    let state = proc.path().join("run/state.toml");
    let (mut s, _) = Sysctls::open(proc.path(), &state).unwrap();
    s.set("net.ipv4.tcp_syncookies", "2").unwrap();
    assert_eq!(fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(s.restore_all().complete());
}

/// A scratch dir without dots in its path (a key's dots become slashes).
fn plain_tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("sd").tempdir().unwrap()
}

#[test]
fn a_state_file_naming_another_file_or_sysctl_or_an_out_of_range_value_is_refused() {
    let victim_dir = plain_tempdir();
    let victim = victim_dir.path().join("victim");
    for (line, reason) in [
        (format!("\"{}\" = \"pwned\"", victim.display()), "not a sysctl the agent changes"),
        ("\"net.ipv4.tcp_fin_timeout\" = \"30\"".to_owned(), "not a sysctl the agent changes"),
        ("\"net.ipv4.tcp_syncookies\" = \"7\"".to_owned(), "outside 0..=2"),
    ] {
        let proc = fake_proc();
        fs::write(proc.path().join("net/ipv4/tcp_fin_timeout"), "60\n").unwrap();
        fs::write(&victim, "root only\n").unwrap();
        let state = proc.path().join("run/state.toml");
        fs::create_dir_all(state.parent().unwrap()).unwrap();
        let text = format!("[original]\n{line}\n");
        fs::write(&state, &text).unwrap();
        let err = Sysctls::open(proc.path(), &state).expect_err(&text).to_string();
        assert!(err.contains("is corrupt") && err.contains(reason), "{text}: {err}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "root only\n");
        assert_eq!(value(proc.path(), "net.ipv4.tcp_fin_timeout"), "60");
        assert_eq!(value(proc.path(), "net.ipv4.tcp_syncookies"), "1");
        assert_eq!(fs::read_to_string(&state).unwrap(), text, "the file is kept for the operator");
    }
}

#[test]
fn a_state_file_that_is_not_utf8_is_an_error_telling_what_to_do() {
    let proc = fake_proc();
    let state = proc.path().join("run/state.toml");
    fs::create_dir_all(state.parent().unwrap()).unwrap();
    fs::write(&state, b"[original]\n\"net.ipv4.tcp_syncookies\" = \"\xff\"\n").unwrap();
    let err = Sysctls::open(proc.path(), &state).expect_err("a corrupt state file").to_string();
    assert!(err.contains("is corrupt") && err.contains("restore net.ipv4.tcp_syncookies"), "{err}");
    assert!(state.exists());
}

#[test]
fn a_symlinked_state_dir_or_state_file_is_refused() {
    let proc = fake_proc();
    let elsewhere = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), proc.path().join("run")).unwrap();
    let err = Sysctls::open(proc.path(), &proc.path().join("run/state.toml")).unwrap_err().to_string();
    assert!(err.contains("symlink"), "{err}");

    let target = elsewhere.path().join("planted.toml");
    fs::write(&target, "[original]\n\"net.ipv4.tcp_syncookies\" = \"0\"\n").unwrap();
    fs::create_dir(proc.path().join("run2")).unwrap();
    std::os::unix::fs::symlink(&target, proc.path().join("run2/state.toml")).unwrap();
    let err = Sysctls::open(proc.path(), &proc.path().join("run2/state.toml")).unwrap_err().to_string();
    assert!(err.contains("symlink"), "{err}");
    assert_eq!(value(proc.path(), "net.ipv4.tcp_syncookies"), "1");
}

#[test]
fn an_unusable_state_dir_is_refused_at_open_not_at_the_first_change() {
    let proc = fake_proc();
    fs::write(proc.path().join("run"), "").unwrap();
    let err = Sysctls::open(proc.path(), &proc.path().join("run/state.toml")).unwrap_err().to_string();
    assert!(err.contains("state directory"), "{err}");
}

/// The descriptor limit is per process: the work runs in a child test process.
#[test]
fn at_the_descriptor_limit_cookies_still_switch_on_and_are_restored() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "sysctl::tests::descriptor_limit_child", "--ignored", "--test-threads=1"])
        .env("SYNDETECTOR_FD_LIMIT_CHILD", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("1 passed"), "{text}");
}

#[test]
#[ignore = "run in a child process by at_the_descriptor_limit_cookies_still_switch_on_and_are_restored"]
fn descriptor_limit_child() {
    if std::env::var_os("SYNDETECTOR_FD_LIMIT_CHILD").is_none() {
        return;
    }
    let proc = fake_proc();
    let state = proc.path().join("run/state.toml");
    let (mut s, _) = Sysctls::open(proc.path(), &state).unwrap();
    let limit = libc::rlimit { rlim_cur: 64, rlim_max: 64 };
    // SAFETY: a valid rlimit, in a process of its own.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) }, 0);
    let mut hog = Vec::new();
    let e = loop {
        match File::open("/dev/null") {
            Ok(f) => hog.push(f),
            Err(e) => break e,
        }
    };
    assert_eq!(e.raw_os_error(), Some(libc::EMFILE));
    s.set(SYNCOOKIES, "2").unwrap();
    s.set(TIMESTAMPS, "2").unwrap();
    assert_eq!(s.read(SYNCOOKIES).unwrap(), "2");
    assert!(s.restore_all().complete());
    drop(hog);
    assert_eq!(value(proc.path(), SYNCOOKIES), "1");
    assert_eq!(value(proc.path(), TIMESTAMPS), "1");
    assert!(!state.exists());
}

#[test]
fn window_scale_matches_the_kernel_rule() {
    assert_eq!(window_scale(65_535), 0);
    assert_eq!(window_scale(65_536), 1);
    assert_eq!(window_scale(6_291_456), 7); // Debian's default tcp_rmem max
    assert_eq!(window_scale(33_554_432), 10); // 32 MiB
    assert_eq!(window_scale(u64::MAX), 14);
}
