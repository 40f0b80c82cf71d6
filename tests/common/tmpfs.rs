//! Real small filesystems (root only): a tmpfs mounted for one test,
//! remounted smaller, larger or read-only, unmounted on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Set to `1` to skip the tests that need `mount` (not root, no tmpfs).
pub const NO_MOUNT_ENV: &str = "STORE_OUTBOX_NO_MOUNT";

/// A tmpfs mounted on a directory for one test; unmounted on drop (lazily if
/// something still holds it open). Declare it after the [`Agent`] whose data
/// directory it holds, or kill the agent first, so the agent is gone by then.
pub struct TmpfsMount {
    pub path: PathBuf,
}

impl TmpfsMount {
    /// Mounts a tmpfs with `options` (e.g. `size=2m`) on `path` (created if
    /// needed). Returns `None`, after saying so, when `STORE_OUTBOX_NO_MOUNT=1`;
    /// otherwise a failure to mount fails the test with what to do.
    pub fn new(path: &Path, options: &str, test: &str) -> Option<TmpfsMount> {
        if std::env::var(NO_MOUNT_ENV).is_ok_and(|v| v == "1") {
            println!("{test}: SKIPPED ({NO_MOUNT_ENV}=1: no tmpfs mount)");
            return None;
        }
        std::fs::create_dir_all(path).expect("mount point");
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "{test} mounts a tmpfs and must run as root (uid {euid} here); set {NO_MOUNT_ENV}=1 to skip it"
        );
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "{test}: `mount -t tmpfs -o {options} tmpfs {}` failed: {}; the test needs root and tmpfs \
             (set {NO_MOUNT_ENV}=1 to skip it)",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Some(TmpfsMount {
            path: path.to_path_buf(),
        })
    }

    /// `mount -o remount,<options>`: e.g. `size=8m` or `ro`.
    pub fn remount(&self, options: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "remount,{options} {}: {}",
            self.path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}
