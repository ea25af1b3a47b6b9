//! Stamps the build with its git commit, date and compiler for `GET /version`.
//! Everything is optional: a build from a tarball without git still works.

use std::process::Command;

fn main() {
    let run = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    if let Some(hash) = run("git", &["rev-parse", "--short=12", "HEAD"]) {
        println!("cargo:rustc-env=RTCD_BUILD_HASH={hash}");
    }
    if let Some(date) = run("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]) {
        println!("cargo:rustc-env=RTCD_BUILD_DATE={date}");
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    if let Some(version) = run(&rustc, &["--version"]) {
        println!("cargo:rustc-env=RTCD_RUSTC_VERSION={version}");
    }
    // Rebuild when the commit changes. Only paths that exist: cargo reruns a build script on
    // every build when a watched path is missing (a git worktree has no `.git` directory, a
    // tarball none at all).
    let git_dir = run("git", &["rev-parse", "--absolute-git-dir"]);
    let common = run(
        "git",
        &["rev-parse", "--path-format=absolute", "--git-common-dir"],
    );
    let watched = [
        git_dir.map(|d| format!("{d}/HEAD")),
        common.clone().map(|d| format!("{d}/refs/heads")),
        common.map(|d| format!("{d}/packed-refs")),
    ];
    for path in watched.into_iter().flatten() {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
