//! A private mount namespace created by the test itself, for filesystems a test mounts (a
//! small tmpfs that fills up): nothing it mounts is ever seen by the host, even if the test
//! crashes before unmounting.
//!
//! [`run`] starts a dedicated OS thread that leaves the process's mount namespace
//! (`unshare(CLONE_NEWNS)`, which moves only the calling thread, like [`crate::netns`]'s
//! network namespace), makes every mount in it private (`mount --make-rprivate /`: without it
//! a mount under a shared mount, as systemd makes `/`, would propagate back to the host's
//! namespace), then runs a tokio runtime on that thread. Threads and child processes the test
//! body starts (its runtime's workers, an rtcd process, ffmpeg) inherit the namespace; it and
//! its mounts disappear with its last thread and process.
//!
//! Needs root (CAP_SYS_ADMIN) and util-linux's `mount`, as the suite has.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// Runs `body` on a tokio runtime inside a fresh, private mount namespace. Blocks until it
/// returns.
pub fn run<F, Fut, T>(body: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
    T: Send + 'static,
{
    crate::netns::run_on_thread(
        "mountns",
        || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context(
                "unshare(CLONE_NEWNS) failed: the mount-namespace tests need root (CAP_SYS_ADMIN)",
            )?;
            mount(&["--make-rprivate", "/"])
        },
        body,
    )
}

/// Runs `mount ARGS` (in the calling thread's mount namespace).
fn mount(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("mount")
        .args(args)
        .output()
        .context("cannot run `mount` (util-linux)")?;
    if !out.status.success() {
        bail!(
            "mount {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A tmpfs mounted over a directory (inside [`run`]'s namespace), unmounted when dropped
/// (lazily, so a process still holding a file cannot keep it; the namespace's end would
/// release it anyway).
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` over `path` (mode 0700, as rtcd wants its directories).
    pub fn mount(path: &Path, bytes: u64) -> anyhow::Result<Self> {
        let options = format!("size={bytes},mode=0700");
        let target = path.to_str().context("a UTF-8 mount point")?;
        mount(&["-t", "tmpfs", "-o", &options, "tmpfs", target])?;
        Ok(Self {
            path: path.to_owned(),
        })
    }

    /// Its free space for an unprivileged writer (`f_bavail * f_bsize`, what rtcd's floor is
    /// checked against).
    pub fn available(&self) -> anyhow::Result<u64> {
        available(&self.path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Free space for an unprivileged writer on `path`'s filesystem (`stat -f`).
pub fn available(path: &Path) -> anyhow::Result<u64> {
    let out = Command::new("stat")
        .args(["-f", "-c", "%a %S"])
        .arg(path)
        .output()
        .context("running stat -f")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(blocks)), Some(Ok(size))) => Ok(blocks * size),
        _ => bail!("stat -f {}: {text}", path.display()),
    }
}
