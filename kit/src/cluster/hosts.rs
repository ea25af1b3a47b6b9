//! What an rtcd host announces of itself in the cluster store (under [`HOSTS_PREFIX`], bound
//! to its lease), and what the proxies read: written once here, since both sides must read it
//! alike.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// The prefix of every host's announcement.
pub const HOSTS_PREFIX: &str = "hosts/";

/// One rtcd host, as it announces itself. Proxies reach its gRPC listener at
/// `address:grpc_port` and its HTTP API at `address:api_port`, with the scheme and TLS server
/// name of their own `rtcd.url` (every host of a deployment is set up alike).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostAnnouncement {
    /// The address proxies reach it at.
    pub address: IpAddr,
    /// Its gRPC (signaling and rooms) port.
    pub grpc_port: u16,
    /// Its HTTP API port (login, `/readyz`, `/system`).
    pub api_port: u16,
    /// Its load as `/system` reports it (the largest of CPU use, the share of its session
    /// capacity in use and of its forwarding budget); rewritten when its level
    /// (`rtcd_proto::rules::load_level`) changes.
    pub load: f64,
    /// The same without CPU use (for proxies with `rtcd.cpu_weighted_placement = false`).
    pub media_load: f64,
    /// Draining (shutting down): no new rooms; the rooms it has stay until they end.
    pub draining: bool,
}

impl HostAnnouncement {
    /// Its key in the store: `hosts/<address>:<grpc_port>`, the host key the proxies use for
    /// placement (identical on every replica).
    pub fn key(&self) -> String {
        format!(
            "{HOSTS_PREFIX}{}",
            SocketAddr::new(self.address, self.grpc_port)
        )
    }

    /// The announcement as stored.
    pub fn to_value(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// An announcement read from the store, or why it is not one.
    pub fn from_value(value: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(value).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announcement_round_trips_under_its_host_key() {
        let a = HostAnnouncement {
            address: "10.0.0.7".parse().unwrap(),
            grpc_port: 8443,
            api_port: 8045,
            load: 0.3,
            media_load: 0.1,
            draining: false,
        };
        assert_eq!(a.key(), "hosts/10.0.0.7:8443");
        assert_eq!(HostAnnouncement::from_value(&a.to_value()), Ok(a.clone()));
        let v6 = HostAnnouncement {
            address: "fd00::7".parse().unwrap(),
            ..a
        };
        assert_eq!(v6.key(), "hosts/[fd00::7]:8443");
        assert!(HostAnnouncement::from_value(b"{\"address\":\"x\"}").is_err());
    }
}
