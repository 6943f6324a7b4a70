//! Tests of `lock`.

use std::os::unix::fs::PermissionsExt;

use super::*;

#[test]
fn a_symlinked_group_writable_or_foreign_state_dir_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let err = StateDir::open(&link, true).unwrap_err().to_string();
    assert!(err.contains("symlink"), "{err}");

    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = StateDir::open(&real, true).unwrap_err().to_string();
    assert!(err.contains("group- or world-writable"), "{err}");

    let open_parent = tmp.path().join("open");
    std::fs::create_dir(&open_parent).unwrap();
    std::fs::set_permissions(&open_parent, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = StateDir::open(&open_parent.join("state"), true).unwrap_err().to_string();
    assert!(err.contains("writable by others"), "{err}");

    if euid() == 0 {
        let foreign = tmp.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::os::unix::fs::chown(&foreign, Some(65534), None).unwrap();
        let err = StateDir::open(&foreign, true).unwrap_err().to_string();
        assert!(err.contains("owned by uid 65534"), "{err}");
    }
}

#[test]
fn a_new_state_dir_is_private() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = StateDir::open(&tmp.path().join("a/b"), true).unwrap();
    assert_eq!(std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777, 0o700);
}

#[test]
fn a_second_lock_is_refused_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = StateDir::open(tmp.path(), false).unwrap();
    let held = lock(&dir, DIR_LOCK, "the state directory").unwrap();
    // flock locks belong to the open file description: a second open conflicts.
    let err = lock(&dir, DIR_LOCK, "the state directory").unwrap_err().to_string();
    assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
    assert_eq!(holder(&tmp.path().join(DIR_LOCK)).unwrap(), Some(std::process::id()));
    drop(held);
    assert!(!tmp.path().join(DIR_LOCK).exists(), "a released lock leaves no file behind");
    let _again = lock(&dir, DIR_LOCK, "the state directory").unwrap();
    assert_eq!(holder(&tmp.path().join(DIR_LOCK)).unwrap(), Some(std::process::id()));
}

#[test]
fn a_lock_file_unlinked_by_its_last_holder_is_not_taken() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = StateDir::open(tmp.path(), false).unwrap();
    let held = lock(&dir, DIR_LOCK, "the state directory").unwrap();
    // A contender that opened the file before the holder released it: once it gets the
    // lock, the name no longer leads to that file, so it must not count as taken.
    let stale = dir.open_file(DIR_LOCK, libc::O_RDWR, 0).unwrap();
    drop(held);
    assert!(!dir.names(DIR_LOCK, &stale).unwrap());
    let fresh = lock(&dir, DIR_LOCK, "the state directory").unwrap();
    assert!(dir.names(DIR_LOCK, &fresh.file).unwrap());
}
