//! The DTLS handshake that keys SRTP (RFC 5764), run by the engine instead of inside `rtc`.
//!
//! `rtc` 0.21 derives the SRTP keys inside its DTLS handler and hands them to its own SRTP
//! handler only (`pub(crate)`): while it holds them, every packet in and out has to walk its whole
//! pipeline (eight handlers, the message moved by value through each), which was half of rtcd's
//! CPU in a one-to-one call (`docs/benchmarks.md`, issue 33). So the engine runs the handshake
//! itself with `rtc`'s DTLS crate, exports the keying material, and keys its own SRTP contexts;
//! `rtc`'s peer connection keeps SDP and ICE, and never sees a DTLS record.
//!
//! What `rtc` did and this does the same way: one certificate per process (the answer's
//! fingerprint is the same), the client's certificate required and checked against the
//! `a=fingerprint` of its offer (SHA-256, compared in constant time), extended master secret
//! required, the same SRTP protection profiles, and a replay window on what the client sends.
//! The connection is keyed by one placeholder address: it follows ICE wherever the client's path
//! moves (ICE restarts, a new address), as `rtc` tunnels it; the caller sends the records on the
//! path it chose.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use rtc::crypto::{self, HashAlgorithm};
use rtc::dtls::config::{ClientAuthType, ConfigBuilder, ExtendedMasterSecretType, HandshakeConfig};
use rtc::dtls::endpoint::{Endpoint, EndpointEvent};
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::shared::TransportProtocol;
use rtc::srtp;
use rtc::srtp::protection_profile::ProtectionProfile;

use super::peer::EngineError;
use super::srtp::Context;

/// The address the one connection is keyed by (any address with a port: the endpoint refuses
/// port 0).
const TUNNEL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 9);

/// The SRTP contexts a completed handshake keyed (the engine's own, [`super::srtp`]): `local`
/// protects what rtcd sends, `remote` checks and decrypts what the client sends.
pub(super) struct SrtpKeys {
    pub local: Context,
    pub remote: Context,
}

/// What a datagram or a timeout did to the handshake.
pub(super) enum Outcome {
    /// The handshake completed and the client's certificate matched its fingerprint.
    Keyed(Box<SrtpKeys>),
    /// The client closed the connection (`close_notify`).
    Closed,
    /// The handshake could not start.
    Failed(String),
}

/// One peer's DTLS connection; see the module docs.
pub(super) struct Handshake {
    endpoint: Endpoint,
    /// The client's configuration until [`Handshake::start`] uses it (rtcd as the DTLS client).
    client: Option<Arc<HandshakeConfig>>,
    is_client: bool,
    /// The crypto the SRTP contexts are keyed with (the handshake's own).
    provider: Arc<dyn crypto::RTCCryptoProvider>,
    keyed: bool,
    ended: bool,
    /// The endpoint's timer as last read, and whether anything may have moved it since: a
    /// peer asks at every round of its worker, and reading it walks the endpoint's state,
    /// which once keyed changes only when a DTLS datagram comes or a timer fires.
    timeout: Option<Instant>,
    timeout_stale: bool,
}

