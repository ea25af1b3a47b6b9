//! The seam to webrtc-rs (0.17, classic API): building the API with the shared UDP mux and the
//! ICE settings, and the few peer-connection operations the session actor needs. A later move
//! (ICE-TCP, webrtc 0.2x) should only have to touch this file and [`super::forwarder`].

use std::net::SocketAddr;
use std::sync::Arc;

use webrtc::api::interceptor_registry::{configure_rtcp_reports, configure_twcc_receiver_only};
use webrtc::api::media_engine::MediaEngine;
use webrtc::api::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{API, APIBuilder};
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice::udp_mux::{UDPMuxDefault, UDPMuxParams};
use webrtc::ice::udp_network::UDPNetwork;
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpHeaderExtensionCapability, RTPCodecType,
};
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::rtp_transceiver::{RTCRtpTransceiver, RTCRtpTransceiverInit};
use webrtc::track::track_local::TrackLocal;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;

use super::{SfuConfig, SfuError};

pub use super::packet::AUDIO_LEVEL_URI;

/// Builds peer connections that all share one UDP socket.
pub struct PeerFactory {
    api: API,
    ice_servers: Vec<RTCIceServer>,
    local_addr: SocketAddr,
}

impl PeerFactory {
    /// Binds the mux socket and configures ICE from `config`.
    pub async fn new(config: &SfuConfig) -> Result<Self, SfuError> {
        let socket = bind_udp(config.udp_addr, config.udp_buffer_bytes).map_err(|e| {
            SfuError::Media(format!("cannot bind ICE UDP {}: {e}", config.udp_addr))
        })?;
        let local_addr = socket
            .local_addr()
            .map_err(|e| SfuError::Media(e.to_string()))?;
        let mux = UDPMuxDefault::new(UDPMuxParams::new(socket));

        let mut settings = SettingEngine::default();
        settings.set_udp_network(UDPNetwork::Muxed(mux));
        settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
        // How fast a vanished peer is noticed: "failed" ends its session and frees its tracks.
        settings.set_ice_timeouts(
            Some(config.ice_disconnected_timeout),
            Some(config.ice_failed_timeout),
            Some(config.ice_keepalive_interval),
        );
        // One family only, matching the socket: every local candidate of an agent reads from the
        // same mux connection, so a candidate of the other family would consume (and drop)
        // packets meant for its sibling.
        settings.set_network_types(vec![if config.udp_addr.is_ipv4() {
            NetworkType::Udp4
        } else {
            NetworkType::Udp6
        }]);
        settings.set_include_loopback_candidate(config.include_loopback);
        if !config.interfaces.is_empty() {
            let allowed = config.interfaces.clone();
            settings.set_interface_filter(Box::new(move |name: &str| {
                allowed.iter().any(|a| a == name)
            }));
        }
        if !config.host_override.is_empty() {
            settings.set_nat_1to1_ips(config.host_override.clone(), RTCIceCandidateType::Host);
        }

        let mut media = MediaEngine::default();
        media
            .register_default_codecs()
            .map_err(|e| SfuError::Media(e.to_string()))?;
        media
            .register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: AUDIO_LEVEL_URI.to_owned(),
                },
                RTPCodecType::Audio,
                None,
            )
            .map_err(|e| SfuError::Media(e.to_string()))?;
        // NACK generator + responder (retransmission buffer), sender / receiver reports, TWCC:
        // webrtc-rs's defaults, except the responder's buffer (see `nack_buffer_log2`).
        let registry = interceptors(&mut media, config.nack_buffer_packets)
            .map_err(|e| SfuError::Media(e.to_string()))?;
        let api = APIBuilder::new()
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings)
            .build();
        let ice_servers = if config.stun_servers.is_empty() {
            Vec::new()
        } else {
            vec![RTCIceServer {
                urls: config.stun_servers.clone(),
                ..Default::default()
            }]
        };
        Ok(Self {
            api,
            ice_servers,
            local_addr,
        })
    }

    /// The shared socket's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A new peer connection on the shared socket.
    pub async fn create(&self) -> Result<Arc<RTCPeerConnection>, SfuError> {
        let config = RTCConfiguration {
            ice_servers: self.ice_servers.clone(),
            ..Default::default()
        };
        self.api
            .new_peer_connection(config)
            .await
            .map(Arc::new)
            .map_err(|e| SfuError::Media(e.to_string()))
    }
}

