//! A recorded call: its tracks handed to the call's [`Recorder`] (`crate::recording`), which
//! writes them on its own thread. Here only the decisions: which packets (the top layer of a
//! simulcast track, nothing while muted), when the recorder needs a keyframe, who hears that
//! the room records. Per packet: a comparison and a non-blocking queue push.

use std::time::Instant;

use rtcd_recording::manifest::{Codec, Participant, Source, StopReason};

use super::call::Published;
use super::{CallKey, Rooms, SessionKey};
use crate::media::packet::MediaPacket;
use crate::recording::{Recorder, TrackMeta, TrackRef};
use crate::sfu::events::RoomEventKind;
use crate::sfu::session::{RecordingNotice, SessionEvent};
use crate::sfu::{RecordingRefusal, SfuError, TrackKind};

/// The recording of one call, while it records.
pub(crate) struct CallRecording {
    pub recorder: Recorder,
    pub notice: RecordingNotice,
}

/// Whether a published track is written to the call's recording.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// The call does not record.
    #[default]
    No,
    /// It records: the track is added at its first packet (which names its codec).
    Pending,
    /// Written as this track of the recorder.
    Writing(TrackRef),
    /// Its codec cannot be recorded (logged once).
    Refused,
}

/// What a recording needs to hear about a packet of a published track.
pub(super) struct Tap<'a> {
    pub layer: usize,
    pub packet: &'a MediaPacket,
    pub muted: bool,
    /// The track's voice activity changed to this with the packet.
    pub voice: Option<bool>,
}

impl CallRecording {
    /// One packet of `t` (see [`Tap`]): written if it is the recorded layer's and not muted.
    /// Returns whether the recorder wants a keyframe of that layer.
    pub(super) fn tap(&mut self, t: &mut Published, tap: Tap<'_>) -> bool {
        if t.recorded == Recorded::Pending && !tap.muted {
            t.recorded = self.add(t, tap.packet.payload_type);
        }
        let Recorded::Writing(track) = t.recorded else {
            return false;
        };
        if let Some(speaking) = tap.voice {
            self.recorder.speaking(track, speaking);
        }
        // The top layer of a simulcast track: what a recording should show. Dynacast keeps it
        // encoded while the call records (`update_wanted_layers`).
        if tap.muted || tap.layer + 1 != t.layers.len() {
            return false;
        }
        self.recorder.packet(track, tap.packet);
        self.recorder.wants_keyframe(track)
    }

    /// Adds `t` to the recorder, its codec named by `payload_type`.
    fn add(&mut self, t: &Published, payload_type: u8) -> Recorded {
        let codec = t.codecs.iter().find(|c| c.payload_type == payload_type);
        let Some((codec, negotiated)) = codec.and_then(|c| codec_of(&c.mime_type).map(|k| (k, c)))
        else {
            tracing::info!(track = %t.info.track_id, payload_type, "track not recorded: its codec cannot be recorded");
            return Recorded::Refused;
        };
        let meta = TrackMeta {
            participant: Participant {
                session: t.info.session.as_str().to_owned(),
                user: t.info.user.as_str().to_owned(),
                display_name: t.info.display_name.clone(),
            },
            track_id: t.info.track_id.clone(),
            source: source_of(t.info.kind),
            codec,
            payload_type,
            clock_rate: negotiated.clock_rate,
        };
        match self.recorder.add_track(meta) {
            Ok(track) => Recorded::Writing(track),
            Err(e) => {
                tracing::info!(track = %t.info.track_id, error = %e, "track not recorded");
                Recorded::Refused
            }
        }
    }

    /// A sender report of the publisher for stream `ssrc` of `t`.
    pub(super) fn sender_report(&self, t: &Published, ssrc: u32, ntp: u64, rtp_timestamp: u32) {
        let Recorded::Writing(track) = t.recorded else {
            return;
        };
        if !t.simulcast() || ssrc == t.top_ssrc() {
            self.recorder
                .sender_report(track, ntp, rtp_timestamp, crate::recording::unix_ms_now());
        }
    }

    /// `t` leaves the call: its file is completed.
    pub(super) fn withdraw(&self, t: &Published) {
        if let Recorded::Writing(track) = t.recorded {
            self.recorder.end_track(track);
        }
    }
}

/// The manifest's codec for a negotiated MIME type, if rtcd records it.
fn codec_of(mime: &str) -> Option<Codec> {
    match mime {
        "audio/opus" => Some(Codec::Opus),
        "video/vp8" => Some(Codec::Vp8),
        "video/vp9" => Some(Codec::Vp9),
        "video/av1" => Some(Codec::Av1),
        "video/h264" => Some(Codec::H264),
        _ => None,
    }
}

