//! The data plane: one task per published track reads RTP from the publisher and writes it to
//! one `TrackLocalStaticRTP` that webrtc-rs has bound to every subscriber's sender.
//!
//! The loop reads only atomics (mute flag, subscriber count) and pre-resolved metric handles; it
//! never takes a lock signaling holds and never awaits the control plane. The per-subscriber
//! write is webrtc-rs's binding loop (an SSRC/PT rewrite of a header copy; the payload `Bytes`
//! is shared, not copied).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::track::track_local::TrackLocalWriter;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_remote::TrackRemote;

use super::peer::AUDIO_LEVEL_URI;
use super::{CallNotice, SessionId, TenantId, TrackKind, UserId, tenant_label};
use crate::metrics::{KindLabels, Metrics, ReasonLabels};

/// A track a session publishes into its call.
pub struct PublishedTrack {
    /// Unique within the call: `<session>-<kind>-<n>`; the msid track id subscribers see.
    pub id: String,
    /// The publishing session (also the msid stream id subscribers see).
    pub owner: SessionId,
    /// The publishing user.
    pub user: UserId,
    /// The publishing session's display name (for events; not interpreted).
    pub display_name: String,
    /// What it is.
    pub kind: TrackKind,
    /// The publisher's media section (its mid) that carries it.
    pub mid: String,
    /// The track every subscriber's sender is bound to.
    pub local: Arc<TrackLocalStaticRTP>,
    /// Set by mute: the forwarder drops packets while it is true.
    pub muted: AtomicBool,
    /// Subscribers currently bound (for forwarded-packet accounting).
    pub subscribers: AtomicUsize,
    publisher: Weak<RTCPeerConnection>,
    media_ssrc: u32,
    started: Instant,
    last_keyframe_request_ms: AtomicU64,
    keyframe_interval: Duration,
    pli_sent: Counter,
    /// Stops the forwarder (track withdrawn or session ended).
    pub stop: CancellationToken,
}

impl PublishedTrack {
    /// Asks the publisher for a keyframe (PLI), at most once per `keyframe_interval`: many
    /// subscribers losing the same picture must not make the publisher send keyframes in a loop.
    pub async fn request_keyframe(&self) {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.last_keyframe_request_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < self.keyframe_interval.as_millis() as u64 {
            return;
        }
        if self
            .last_keyframe_request_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let Some(pc) = self.publisher.upgrade() else {
            return;
        };
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: self.media_ssrc,
        };
        if pc.write_rtcp(&[Box::new(pli)]).await.is_ok() {
            self.pli_sent.inc();
        }
    }
}

/// What a new published track is made of.
pub(crate) struct TrackSource {
    pub remote: Arc<TrackRemote>,
    pub publisher: Weak<RTCPeerConnection>,
    pub tenant: TenantId,
    pub owner: SessionId,
    pub user: UserId,
    pub display_name: String,
    pub kind: TrackKind,
    pub mid: String,
    pub id: String,
    pub muted: bool,
    pub keyframe_interval: Duration,
}

/// Creates the published track and starts its forwarder.
pub(crate) fn publish(
    src: TrackSource,
    metrics: &Arc<Metrics>,
    notices: broadcast::Sender<CallNotice>,
) -> Arc<PublishedTrack> {
    let codec = src.remote.codec().capability;
    let local = Arc::new(TrackLocalStaticRTP::new(
        codec,
        src.id.clone(),
        src.owner.as_str().to_owned(),
    ));
    // Voice activity is about people talking: a shared tab's sound is not a speaker.
    let audio_level_id = (src.kind == TrackKind::Audio)
        .then(|| src.remote.params())
        .into_iter()
        .flat_map(|p| p.header_extensions)
        .find(|e| e.uri == AUDIO_LEVEL_URI)
        .map(|e| e.id as u8);
    let labels = KindLabels {
        client_id: src.tenant.as_str().to_owned(),
        kind: src.kind.as_str(),
    };
    let track = Arc::new(PublishedTrack {
        id: src.id,
        owner: src.owner,
        user: src.user,
        display_name: src.display_name,
        kind: src.kind,
        mid: src.mid,
        local,
        muted: AtomicBool::new(src.muted),
        subscribers: AtomicUsize::new(0),
        publisher: src.publisher,
        media_ssrc: src.remote.ssrc(),
        started: Instant::now(),
        last_keyframe_request_ms: AtomicU64::new(0),
        keyframe_interval: src.keyframe_interval,
        pli_sent: metrics
            .sfu
            .pli_sent
            .get_or_create(&tenant_label(&src.tenant))
            .clone(),
        stop: CancellationToken::new(),
    });
    // One statement per handle: a `get_or_create` guard alive while another call on the same
    // family inserts would deadlock the family's lock.
    let dropped = |reason: &'static str| {
        metrics
            .sfu
            .dropped_packets
            .get_or_create(&ReasonLabels {
                client_id: labels.client_id.clone(),
                reason,
            })
            .clone()
    };
    let muted = dropped("muted");
    let failed = dropped("write_failed");
    let forwarded = metrics.sfu.forwarded_packets.get_or_create(&labels).clone();
    let bytes = metrics.sfu.forwarded_bytes.get_or_create(&labels).clone();
    let handles = Handles {
        forwarded,
        bytes,
        muted,
        failed,
    };
    let vad = audio_level_id.map(|id| (id, VoiceDetector::default()));
    tokio::spawn(forward(src.remote, track.clone(), handles, vad, notices));
    track
}

