//! A LAN-like network namespace created by the test itself, for clients that gather no
//! loopback ICE candidates (Firefox; stack.md §7 and §9).
//!
//! [`run`] starts a dedicated OS thread that leaves the process's network namespace
//! (`unshare(CLONE_NEWNET)`, which moves only the calling thread), brings up `lo` and a veth
//! pair with both ends inside the new namespace ([`LAN_ADDR`] and [`LAN_PEER`], a default
//! route via the peer end), then runs a tokio runtime on that thread. Everything the test body
//! starts inherits the namespace: threads created from a thread share its namespace
//! (`clone(CLONE_THREAD)` copies the caller's `nsproxy`), and so do child processes (the
//! browsers, `ip`). Sockets created there can reach only `lo` and the two veth ends, so
//! nothing leaves the namespace; it disappears with its last thread and process.
//!
//! Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and `ip` (iproute2), as the suite has.

use std::future::Future;
use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context as _, bail};

/// The namespace's main address: servers bind to it (or to `127.0.0.1`), ICE candidates use it.
pub const LAN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 1);
/// The other end of the veth pair (the default gateway; inside the same namespace).
pub const LAN_PEER: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 2);

/// Worker threads of the namespace's runtime (the machine running the suite has 2 cores).
const WORKER_THREADS: usize = 2;

/// Runs `body` on a tokio runtime inside a fresh network namespace with `lo` and a veth pair
/// ([`LAN_ADDR`] <-> [`LAN_PEER`], default route via [`LAN_PEER`]). Blocks until it returns.
pub fn run<F, Fut, T>(body: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
    T: Send + 'static,
{
    run_on_thread("lan-netns", enter, body)
}

/// Runs `body` on a tokio runtime on a dedicated thread named `name`, after `enter` moved that
/// thread into namespaces of its own (`unshare` moves only the calling thread; the runtime's
/// workers and every child process inherit them). Blocks until `body` returns; a panic in it
/// is resumed here. Also [`crate::mountns`]'s.
pub(crate) fn run_on_thread<F, Fut, T>(
    name: &str,
    enter: impl FnOnce() -> anyhow::Result<()> + Send + 'static,
    body: F,
) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
    T: Send + 'static,
{
    let workers = format!("{name}-worker");
    let thread =
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || -> anyhow::Result<T> {
                enter()?;
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(WORKER_THREADS)
                    .thread_name(workers)
                    .enable_all()
                    .build()?;
                let result = runtime.block_on(body());
                // Children (browsers, rtcd) were killed by their owners' drops inside `body`; give
                // the runtime's tasks a moment to wind down rather than waiting for stragglers.
                runtime.shutdown_timeout(std::time::Duration::from_secs(5));
                result
            })?;
    match thread.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Moves the calling thread into a new network namespace and configures it.
fn enter() -> anyhow::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context(
        "unshare(CLONE_NEWNET) failed: the LAN-namespace tests need root (CAP_SYS_ADMIN)",
    )?;
    let a = format!("{LAN_ADDR}/24");
    let b = format!("{LAN_PEER}/24");
    let peer = LAN_PEER.to_string();
    for args in [
        &["link", "set", "lo", "up"][..],
        &["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
        &["addr", "add", &a, "dev", "v0"],
        &["addr", "add", &b, "dev", "v1"],
        &["link", "set", "v0", "up"],
        &["link", "set", "v1", "up"],
        &["route", "add", "default", "via", &peer],
    ] {
        ip(args)?;
    }
    Ok(())
}

/// Runs `ip ARGS` (in the calling thread's namespace).
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context(
        "cannot run `ip`: the LAN-namespace tests need iproute2 (apt-get install iproute2)",
    )?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Loads nft `rules` (an `nft -f` script) into the calling thread's namespace: the tests' way
/// to cut paths (UDP blocked, a device's old addresses gone).
pub async fn nft(rules: &str) -> anyhow::Result<()> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("nft (Debian's nftables) is needed to cut network paths in the tests")?;
    use tokio::io::AsyncWriteExt as _;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(rules.as_bytes())
        .await?;
    let status = child.wait().await?;
    if !status.success() {
        bail!("nft refused the rules: {status}\n{rules}");
    }
    Ok(())
}

/// The network namespace of the calling thread (`net:[inode]`), for checks.
pub fn current_namespace() -> anyhow::Result<String> {
    Ok(std::fs::read_link("/proc/thread-self/ns/net")?
        .display()
        .to_string())
}
