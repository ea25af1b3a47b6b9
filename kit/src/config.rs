//! Loading a daemon's typed configuration, the same way in both daemons: the struct's
//! defaults, then a TOML file, then environment variables, then the daemon's own validation.
//!
//! Every setting `section.key` can be overridden by `<PREFIX>SECTION_KEY` (e.g.
//! `RTCD_API_HTTP_LISTEN_ADDRESS`). The set of variables and the type of each are derived from
//! the defaults, so a new field gets its variable with no extra code; an unknown prefixed
//! variable is an error, because a typo must not silently do nothing. What a setting may be
//! (ranges, files that must exist) stays in each daemon's `validate`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a configuration could not be read; every message names the file, key or variable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file named on the command line.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a wrong type.
    #[error("invalid config {origin}: {message}")]
    Parse {
        /// The file, or `<environment>`.
        origin: String,
        /// The parser's message, naming the key and position.
        message: String,
    },
    /// An environment variable could not be applied.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The process environment for [`overlay`]. `std::env::vars` panics on a variable that is not
/// valid UTF-8 (anywhere in the environment, not only ours); here such a value is passed on
/// lossily, and [`overlay`] refuses it if it is one of the daemon's variables (a clear error
/// at start instead of a panic). Names that are not UTF-8 cannot be ours and are skipped.
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            let value = value
                .into_string()
                .unwrap_or_else(|raw| raw.to_string_lossy().into_owned());
            Some((name, value))
        })
        .collect()
}

/// How one daemon names its variables.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Prefix of every variable, e.g. `RTCD_`.
    pub prefix: &'a str,
    /// Where an operator finds the list of settings, for the unknown-variable message.
    pub sample: &'a str,
}

/// The TOML file at `path` as a table (an empty table without a file).
pub fn read_file(path: Option<&Path>) -> Result<toml::Table, LoadError> {
    let Some(path) = path else {
        return Ok(toml::Table::new());
    };
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, Some(path))
}

/// A config file's text as a table; `path` names it in errors. (`read_file` without the read,
/// for loading configs from memory: the daemons' fuzz targets.)
pub fn parse(text: &str, path: Option<&Path>) -> Result<toml::Table, LoadError> {
    text.parse::<toml::Table>().map_err(|e| LoadError::Parse {
        origin: path.map_or("<config>".into(), |p| p.display().to_string()),
        message: e.to_string(),
    })
}

/// Overlays the `source.prefix` variables of `env` onto `table` (a file's settings), each typed
/// like `C::default()`'s value at its path, and deserializes the result. `path` names the file
/// in parse errors.
pub fn overlay<C>(
    mut table: toml::Table,
    path: Option<&Path>,
    source: Source<'_>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<C, LoadError>
where
    C: Serialize + DeserializeOwned + Default,
{
    let defaults =
        toml::Table::try_from(C::default()).expect("a default config serializes to a table");
    let leaves = variables(&defaults, source.prefix);
    for (var, raw) in env {
        if !var.starts_with(source.prefix) {
            continue;
        }
        let fail = |message: String| LoadError::Env {
            var: var.clone(),
            message,
        };
        let (path, default) = leaves.get(&var).ok_or_else(|| {
            fail(format!(
                "not a known setting (see {} for the list)",
                source.sample
            ))
        })?;
        if raw.contains(char::REPLACEMENT_CHARACTER) {
            return Err(fail("is not valid UTF-8 text".into()));
        }
        let value = typed_like(default, &raw).map_err(fail)?;
        set_path(&mut table, path, value).map_err(fail)?;
    }
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| LoadError::Parse {
            origin: path.map_or("<environment>".into(), |p| p.display().to_string()),
            message: e.to_string(),
        })
}

/// Every leaf setting of `tree` by the variable that overrides it: its TOML path and value.
/// (Also what a daemon's tests use to check that its sample config shows every setting.)
pub fn variables(tree: &toml::Table, prefix: &str) -> BTreeMap<String, (Vec<String>, toml::Value)> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<(Vec<String>, &toml::Table)> = vec![(Vec::new(), tree)];
    while let Some((path, table)) = stack.pop() {
        for (key, value) in table {
            let mut here = path.clone();
            here.push(key.clone());
            match value {
                toml::Value::Table(inner) => stack.push((here, inner)),
                leaf => {
                    let var = format!("{prefix}{}", here.join("_").to_uppercase());
                    out.insert(var, (here, leaf.clone()));
                }
            }
        }
    }
    out
}

