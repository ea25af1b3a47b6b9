//! Which addresses a webhook may reach (the SSRF guard), checked when a tenant configures a
//! URL and again on every connection (a name can resolve elsewhere later: DNS rebinding).
//!
//! A tenant names the URLs, so without the guard any platform could make rtcd (which sits in
//! the operator's network) send requests to the operator's internal services. Refused unless
//! `[webhooks] allow_private_addresses`: loopback, private (RFC 1918, fc00::/7), link-local,
//! unspecified, multicast, broadcast, CGNAT (100.64/10), and IPv4 addresses embedded in IPv6
//! (mapped, NAT64) that are any of these. The delivery-time check is [`GuardedResolver`]: the
//! HTTP client connects only to addresses it returned, so the checked address is the one used.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Whether a webhook may connect to `ip` when private addresses are not allowed.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let segments = v6.segments();
            // NAT64 (64:ff9b::/96) reaches the embedded IPv4 address.
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = segments[6].to_be_bytes();
                let [c, d] = segments[7].to_be_bytes();
                return is_public_v4(Ipv4Addr::new(a, b, c, d));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (segments[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (segments[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || is_ipv4_compatible(v6))
        }
    }
}

/// `::a.b.c.d` (deprecated IPv4-compatible): refused outright rather than interpreted.
fn is_ipv4_compatible(v6: Ipv6Addr) -> bool {
    v6.segments()[..6].iter().all(|s| *s == 0)
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    !(v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || a == 0 // "this network" 0/8
        || v4.is_multicast()
        || v4.is_broadcast()
        || (a == 100 && (b & 0xc0) == 64)) // CGNAT 100.64/10
}

/// Whether `ip` may be reached under the `allow_private` setting.
pub fn allowed(ip: IpAddr, allow_private: bool) -> bool {
    allow_private || is_public(ip)
}

/// The HTTP client's name resolver: the system resolver, with every address the guard refuses
/// removed; a name left with none fails to connect (a failed attempt, retried like any other).
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    /// `[webhooks] allow_private_addresses`.
    pub allow_private: bool,
}

impl GuardedResolver {
    /// The addresses of `host` a webhook may connect to (port 0: the client sets the URL's).
    pub async fn lookup(&self, host: &str) -> std::io::Result<Vec<SocketAddr>> {
        let all: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
        let allowed: Vec<SocketAddr> = all
            .into_iter()
            .filter(|a| allowed(a.ip(), self.allow_private))
            .collect();
        if allowed.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the name resolves only to addresses webhooks may not reach \
                 ([webhooks] allow_private_addresses)",
            ));
        }
        Ok(allowed)
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = *self;
        Box::pin(async move {
            let addrs = this.lookup(name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused() {
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "::7f00:1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!is_public(ip), "{ip} must be refused");
            assert!(
                allowed(ip, true),
                "{ip} is allowed when private addresses are"
            );
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "2606:2800:220:1:248:1893:25c8:1946",
            "::ffff:93.184.216.34",
            "64:ff9b::808:808",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(is_public(ip), "{ip} must pass");
        }
    }

    #[tokio::test]
    async fn the_resolver_drops_refused_addresses() {
        // "localhost" resolves (from /etc/hosts, no network) to loopback only.
        let strict = GuardedResolver {
            allow_private: false,
        };
        let e = strict.lookup("localhost").await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
        let lax = GuardedResolver {
            allow_private: true,
        };
        let addrs = lax.lookup("localhost").await.unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }
}