/// Applies a client offer (rtcd never offers: see the session module).
pub async fn apply_offer(pc: &RTCPeerConnection, sdp: String) -> Result<(), SfuError> {
    let offer = RTCSessionDescription::offer(sdp)
        .map_err(|e| SfuError::InvalidArgument(format!("malformed SDP offer: {e}")))?;
    pc.set_remote_description(offer)
        .await
        .map_err(|e| SfuError::InvalidArgument(format!("unusable SDP offer: {e}")))
}

/// Answers the offer just applied; returns the answer SDP as the engine wrote it.
pub async fn answer(pc: &RTCPeerConnection) -> Result<String, SfuError> {
    let answer = pc
        .create_answer(None)
        .await
        .map_err(|e| SfuError::InvalidArgument(format!("cannot answer this offer: {e}")))?;
    set_local_and_gather(pc, answer).await
}

/// A track that never sends: what an unused sending slot holds. webrtc-rs 0.17 can only hand a
/// sender a new track if it has one (a sender without a track has no encoding, and a track set
/// before the sender started would be bound twice), so every slot keeps a track from creation on.
pub fn idle_track(audio: bool) -> Arc<TrackLocalStaticRTP> {
    let (mime, clock_rate, channels, fmtp, id) = if audio {
        (
            MIME_TYPE_OPUS,
            48000,
            2,
            "minptime=10;useinbandfec=1",
            "idle-audio",
        )
    } else {
        (MIME_TYPE_VP8, 90000, 0, "", "idle-video")
    };
    Arc::new(TrackLocalStaticRTP::new(
        RTCRtpCodecCapability {
            mime_type: mime.to_owned(),
            clock_rate,
            channels,
            sdp_fmtp_line: fmtp.to_owned(),
            rtcp_feedback: Vec::new(),
        },
        id.to_owned(),
        "rtcd".to_owned(),
    ))
}

/// A new sending slot for the next unmatched receiving section of the client's offer (applied
/// next): `sendrecv` where the client also sends on the section, else `sendonly`. webrtc-rs
/// matches such unassociated transceivers to new sections by kind and direction.
pub async fn add_slot(
    pc: &RTCPeerConnection,
    track: Arc<dyn TrackLocal + Send + Sync>,
    client_sends: bool,
) -> Result<Arc<RTCRtpTransceiver>, SfuError> {
    let direction = if client_sends {
        RTCRtpTransceiverDirection::Sendrecv
    } else {
        RTCRtpTransceiverDirection::Sendonly
    };
    let transceiver = pc
        .add_transceiver_from_track(
            track,
            Some(RTCRtpTransceiverInit {
                direction,
                send_encodings: Vec::new(),
            }),
        )
        .await
        .map_err(|e| SfuError::Media(format!("cannot add a sending section: {e}")))?;
    // A slot keeps its SSRC while its track changes: its sequence numbers must run on across
    // the change, or the receiver's SRTP context (which infers the rollover counter from the
    // sequence number) guesses wrong and drops every packet of the new track. The engine's
    // sequence transformer continues from the last number sent after each `replace_track`.
    transceiver
        .sender()
        .await
        .enable_seq_transformer()
        .map_err(|e| SfuError::Media(format!("cannot keep a slot's sequence numbers: {e}")))?;
    Ok(transceiver)
}

/// Puts `track` on a slot's sender and sets what the slot's next answer says: sending (with the
/// client's own sending kept where it sends too) or not.
pub async fn fill_slot(
    transceiver: &RTCRtpTransceiver,
    track: Arc<dyn TrackLocal + Send + Sync>,
    sending: bool,
    client_sends: bool,
) -> Result<(), SfuError> {
    transceiver
        .sender()
        .await
        .replace_track(Some(track))
        .await
        .map_err(|e| SfuError::Media(format!("cannot switch a sending section's track: {e}")))?;
    transceiver
        .set_direction(RTCRtpTransceiverDirection::from_send_recv(
            sending,
            client_sends,
        ))
        .await;
    Ok(())
}