impl Handshake {
    /// A handshake as the DTLS client (`is_client`, rtcd answered `a=setup:active`) or server,
    /// accepting only a client certificate whose SHA-256 fingerprint is one of `fingerprints`
    /// (the offer's `a=fingerprint` values, `sha-256` ones only: what `rtc` accepted too).
    pub(super) fn new(
        certificate: rtc::dtls::crypto::Certificate,
        is_client: bool,
        fingerprints: Vec<String>,
    ) -> Result<Self, EngineError> {
        if fingerprints.is_empty() {
            return Err(EngineError::InvalidSdp(
                "the offer has no sha-256 a=fingerprint".into(),
            ));
        }
        let provider =
            crypto::default_provider().map_err(|e| EngineError::Internal(e.to_string()))?;
        let hasher = provider.clone();
        let expected: Vec<Vec<u8>> = fingerprints
            .iter()
            .filter_map(|f| parse_fingerprint(f))
            .collect();
        if expected.is_empty() {
            return Err(EngineError::InvalidSdp(
                "the offer's a=fingerprint is not a sha-256 fingerprint".into(),
            ));
        }
        let verify: rtc::dtls::config::VerifyPeerCertificateFn =
            Arc::new(move |certs: &[Vec<u8>], _| {
                let Some(leaf) = certs.first() else {
                    return Err(rtc::shared::error::Error::ErrNonCertificate);
                };
                let hashed = hasher
                    .crypto()
                    .hash(HashAlgorithm::Sha256, leaf)
                    .map_err(|e| rtc::shared::error::Error::Crypto(e.to_string()))?;
                if expected
                    .iter()
                    .any(|e| crypto::constant_time_eq(e, &hashed))
                {
                    Ok(())
                } else {
                    Err(rtc::shared::error::Error::ErrNoMatchingCertificateFingerprint)
                }
            });
        let profiles: Vec<SrtpProtectionProfile> = [
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32,
        ]
        .into_iter()
        .filter(|p| {
            srtp_profile(*p).is_some_and(|p| p.ensure_crypto_supported(provider.crypto()).is_ok())
        })
        .collect();
        let config = ConfigBuilder::default()
            .with_crypto_provider(provider.clone())
            .with_certificates(vec![certificate])
            .with_srtp_protection_profiles(profiles)
            .with_client_auth(ClientAuthType::RequireAnyClientCert)
            // The certificate is self-signed: what authenticates it is the fingerprint check.
            .with_insecure_skip_verify(true)
            .with_verify_peer_certificate(Some(verify))
            .with_extended_master_secret(ExtendedMasterSecretType::Require)
            .build(is_client, None)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        let config = Arc::new(config);
        let (endpoint, client) = if is_client {
            (
                Endpoint::new(TUNNEL, TransportProtocol::UDP, None),
                Some(config),
            )
        } else {
            (
                Endpoint::new(TUNNEL, TransportProtocol::UDP, Some(config)),
                None,
            )
        };
        Ok(Self {
            endpoint,
            client,
            is_client,
            provider,
            keyed: false,
            ended: false,
            timeout: None,
            timeout_stale: true,
        })
    }

    /// Whether rtcd is the DTLS client.
    pub(super) fn is_client(&self) -> bool {
        self.is_client
    }

    /// Sends the first flight if rtcd is the client and has not yet (a server waits).
    pub(super) fn start(&mut self, now: Instant) -> Option<Outcome> {
        let config = self.client.take()?;
        self.timeout_stale = true;
        match self.endpoint.connect(now, TUNNEL, config, None) {
            Ok(()) => None,
            Err(e) => self.fail(e.to_string()),
        }
    }

    /// Whether [`Handshake::start`] has something left to do.
    pub(super) fn waiting_to_start(&self) -> bool {
        self.client.is_some()
    }

    /// One DTLS datagram from the client.
    pub(super) fn read(&mut self, now: Instant, data: BytesMut) -> Option<Outcome> {
        self.timeout_stale = true;
        if self.ended || self.client.is_some() {
            // Ended, or a client's record before rtcd (the DTLS client) began: nothing to do.
            return None;
        }
        let events = match self.endpoint.read(now, TUNNEL, None, data) {
            Ok(events) => events,
            Err(e) => {
                // As in `rtc`: a record that does not fit (reordered, repeated, garbage, or a
                // certificate that does not match, which the endpoint answers with an alert)
                // leaves the connection unkeyed, and the peer's silence timer ends it.
                tracing::debug!(error = %e, keyed = self.keyed, "dtls record refused");
                return None;
            }
        };
        let mut outcome = None;
        for event in events {
            match event {
                EndpointEvent::HandshakeComplete if !self.keyed => {
                    outcome = Some(match self.keys() {
                        Ok(keys) => {
                            self.keyed = true;
                            Outcome::Keyed(Box::new(keys))
                        }
                        Err(e) => return self.fail(e),
                    });
                }
                EndpointEvent::PeerClosed => {
                    self.ended = true;
                    return Some(Outcome::Closed);
                }
                _ => {}
            }
        }
        outcome
    }

    fn fail(&mut self, why: String) -> Option<Outcome> {
        self.ended = true;
        Some(Outcome::Failed(why))
    }

