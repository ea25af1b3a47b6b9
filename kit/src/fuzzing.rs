//! What the daemons' fuzz entry points (`rtcd::fuzzing`, `rtcd_proxy::fuzzing`) and the unit
//! tests replaying their corpora share. Not an API: hidden from the docs, used by the fuzz
//! targets in `fuzz/` and by `cargo test`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why a fuzz input is not run through a parser at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not UTF-8 where the transport guarantees text.
    NotText,
    /// An input the harness will not run (it names a device or kernel file).
    Skipped(&'static str),
}

/// Configs with a value naming one of these are not loaded: validation reads the files a
/// config names, and a fuzzer must not block on (or read without end from) a device or a
/// kernel file. (Comments may name them: the samples mention `/dev/urandom`.)
const UNSAFE_PATHS: [&str; 4] = ["/dev", "/proc", "/sys", "/run"];

/// Whether a TOML text or an environment value names one of [`UNSAFE_PATHS`].
fn names_unsafe_path(text: &str, env: &[(String, String)]) -> bool {
    fn unsafe_value(v: &toml::Value) -> bool {
        match v {
            toml::Value::String(s) => UNSAFE_PATHS.iter().any(|p| s.contains(p)),
            toml::Value::Array(items) => items.iter().any(unsafe_value),
            toml::Value::Table(t) => t.values().any(unsafe_value),
            _ => false,
        }
    }
    env.iter()
        .any(|(_, v)| UNSAFE_PATHS.iter().any(|p| v.contains(p)))
        || text
            .parse::<toml::Table>()
            .is_ok_and(|t| t.values().any(unsafe_value))
}

/// Environment variables as the config loaders take them.
pub type Env = Vec<(String, String)>;

/// Splits a config fuzz input: TOML text, then (after the first NUL byte) `NAME=value` lines
/// as the environment, the way both daemons' config targets take it.
pub fn config_input(data: &[u8]) -> Result<(&str, Env), Refused> {
    let (text, env) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &data[..0]),
    };
    let text = std::str::from_utf8(text).map_err(|_| Refused::NotText)?;
    let env = std::str::from_utf8(env).map_err(|_| Refused::NotText)?;
    let env: Env = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    if names_unsafe_path(text, &env) {
        return Err(Refused::Skipped("names a device or kernel file"));
    }
    Ok((text, env))
}

/// Every file of `fuzz/corpus/<target>/`, sorted (at least three, or the corpus is broken).
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).expect("corpus file");
            (p, bytes)
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "{}: a corpus of at least three inputs",
        dir.display()
    );
    files
}

/// Replays `target`'s corpus through its entry function `f`, so the fuzz targets run
/// (briefly) in every `cargo test`, on stable, and every crash ever found stays a regression
/// test. A panic names the file. Returns how many inputs were accepted (`--nocapture` shows
/// each input's outcome).
pub fn replay<T, E: std::fmt::Display>(target: &str, f: impl Fn(&[u8]) -> Result<T, E>) -> usize {
    let started = Instant::now();
    let mut accepted = 0;
    for (path, bytes) in corpus(target) {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&bytes)));
        match result {
            Ok(Ok(_)) => {
                println!("{}: accepted", path.display());
                accepted += 1;
            }
            Ok(Err(e)) => println!("{}: refused: {e}", path.display()),
            Err(_) => panic!("{} panicked", path.display()),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{target}: the corpus took {:?}",
        started.elapsed()
    );
    accepted
}