/// The manifest's source for a track kind.
fn source_of(kind: TrackKind) -> Source {
    match kind {
        TrackKind::Audio => Source::Microphone,
        TrackKind::Video => Source::Camera,
        TrackKind::Screen => Source::Screen,
        TrackKind::ScreenAudio => Source::ScreenAudio,
    }
}

impl Rooms {
    /// Starts writing the call to `recorder` (made by the caller, who did the file work):
    /// every track from its next packet, every session told. Refused (and the recorder given
    /// back) when the call already records.
    pub(super) fn attach_recording(
        &mut self,
        call_key: CallKey,
        recorder: Recorder,
        notice: RecordingNotice,
        now: Instant,
    ) -> Result<RecordingNotice, (SfuError, Box<Recorder>)> {
        let Some(call) = self.calls.get_mut(&call_key) else {
            return Err((SfuError::NotFound, Box::new(recorder)));
        };
        if call.recording.is_some() {
            return Err((
                SfuError::Recording(RecordingRefusal::AlreadyRecording),
                Box::new(recorder),
            ));
        }
        tracing::info!(client = %call.names.0, call = %call.names.1, recording = %notice.recording_id, started_by = %notice.started_by, "recording started");
        let tids: Vec<_> = call.tracks.keys().copied().collect();
        for t in call.tracks.values_mut() {
            t.recorded = Recorded::Pending;
        }
        call.recording = Some(CallRecording {
            recorder,
            notice: notice.clone(),
        });
        self.metrics.recordings_active.inc();
        for tid in tids {
            self.update_wanted_layers(call_key, tid, now);
            self.ask_keyframe_for_recording(call_key, tid, now);
        }
        let id = notice.recording_id.clone();
        let by = notice.started_by.clone();
        self.room_event(call_key, || RoomEventKind::RecordingStarted {
            recording_id: id,
            started_by: by,
        });
        let members = self
            .calls
            .get(&call_key)
            .map(|c| c.members.clone())
            .unwrap_or_default();
        for k in members {
            self.emit(k, SessionEvent::RecordingStarted(notice.clone()));
        }
        Ok(notice)
    }

    /// Stops the call's recording for `reason` (its files are completed on the recorder's
    /// thread), every session told. `None` when the call does not record.
    pub(super) fn detach_recording(
        &mut self,
        call_key: CallKey,
        reason: StopReason,
        now: Instant,
    ) -> Option<RecordingNotice> {
        let call = self.calls.get_mut(&call_key)?;
        let recording = call.recording.take()?;
        tracing::info!(client = %call.names.0, call = %call.names.1, recording = %recording.notice.recording_id, ?reason, "recording stopped");
        let tids: Vec<_> = call.tracks.keys().copied().collect();
        for t in call.tracks.values_mut() {
            t.recorded = Recorded::No;
        }
        self.metrics.recordings_active.dec();
        self.metrics
            .recording_dropped_packets
            .inc_by(recording.recorder.dropped_packets());
        recording.recorder.stop(reason);
        let mut notice = recording.notice;
        notice.reason = Some(reason);
        for tid in tids {
            self.update_wanted_layers(call_key, tid, now);
        }
        let id = notice.recording_id.clone();
        self.room_event(call_key, || RoomEventKind::RecordingStopped {
            recording_id: id,
            reason,
        });
        let members = self
            .calls
            .get(&call_key)
            .map(|c| c.members.clone())
            .unwrap_or_default();
        for k in members {
            self.emit(k, SessionEvent::RecordingStopped(notice.clone()));
        }
        Some(notice)
    }

    /// Asks the publisher of `tid` for a keyframe of the recorded layer: a file starts at one.
    fn ask_keyframe_for_recording(
        &mut self,
        call_key: CallKey,
        tid: crate::sfu::negotiation::TrackId,
        now: Instant,
    ) {
        let Some(t) = self.calls.get(&call_key).and_then(|c| c.tracks.get(&tid)) else {
            return;
        };
        if t.info.kind.is_audio() {
            return;
        }
        let ssrc = t.top_ssrc();
        if ssrc != 0 {
            self.request_keyframe(&call_key, tid, ssrc, now);
        }
    }

    /// A session joining a call that records hears it first thing.
    pub(super) fn tell_recording(&mut self, call_key: CallKey, key: SessionKey) {
        let notice = self
            .calls
            .get(&call_key)
            .and_then(|c| c.recording.as_ref())
            .map(|r| r.notice.clone());
        if let Some(notice) = notice {
            self.emit(key, SessionEvent::RecordingStarted(notice));
        }
    }
}
