//! The `[cluster]` settings both daemons read: where etcd is, how to reach it safely, and the
//! deployment's key prefix.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[cluster]`: empty `etcd_endpoints` (the default) is the single-host / DNS mode, in which
/// nothing here is used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// etcd's client URLs (`http://10.0.0.5:2379`, `https://etcd-0.etcd:2379`); several
    /// members of one cluster, tried in turn when one does not answer.
    pub etcd_endpoints: Vec<String>,
    /// Every key this deployment writes starts with it, so several deployments can share one
    /// etcd (and its permissions can be limited to the prefix). Must end with `/`, so that
    /// `/rtcd/` and `/rtcd2/` cannot overlap.
    pub key_prefix: String,
    /// PEM CA bundle that signed the etcd members' certificates (`https` endpoints). Empty:
    /// the WebPKI roots.
    pub tls_ca_file: String,
    /// PEM client certificate for etcd's client-certificate authentication (with
    /// `tls_key_file`; `https` endpoints only).
    pub tls_cert_file: String,
    /// PEM key of `tls_cert_file`.
    pub tls_key_file: String,
    /// The deadline of every call to etcd, failover to another member included.
    pub request_timeout_ms: u64,
    /// rtcd: the IP address the proxies reach this host's gRPC and HTTP API at, announced in
    /// the store (empty: the address of `grpc.listen_address` when that is a specific one).
    /// The proxy does not read it.
    pub advertise_address: String,
    /// The time to live of this process's lease (its announcement and claims): how long after
    /// its death the cluster still believes in it, unless it revoked the lease on the way out.
    pub lease_ttl_s: u64,
    /// rtcd: how long its copy of the bans, revocations and room policies may go without
    /// following the store before new joins are refused (fail closed: a ban written meanwhile
    /// could be missed). Sessions already in, resumes and token refreshes are checked against
    /// the copy as it is. The proxy does not read it.
    pub stale_limit_s: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            etcd_endpoints: Vec::new(),
            key_prefix: "/rtcd/".into(),
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            request_timeout_ms: 2_000,
            advertise_address: String::new(),
            lease_ttl_s: 10,
            stale_limit_s: 30,
        }
    }
}

impl Settings {
    /// Whether the cluster mode is on (`etcd_endpoints` set).
    pub fn enabled(&self) -> bool {
        !self.etcd_endpoints.is_empty()
    }

    /// [`Settings::request_timeout_ms`] as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// [`Settings::lease_ttl_s`] as a duration.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_s)
    }

    /// [`Settings::stale_limit_s`] as a duration.
    pub fn stale_limit(&self) -> Duration {
        Duration::from_secs(self.stale_limit_s)
    }

    /// What is wrong with the settings, as `(key, reason)` (keys as `cluster.<name>`);
    /// checked at start, so a bad endpoint or file fails there and not at the first join.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.enabled() {
            return Ok(());
        }
        let mut https = None;
        for url in &self.etcd_endpoints {
            let secure = endpoint_scheme(url).map_err(|e| ("cluster.etcd_endpoints", e))?;
            if *https.get_or_insert(secure) != secure {
                return Err((
                    "cluster.etcd_endpoints",
                    "mixes http:// and https:// endpoints; one cluster uses one".into(),
                ));
            }
        }
        let https = https.unwrap_or(false);
        if !self.key_prefix.starts_with('/') || !self.key_prefix.ends_with('/') {
            return Err((
                "cluster.key_prefix",
                format!(
                    "{:?} must start and end with '/' (e.g. \"/rtcd/\"), so that two deployments' prefixes cannot overlap",
                    self.key_prefix
                ),
            ));
        }
        if self.key_prefix.len() > 256 || self.key_prefix.chars().any(char::is_control) {
            return Err((
                "cluster.key_prefix",
                "must be at most 256 printable characters".into(),
            ));
        }
        let files = [
            ("cluster.tls_ca_file", &self.tls_ca_file),
            ("cluster.tls_cert_file", &self.tls_cert_file),
            ("cluster.tls_key_file", &self.tls_key_file),
        ];
        for (key, file) in files {
            if file.is_empty() {
                continue;
            }
            if !https {
                return Err((
                    key,
                    "is set but the endpoints are http://; use https://".into(),
                ));
            }
            if let Err(e) = std::fs::read(Path::new(file)) {
                return Err((key, format!("cannot read {file}: {e}")));
            }
        }
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            return Err((
                "cluster.tls_cert_file",
                "tls_cert_file and tls_key_file are set together or not at all".into(),
            ));
        }
        if !(100..=60_000).contains(&self.request_timeout_ms) {
            return Err(("cluster.request_timeout_ms", "must be 100-60000".into()));
        }
        if !self.advertise_address.is_empty()
            && self.advertise_address.parse::<std::net::IpAddr>().is_err()
        {
            return Err((
                "cluster.advertise_address",
                format!("{:?} is not an IP address", self.advertise_address),
            ));
        }
        if !(2..=300).contains(&self.lease_ttl_s) {
            return Err(("cluster.lease_ttl_s", "must be 2-300".into()));
        }
        if !(1..=3_600).contains(&self.stale_limit_s) {
            return Err(("cluster.stale_limit_s", "must be 1-3600".into()));
        }
        Ok(())
    }
}

