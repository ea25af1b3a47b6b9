//! rtcd's log policy on top of the service kit's set-up (`rtcd_kit::logging`): the media
//! engine's crates are quiet unless named. Security events go to the `audit` target (see
//! `auth`).

use crate::config::LoggerConfig;

/// The media engine's crates (webrtc-rs 0.21's sans-IO `rtc` family). They log their own internals at WARN during
/// every normal call (candidate pings before pairs exist, SRTP readers ending at close, a
/// paused receiver resuming): nothing an operator can act on, and an operator who learns to
/// ignore WARN misses the real one. rtcd reports what matters itself (a failed peer connection
/// ends its session with a reason), so these crates log at ERROR unless the configured filter
/// names one of them.
const ENGINE_CRATES: &[&str] = &[
    // `rtc::`, not `rtc`: a filter directive matches every target that starts with its text, and
    // `rtc` would silence rtcd's own logs.
    "rtc::",
    "rtc_ice",
    "rtc_dtls",
    "rtc_srtp",
    "rtc_sctp",
    "rtc_mdns",
    "rtc_shared",
    "rtc_datachannel",
    "rtc_interceptor",
    "rtc_rtp",
    "rtc_rtcp",
    "rtc_sdp",
    "rtc_stun",
    "rtc_turn",
    "rtc_crypto",
    "rtc_media",
];

/// `level` plus ERROR for the engine's crates where it says nothing about them.
pub fn filter_directives(level: &str) -> String {
    let mut out = level.to_owned();
    for krate in ENGINE_CRATES {
        let name = krate.trim_end_matches(':');
        let named = level
            .split(',')
            .any(|d| d.trim().split(['=', '[', ':']).next() == Some(name));
        if !named {
            out.push_str(&format!(",{krate}=error"));
        }
    }
    out
}

/// Installs the global subscriber (a second call is ignored, which tests that start several
/// daemons in one process rely on).
pub fn init(config: &LoggerConfig) {
    rtcd_kit::logging::init(&filter_directives(&config.level), config.json);
}

#[cfg(test)]
mod tests {
    #[test]
    fn engine_crates_log_errors_only_unless_named() {
        let f = super::filter_directives("info");
        assert!(f.starts_with("info,"));
        assert!(f.contains(",rtc::=error") && f.contains(",rtc_dtls=error"));
        // rtcd's own logs stay on (a bare `rtc` directive is a prefix of `rtcd`), rtc's go.
        let filter = tracing_subscriber::EnvFilter::try_new(&f).expect("a valid filter");
        let subscriber = tracing_subscriber::fmt().with_env_filter(filter).finish();
        tracing::subscriber::with_default(subscriber, || {
            assert!(tracing::enabled!(target: "rtcd::sfu", tracing::Level::INFO));
            assert!(tracing::enabled!(target: "rtcd", tracing::Level::INFO));
            assert!(!tracing::enabled!(target: "rtc::peer_connection", tracing::Level::WARN));
            assert!(!tracing::enabled!(target: "rtc_dtls::config", tracing::Level::WARN));
            assert!(tracing::enabled!(target: "rtc::peer_connection", tracing::Level::ERROR));
        });
        let f = super::filter_directives("debug,rtc_ice=warn");
        assert!(f.contains("rtc_ice=warn") && !f.contains("rtc_ice=error"));
        assert!(f.contains(",rtc::=error"), "rtc_ice does not name rtc");
        tracing_subscriber::EnvFilter::try_new(super::filter_directives("info,audit=info"))
            .expect("a valid filter");
    }
}