    /// The SRTP contexts from the completed handshake's keying material (RFC 5764 section 4.2).
    fn keys(&self) -> Result<SrtpKeys, String> {
        let state = self
            .endpoint
            .get_connection_state(TUNNEL)
            .ok_or("no connection state after the handshake")?;
        let profile = srtp_profile(state.srtp_protection_profile())
            .ok_or("the client chose no SRTP protection profile")?;
        let mut config = srtp::config::Config {
            profile,
            ..Default::default()
        };
        let material = state
            .export_keying_material(
                srtp::config::LABEL_EXTRACTOR_DTLS_SRTP,
                &[],
                config.keying_material_len(),
            )
            .map_err(|e| e.to_string())?;
        config
            .set_session_keys_from_keying_material(material.as_ref(), state.is_client())
            .map_err(|e| e.to_string())?;
        let crypto = self.provider.crypto();
        let local = Context::new(
            profile,
            &config.keys.local_master_key,
            &config.keys.local_master_salt,
            crypto,
        )
        .map_err(|e| e.to_string())?;
        let remote = Context::new(
            profile,
            &config.keys.remote_master_key,
            &config.keys.remote_master_salt,
            crypto,
        )
        .map_err(|e| e.to_string())?;
        Ok(SrtpKeys { local, remote })
    }

    /// The next DTLS datagram to send (on the peer's current path).
    pub(super) fn poll_transmit(&mut self) -> Option<BytesMut> {
        self.timeout_stale = true;
        self.endpoint.poll_transmit().map(|t| t.message)
    }

    /// When the handshake next retransmits.
    pub(super) fn poll_timeout(&mut self) -> Option<Instant> {
        if self.ended {
            return None;
        }
        if self.timeout_stale {
            self.timeout_stale = false;
            self.timeout = self.endpoint.poll_timeout(&TUNNEL);
        }
        self.timeout
    }

    /// Retransmits a flight that went unanswered.
    pub(super) fn handle_timeout(&mut self, now: Instant) -> Option<Outcome> {
        if self.ended {
            return None;
        }
        self.timeout_stale = true;
        // No connection yet (a server before the client's first flight): nothing to resend.
        self.endpoint.get_connection_state(TUNNEL)?;
        if let Err(e) = self.endpoint.handle_timeout(TUNNEL, now) {
            tracing::debug!(error = %e, keyed = self.keyed, "dtls timeout handling failed");
        }
        None
    }

    /// Sends `close_notify` (with the next transmits) and ends the connection.
    pub(super) fn close(&mut self, now: Instant) {
        if !self.ended {
            self.ended = true;
            self.client = None;
            let _ = self.endpoint.stop(now, TUNNEL);
        }
    }
}

/// `AB:CD:...` (an SDP fingerprint's value) as bytes.
fn parse_fingerprint(value: &str) -> Option<Vec<u8>> {
    let bytes: Option<Vec<u8>> = value
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).ok())
        .collect();
    bytes.filter(|b| b.len() == 32)
}

fn srtp_profile(profile: SrtpProtectionProfile) -> Option<ProtectionProfile> {
    match profile {
        SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => Some(ProtectionProfile::AeadAes128Gcm),
        SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm => Some(ProtectionProfile::AeadAes256Gcm),
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => {
            Some(ProtectionProfile::Aes128CmHmacSha1_80)
        }
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32 => {
            Some(ProtectionProfile::Aes128CmHmacSha1_32)
        }
        _ => None,
    }
}

/// The `sha-256` fingerprints of an offer (session or media level), as written.
pub(super) fn offer_fingerprints(sdp: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for line in sdp.lines() {
        let Some(rest) = line.trim_end().strip_prefix("a=fingerprint:") else {
            continue;
        };
        let Some((algorithm, value)) = rest.split_once(' ') else {
            continue;
        };
        if algorithm.eq_ignore_ascii_case("sha-256") && !found.iter().any(|f| f == value.trim()) {
            found.push(value.trim().to_owned());
        }
    }
    found
}

/// The offer's DTLS role (`a=setup`), first found.
pub(super) fn offer_setup(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=setup:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_and_setup_are_read_from_an_offer() {
        let sdp = "v=0\r\na=fingerprint:sha-1 00:11\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=setup:actpass\r\na=fingerprint:sha-256 AB:CD\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=fingerprint:sha-256 AB:CD\r\n";
        assert_eq!(offer_fingerprints(sdp), vec!["AB:CD".to_owned()]);
        assert_eq!(offer_setup(sdp), Some("actpass"));
        assert_eq!(parse_fingerprint("AB:CD"), None, "not 32 bytes");
        let full = vec!["0A"; 32].join(":");
        assert_eq!(parse_fingerprint(&full), Some(vec![10u8; 32]));
        assert_eq!(parse_fingerprint("zz"), None);
    }
}