/// Whether `url` is an `https://` endpoint (false: `http://`), or why it is no endpoint.
fn endpoint_scheme(url: &str) -> Result<bool, String> {
    let (secure, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(format!("{url:?} is not an http:// or https:// URL"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let port_ok = authority
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if authority.contains('/') || !port_ok {
        return Err(format!(
            "{url:?} must be scheme://host:port (e.g. http://10.0.0.5:2379), nothing after it"
        ));
    }
    Ok(secure)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(endpoints: &[&str]) -> Settings {
        Settings {
            etcd_endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
            ..Settings::default()
        }
    }

    #[test]
    fn the_default_is_the_single_host_mode_and_valid() {
        let s = Settings::default();
        assert!(!s.enabled());
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn endpoints_must_be_urls_with_a_port_and_one_scheme() {
        assert_eq!(
            with(&["http://127.0.0.1:2379", "http://[::1]:2380"]).validate(),
            Ok(())
        );
        for bad in [
            "127.0.0.1:2379",
            "http://etcd",
            "http://etcd:0",
            "http://etcd:2379/v3",
            "unix:///x",
        ] {
            let err = with(&[bad]).validate().unwrap_err();
            assert_eq!(err.0, "cluster.etcd_endpoints", "{bad}");
            assert!(err.1.contains(bad), "{bad}: {}", err.1);
        }
        let mixed = with(&["http://a:2379", "https://b:2379"])
            .validate()
            .unwrap_err();
        assert!(mixed.1.contains("mixes"), "{mixed:?}");
    }

    #[test]
    fn prefixes_cannot_overlap_and_tls_files_need_https() {
        let mut s = with(&["http://a:2379"]);
        s.key_prefix = "/rtcd".into();
        assert_eq!(s.validate().unwrap_err().0, "cluster.key_prefix");
        s.key_prefix = "/team-a/rtcd/".into();
        assert_eq!(s.validate(), Ok(()));
        s.tls_ca_file = "/etc/hostname".into();
        assert_eq!(s.validate().unwrap_err().0, "cluster.tls_ca_file");
        s.etcd_endpoints = vec!["https://a:2379".into()];
        assert_eq!(s.validate(), Ok(()));
        s.tls_cert_file = "/etc/hostname".into();
        assert_eq!(s.validate().unwrap_err().0, "cluster.tls_cert_file");
        s.tls_ca_file = "/nonexistent/ca.pem".into();
        assert!(s.validate().unwrap_err().1.contains("/nonexistent/ca.pem"));
    }

    #[test]
    fn deadlines_and_leases_are_bounded() {
        let mut s = with(&["http://a:2379"]);
        s.request_timeout_ms = 0;
        assert_eq!(s.validate().unwrap_err().0, "cluster.request_timeout_ms");
        s.request_timeout_ms = 2_000;
        s.lease_ttl_s = 1;
        assert_eq!(s.validate().unwrap_err().0, "cluster.lease_ttl_s");
        s.lease_ttl_s = 10;
        s.stale_limit_s = 0;
        assert_eq!(s.validate().unwrap_err().0, "cluster.stale_limit_s");
        s.stale_limit_s = 30;
        s.advertise_address = "rtcd-0.rtcd".into();
        assert_eq!(s.validate().unwrap_err().0, "cluster.advertise_address");
        s.advertise_address = "10.0.0.7".into();
        assert_eq!(s.validate(), Ok(()));
    }
}
