//! `udp-relay`'s command line: what it refuses, it refuses with a clear error and a failing
//! exit status, before binding anything (the relay itself is tested in `raw`'s unit tests and
//! in the long tier's `loadgen::smoke_against_the_raw_relay`).

use std::process::{Command, Output};

fn relay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_udp-relay"))
        .args(args)
        .output()
        .expect("udp-relay runs")
}

fn refused(args: &[&str], why: &str) {
    let out = relay(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} was accepted: {stderr}");
    assert!(stderr.contains(why), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?} printed an address");
}

#[test]
fn an_unknown_option_is_refused_with_the_usage() {
    refused(
        &["--batch"],
        "unknown option --batch (usage: udp-relay [--batched] [ADDRESS])",
    );
    refused(
        &["--batched", "-x", "127.0.0.1:0"],
        "unknown option -x (usage: udp-relay [--batched] [ADDRESS])",
    );
}

#[test]
fn a_bad_address_is_refused_in_either_mode() {
    refused(
        &["--batched", "localhost:nope"],
        "bad address localhost:nope",
    );
    refused(&["--batched", "127.0.0.1"], "bad address 127.0.0.1");
    // The plain relay resolves its address as std does: an unknown port is an error too.
    refused(&["127.0.0.1:nope"], "invalid port value");
}
