//! What an rtcd host announces of itself in the cluster store (under [`HOSTS_PREFIX`], bound
//! to its lease), what the proxies read, and the keys of the rooms' placement claims (under
//! [`CLAIMS_PREFIX`]): written once here, since both sides must read them alike.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// The prefix of every host's announcement.
pub const HOSTS_PREFIX: &str = "hosts/";

/// The prefix of the rooms' placement claims: `claims/<tenant>/<room>`, whose value is the
/// host key ([`HostAnnouncement::host_key`]) of the room's host. Proxies write them, hosts
/// release those of their rooms that ended.
pub const CLAIMS_PREFIX: &str = "claims/";

/// The announcement key of the host with `host_key`.
pub fn announcement_key(host_key: &str) -> String {
    format!("{HOSTS_PREFIX}{host_key}")
}

/// The claim key of `tenant`'s (a client ID's) `room`.
pub fn claim_key(tenant: &str, room: &str) -> String {
    format!("{CLAIMS_PREFIX}{tenant}/{room}")
}

/// The tenant and room a claim key names (client IDs hold no `/`; a room name may).
pub fn claimed_room(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix(CLAIMS_PREFIX)?.split_once('/')
}

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
    /// The host key the proxies place by and claims name: `<address>:<grpc_port>`
    /// (identical on every replica).
    pub fn host_key(&self) -> String {
        SocketAddr::new(self.address, self.grpc_port).to_string()
    }

    /// Its key in the store: `hosts/<host key>`.
    pub fn key(&self) -> String {
        announcement_key(&self.host_key())
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
        assert_eq!(a.host_key(), "10.0.0.7:8443");
        assert_eq!(HostAnnouncement::from_value(&a.to_value()), Ok(a.clone()));
        let v6 = HostAnnouncement {
            address: "fd00::7".parse().unwrap(),
            ..a
        };
        assert_eq!(v6.key(), "hosts/[fd00::7]:8443");
        assert!(HostAnnouncement::from_value(b"{\"address\":\"x\"}").is_err());
    }

    #[test]
    fn a_claim_key_names_its_tenant_and_room() {
        let key = claim_key("proxy-1", "team/standup");
        assert_eq!(key, "claims/proxy-1/team/standup");
        assert_eq!(claimed_room(&key), Some(("proxy-1", "team/standup")));
        assert_eq!(claimed_room("claims/no-room"), None);
        assert_eq!(claimed_room("hosts/10.0.0.7:8443"), None);
    }
}