/// `raw` as a value of `default`'s type: strings as they are; booleans as
/// true/false/1/0/yes/no/on/off; numbers; arrays as JSON (`[...]`) or comma-separated strings.
fn typed_like(default: &toml::Value, raw: &str) -> Result<toml::Value, String> {
    let trimmed = raw.trim();
    match default {
        toml::Value::String(_) => Ok(toml::Value::String(raw.to_owned())),
        toml::Value::Boolean(_) => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(toml::Value::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(toml::Value::Boolean(false)),
            _ => Err(format!("expected true or false, got `{raw}`")),
        },
        toml::Value::Integer(_) => trimmed
            .parse()
            .map(toml::Value::Integer)
            .map_err(|_| format!("expected an integer, got `{raw}`")),
        toml::Value::Float(_) => trimmed
            .parse()
            .map(toml::Value::Float)
            .map_err(|_| format!("expected a number, got `{raw}`")),
        toml::Value::Array(_) if trimmed.starts_with('[') => {
            let json: serde_json::Value =
                serde_json::from_str(trimmed).map_err(|e| format!("expected a JSON array: {e}"))?;
            toml::Value::try_from(json).map_err(|e| format!("unsupported array: {e}"))
        }
        toml::Value::Array(_) => Ok(toml::Value::Array(
            trimmed
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        )),
        other => Err(format!(
            "a {} cannot be set from the environment",
            other.type_str()
        )),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().expect("leaf paths are never empty");
    let mut node = table;
    for key in parents {
        node = match node
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(t) => t,
            _ => {
                return Err(format!(
                    "the config file has `{key}` as a value, not a section"
                ));
            }
        };
    }
    node.insert(last.clone(), value);
    Ok(())
}

/// A listen address: `ip:port`, `[v6]:port`, or `:port` for every IPv4 interface (the form
/// Mattermost's rtcd configs use). `example` is shown in the error, e.g. `127.0.0.1:8045`.
pub fn parse_listen_address(s: &str, example: &str) -> Result<SocketAddr, String> {
    let candidate = match s.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => s.to_owned(),
    };
    candidate.parse().map_err(|_| {
        let port = example.rsplit(':').next().unwrap_or("8080");
        format!("`{s}` is not an address like {example} or :{port}")
    })
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Sample {
        server: Server,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Server {
        listen_address: String,
        tls: bool,
        workers: u32,
        ratio: f64,
        names: Vec<String>,
    }

    impl Default for Server {
        fn default() -> Self {
            Self {
                listen_address: "127.0.0.1:1".into(),
                tls: false,
                workers: 1,
                ratio: 0.5,
                names: vec![],
            }
        }
    }

    const SOURCE: Source<'static> = Source {
        prefix: "T_",
        sample: "the sample",
    };

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn variables_override_the_file_typed_like_the_defaults() {
        let file: toml::Table = "[server]\nworkers = 4\ntls = true\n".parse().unwrap();
        let c: Sample = overlay(
            file,
            None,
            SOURCE,
            env(&[
                ("T_SERVER_WORKERS", " 8 "),
                ("T_SERVER_RATIO", "0.25"),
                ("T_SERVER_NAMES", "a, b,"),
                ("OTHER_VARIABLE", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.workers, 8);
        assert!(c.server.tls);
        assert_eq!(c.server.ratio, 0.25);
        assert_eq!(c.server.names, vec!["a", "b"]);
        let c: Sample = overlay(
            toml::Table::new(),
            None,
            SOURCE,
            env(&[("T_SERVER_NAMES", "[\"x,y\"]"), ("T_SERVER_TLS", "on")]),
        )
        .unwrap();
        assert_eq!(c.server.names, vec!["x,y"]);
        assert!(c.server.tls);
    }

    #[test]
    fn errors_name_the_variable_or_key() {
        let unknown = overlay::<Sample>(
            toml::Table::new(),
            None,
            SOURCE,
            env(&[("T_SERVER_WORKRES", "2")]),
        )
        .unwrap_err();
        assert!(
            unknown.to_string().contains("T_SERVER_WORKRES"),
            "{unknown}"
        );
        assert!(unknown.to_string().contains("the sample"), "{unknown}");
        let typed = overlay::<Sample>(
            toml::Table::new(),
            None,
            SOURCE,
            env(&[("T_SERVER_TLS", "maybe")]),
        )
        .unwrap_err();
        assert!(typed.to_string().contains("true or false"), "{typed}");
        let garbled = overlay::<Sample>(
            toml::Table::new(),
            None,
            SOURCE,
            env(&[("T_SERVER_LISTEN_ADDRESS", "127.0.0.1:\u{FFFD}")]),
        )
        .unwrap_err();
        assert!(garbled.to_string().contains("not valid UTF-8"), "{garbled}");
        let key = overlay::<Sample>(
            "[server]\nlisten_adress = \"x\"\n".parse().unwrap(),
            Some(Path::new("/etc/t.toml")),
            SOURCE,
            env(&[]),
        )
        .unwrap_err();
        assert!(key.to_string().contains("listen_adress"), "{key}");
        assert!(key.to_string().contains("/etc/t.toml"), "{key}");
        let section = overlay::<Sample>(
            "server = 3\n".parse().unwrap(),
            None,
            SOURCE,
            env(&[("T_SERVER_TLS", "true")]),
        )
        .unwrap_err();
        assert!(section.to_string().contains("not a section"), "{section}");
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen_address(":8045", "127.0.0.1:8045").unwrap(),
            "0.0.0.0:8045".parse().unwrap()
        );
        assert_eq!(
            parse_listen_address("[::1]:80", "127.0.0.1:8045").unwrap(),
            "[::1]:80".parse().unwrap()
        );
        let e = parse_listen_address("nowhere", "127.0.0.1:8045").unwrap_err();
        assert!(e.contains("127.0.0.1:8045 or :8045"), "{e}");
    }
}
