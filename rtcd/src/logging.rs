//! Log setup: tracing to stderr, human-readable or JSON, filtered by `[logger] level`.
//!
//! Security events go to the `audit` target (see `auth`), so operators can route or
//! retain them separately (`level = "info,audit=info"`).

use crate::config::LoggerConfig;

/// Installs the global subscriber. Safe to call twice (the second call is ignored), which
/// tests that start several daemons in one process rely on.
pub fn init(config: &LoggerConfig) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if config.json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.with_ansi(false).try_init()
    };
}