/// Applies a local description and returns its SDP once host candidate gathering is done
/// (bounded): with a UDP mux and host candidates this takes milliseconds, and an SDP that
/// already carries our candidates lets clients connect without waiting for trickle. Candidates
/// are still trickled as they are gathered, for clients that want them early.
async fn set_local_and_gather(
    pc: &RTCPeerConnection,
    desc: RTCSessionDescription,
) -> Result<String, SfuError> {
    let mut gathered = pc.gathering_complete_promise().await;
    let fallback = desc.sdp.clone();
    pc.set_local_description(desc)
        .await
        .map_err(|e| SfuError::Media(e.to_string()))?;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), gathered.recv()).await;
    Ok(pc
        .local_description()
        .await
        .map(|d| d.sdp)
        .unwrap_or(fallback))
}

/// Adds a trickled remote candidate.
pub async fn add_candidate(
    pc: &RTCPeerConnection,
    candidate: RTCIceCandidateInit,
) -> Result<(), SfuError> {
    pc.add_ice_candidate(candidate)
        .await
        .map_err(|e| SfuError::InvalidArgument(format!("bad ICE candidate: {e}")))
}

/// Whether a remote description has been applied (candidates before that are queued).
pub async fn has_remote_description(pc: &RTCPeerConnection) -> bool {
    pc.remote_description().await.is_some()
}

/// The shared media socket, with its buffers sized before `bind` (so no datagram arrives into
/// a default-sized queue). Every session's packets queue here: the kernel default (~208 KiB,
/// about 180 video packets) overflows on a burst of frames from many publishers long before the
/// CPU is busy, and each overflow is a loss every subscriber sees. The kernel silently caps the
/// size at `net.core.rmem_max` / `wmem_max`, so we read it back and say so.
fn bind_udp(addr: SocketAddr, buffer: usize) -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if buffer > 0 {
        socket.set_recv_buffer_size(buffer)?;
        socket.set_send_buffer_size(buffer)?;
        // Linux reports twice what it grants (the doubling covers its bookkeeping).
        let (recv, send) = (
            socket.recv_buffer_size()? / 2,
            socket.send_buffer_size()? / 2,
        );
        if recv < buffer || send < buffer {
            tracing::warn!(
                requested = buffer,
                receive = recv,
                send,
                "the kernel capped the media socket's buffers: raise net.core.rmem_max and \
                 net.core.wmem_max to at least rtc.udp_buffer_bytes, or expect packet loss \
                 under load"
            );
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}

/// webrtc-rs's default interceptors with a retransmission buffer of `nack_buffer_packets` per
/// down-track instead of 8192. The buffer is allocated whole when a subscriber's stream starts
/// (~130 bytes a slot: 8192 slots are ~1 MiB per video down-track, most of a session's memory),
/// and a NACK only helps within a round trip or two: 1024 packets are 2 s of 4 Mbit/s video.
fn interceptors(
    media: &mut MediaEngine,
    nack_buffer_packets: usize,
) -> webrtc::error::Result<Registry> {
    use webrtc::interceptor::nack::generator::Generator;
    use webrtc::interceptor::nack::responder::Responder;
    use webrtc::rtp_transceiver::RTCPFeedback;
    for parameter in ["", "pli"] {
        media.register_feedback(
            RTCPFeedback {
                typ: "nack".to_owned(),
                parameter: parameter.to_owned(),
            },
            RTPCodecType::Video,
        );
    }
    let mut registry = Registry::new();
    registry.add(Box::new(
        Responder::builder().with_log2_size(nack_buffer_log2(nack_buffer_packets)),
    ));
    registry.add(Box::new(Generator::builder()));
    let registry = configure_rtcp_reports(registry);
    let mut registry = configure_twcc_receiver_only(registry, media)?;
    // Last added = outermost: the NACK buffer and sender reports see rebased timestamps.
    registry.add(Box::new(super::rebase::RebaseBuilder));
    Ok(registry)
}

/// The responder's size is a power of two (it indexes by sequence number modulo the size).
fn nack_buffer_log2(packets: usize) -> u8 {
    packets.next_power_of_two().trailing_zeros().clamp(6, 15) as u8
}

#[cfg(test)]
mod tests {
    #[test]
    fn nack_buffer_sizes_round_up_to_a_power_of_two() {
        assert_eq!(super::nack_buffer_log2(1024), 10);
        assert_eq!(super::nack_buffer_log2(1000), 10);
        assert_eq!(super::nack_buffer_log2(1025), 11);
        assert_eq!(super::nack_buffer_log2(64), 6);
        assert_eq!(super::nack_buffer_log2(8192), 13);
    }
}
