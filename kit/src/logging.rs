//! Log set-up: tracing to stderr, human-readable or one JSON object per line, filtered by the
//! daemon's `[logger] level`. Security events go to the `audit` target in both daemons, so an
//! operator can route or keep them apart (`level = "info,audit=info"`).

use serde::{Deserialize, Serialize};

/// `[logger]`, the same in both daemons.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggerConfig {
    /// A tracing filter directive, e.g. `info` or `info,rtcd::auth=debug`.
    pub level: String,
    /// One JSON object per line instead of human-readable text.
    pub json: bool,
}

impl Default for LoggerConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            json: false,
        }
    }
}

impl LoggerConfig {
    /// Whether `level` is a filter tracing accepts (checked at start, so a typo is an error
    /// rather than a daemon that logs nothing).
    pub fn validate(&self) -> Result<(), String> {
        tracing_subscriber::EnvFilter::try_new(&self.level)
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// Installs the global subscriber with `filter` (a daemon may add its own directives to the
/// configured level first). Safe to call twice (the second call is ignored), which tests that
/// start several daemons in one process rely on.
pub fn init(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.with_ansi(false).try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_level_is_refused_with_the_parser_message() {
        assert!(LoggerConfig::default().validate().is_ok());
        let bad = LoggerConfig {
            level: "info,audit=loud".into(),
            json: false,
        };
        assert!(!bad.validate().unwrap_err().is_empty());
    }
}