struct Handles {
    forwarded: Counter,
    bytes: Counter,
    muted: Counter,
    failed: Counter,
}

async fn forward(
    remote: Arc<TrackRemote>,
    track: Arc<PublishedTrack>,
    m: Handles,
    mut vad: Option<(u8, VoiceDetector)>,
    notices: broadcast::Sender<CallNotice>,
) {
    let mut buf = vec![0u8; 1500];
    loop {
        let packet = tokio::select! {
            _ = track.stop.cancelled() => break,
            read = remote.read(&mut buf) => match read {
                Ok((packet, _)) => packet,
                Err(_) => break,
            },
        };
        // A muted microphone is not a speaker: voice activity only from forwarded audio, and
        // a speaker who mutes stops speaking at once.
        if track.muted.load(Ordering::Relaxed) {
            m.muted.inc();
            if let Some((_, detector)) = vad.as_mut()
                && detector.speaking
            {
                *detector = VoiceDetector::default();
                let _ = notices.send(CallNotice::Voice {
                    session: track.owner.clone(),
                    user: track.user.clone(),
                    speaking: false,
                });
            }
            continue;
        }
        if let Some((id, detector)) = vad.as_mut() {
            let level = packet
                .header
                .get_extension(*id)
                .and_then(|b| b.first().copied())
                .map(|b| b & 0x7f);
            if let Some(speaking) = level.and_then(|l| detector.observe(l)) {
                // No receiver (nobody else in the call) is fine; lagging receivers lose old notices.
                let _ = notices.send(CallNotice::Voice {
                    session: track.owner.clone(),
                    user: track.user.clone(),
                    speaking,
                });
            }
        }
        let subscribers = track.subscribers.load(Ordering::Relaxed) as u64;
        if subscribers == 0 {
            continue;
        }
        match track.local.write_rtp(&packet).await {
            Ok(_) => {
                m.forwarded.inc_by(subscribers);
                m.bytes.inc_by(subscribers * packet.payload.len() as u64);
            }
            Err(e) => {
                m.failed.inc();
                tracing::debug!(track = %track.id, error = %e, "forwarding a packet failed");
            }
        }
    }
    tracing::debug!(track = %track.id, session = %track.owner, "forwarder stopped");
}

/// Voice activity from RFC 6464 levels (0 = loudest, 127 = silence, in -dBov) with hysteresis:
/// speaking after `ON_PACKETS` consecutive loud packets (~100 ms at 20 ms ptime), silent after
/// `OFF_PACKETS` consecutive quiet ones (~500 ms), so a breath does not flap the indicator.
#[derive(Debug, Default)]
pub struct VoiceDetector {
    speaking: bool,
    run: u32,
}

impl VoiceDetector {
    /// Levels at or below this (louder than -50 dBov) count as voice.
    pub const THRESHOLD: u8 = 50;
    const ON_PACKETS: u32 = 5;
    const OFF_PACKETS: u32 = 25;

    /// Whether the last decision was "speaking".
    pub fn speaking(&self) -> bool {
        self.speaking
    }

    /// Feeds one packet's level; returns the new state when it changes.
    pub fn observe(&mut self, level: u8) -> Option<bool> {
        let loud = level <= Self::THRESHOLD;
        if loud != self.speaking {
            self.run += 1;
            let needed = if loud {
                Self::ON_PACKETS
            } else {
                Self::OFF_PACKETS
            };
            if self.run >= needed {
                self.speaking = loud;
                self.run = 0;
                return Some(loud);
            }
        } else {
            self.run = 0;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::VoiceDetector;

    #[test]
    fn voice_needs_a_run_of_loud_packets_and_a_longer_run_of_quiet_ones() {
        let mut vad = VoiceDetector::default();
        for _ in 0..4 {
            assert_eq!(vad.observe(10), None);
        }
        assert_eq!(vad.observe(10), Some(true));
        // A short dip does not end speech.
        for _ in 0..10 {
            assert_eq!(vad.observe(127), None);
        }
        assert_eq!(vad.observe(10), None);
        for _ in 0..24 {
            assert_eq!(vad.observe(127), None);
        }
        assert_eq!(vad.observe(127), Some(false));
        // Quiet noise never triggers.
        for _ in 0..100 {
            assert_eq!(vad.observe(90), None);
        }
    }
}
