//! Each file's `start_ms`: the capture time of its first frame on rtcd's clock.
//!
//! The publisher's RTCP sender reports tie its RTP timestamps to its own wall clock (NTP).
//! Its wall clock is not rtcd's, so each publisher (session) gets one offset onto rtcd's
//! clock: the smallest `received - sent` over every sender report of any of its tracks (the
//! one-way delay plus the clocks' difference; the smallest is the least delayed report). One
//! offset for all of a session's tracks keeps its audio and video in lip sync, whatever each
//! track's own network delay was. Before any sender report, the arrival time of the first
//! frame stands in (`clock = arrival`), and is replaced when a report comes.

use std::collections::HashMap;

use rtcd_recording::manifest::ClockSource;

/// Seconds from 1900 (NTP's epoch) to 1970 (Unix's).
const NTP_UNIX_OFFSET_SECONDS: f64 = 2_208_988_800.0;

/// A 64-bit NTP timestamp (32.32 fixed point seconds since 1900) in Unix milliseconds.
pub(crate) fn ntp_to_unix_ms(ntp: u64) -> f64 {
    let seconds = (ntp >> 32) as f64 - NTP_UNIX_OFFSET_SECONDS;
    let fraction = (ntp & 0xffff_ffff) as f64 / 4_294_967_296.0;
    (seconds + fraction) * 1000.0
}

/// The latest sender report of one track.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SenderReport {
    /// Its NTP time, in Unix milliseconds of the sender's clock.
    pub ntp_unix_ms: f64,
    /// The RTP timestamp it pairs with that time.
    pub rtp_timestamp: u32,
}

/// What a track's start is computed from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TrackClock {
    /// The track's clock rate (Hz).
    pub clock_rate: u32,
    /// The RTP timestamp of the file's first frame.
    pub first_rtp: u32,
    /// When rtcd received the first frame (Unix ms, rtcd's clock).
    pub first_arrival_ms: f64,
    /// The track's latest sender report.
    pub report: Option<SenderReport>,
}

impl TrackClock {
    /// The track's `start_ms` and how it was found, given its session's offset (`None`: no
    /// sender report from the session yet).
    pub(crate) fn start_ms(&self, session_offset_ms: Option<f64>) -> (f64, ClockSource) {
        match (self.report, session_offset_ms) {
            (Some(sr), Some(offset)) if self.clock_rate > 0 => {
                let ticks = f64::from(self.first_rtp.wrapping_sub(sr.rtp_timestamp) as i32);
                let sent = sr.ntp_unix_ms + ticks * 1000.0 / f64::from(self.clock_rate);
                (sent + offset, ClockSource::SenderReport)
            }
            _ => (self.first_arrival_ms, ClockSource::Arrival),
        }
    }
}

/// The per-session offsets from the publishers' clocks onto rtcd's.
#[derive(Debug, Default)]
pub(crate) struct SessionOffsets {
    offsets: HashMap<String, f64>,
}

impl SessionOffsets {
    /// Takes a sender report received at `received_unix_ms`; `true` when the session's offset
    /// changed (its tracks' starts are then recomputed).
    pub(crate) fn report(
        &mut self,
        session: &str,
        ntp_unix_ms: f64,
        received_unix_ms: f64,
    ) -> bool {
        let offset = received_unix_ms - ntp_unix_ms;
        if !offset.is_finite() {
            return false;
        }
        match self.offsets.get_mut(session) {
            Some(o) if *o <= offset => false,
            Some(o) => {
                *o = offset;
                true
            }
            None => {
                self.offsets.insert(session.to_owned(), offset);
                true
            }
        }
    }

    /// The session's offset (rtcd's clock minus the publisher's), if it sent a report.
    pub(crate) fn get(&self, session: &str) -> Option<f64> {
        self.offsets.get(session).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The NTP timestamp of a Unix time in milliseconds.
    fn ntp(unix_ms: f64) -> u64 {
        let s = unix_ms / 1000.0 + NTP_UNIX_OFFSET_SECONDS;
        ((s.floor() as u64) << 32) | ((s.fract() * 4_294_967_296.0) as u64)
    }

    #[test]
    fn ntp_converts_to_unix_milliseconds() {
        assert_eq!(ntp_to_unix_ms(0x83aa_7e80_0000_0000), 0.0);
        assert_eq!(ntp_to_unix_ms(0x83aa_7e80_8000_0000), 500.0);
        let t = 1_700_000_000_123.0;
        assert!((ntp_to_unix_ms(ntp(t)) - t).abs() < 0.01);
    }

    #[test]
    fn without_a_sender_report_the_arrival_is_the_start() {
        let c = TrackClock {
            clock_rate: 90_000,
            first_rtp: 1000,
            first_arrival_ms: 5000.0,
            report: None,
        };
        assert_eq!(c.start_ms(None), (5000.0, ClockSource::Arrival));
        // An offset from another track of the session, but no report of this one yet.
        assert_eq!(c.start_ms(Some(3.0)), (5000.0, ClockSource::Arrival));
    }

    #[test]
    fn a_sender_report_maps_the_first_frame_onto_rtcd_clock_with_wraparound() {
        let mut offsets = SessionOffsets::default();
        // The sender's clock is 2 s behind rtcd's; the report took 30 ms.
        assert!(offsets.report("s", 10_000.0, 12_030.0));
        // A later, slower report does not move the offset; a faster one does.
        assert!(!offsets.report("s", 11_000.0, 13_050.0));
        assert!(offsets.report("s", 12_000.0, 14_020.0));
        assert_eq!(offsets.get("s"), Some(2020.0));
        // The first frame is 0.5 s before the report's RTP timestamp, across the 32-bit wrap.
        let c = TrackClock {
            clock_rate: 90_000,
            first_rtp: 4_294_967_296u64.wrapping_sub(45_000 - 100) as u32,
            first_arrival_ms: 0.0,
            report: Some(SenderReport {
                ntp_unix_ms: 10_000.0,
                rtp_timestamp: 100,
            }),
        };
        let (start, clock) = c.start_ms(offsets.get("s"));
        assert_eq!(clock, ClockSource::SenderReport);
        assert!((start - (9_500.0 + 2020.0)).abs() < 1e-6, "{start}");
    }

    #[test]
    fn audio_and_video_of_one_session_share_the_mapping() {
        let mut offsets = SessionOffsets::default();
        // Both captured at sender time 1000 ms (audio rtp 48000 -> 1 s; video rtp 90000 -> 1 s),
        // with video's reports delayed more than audio's by the network.
        let audio_sr = SenderReport {
            ntp_unix_ms: 2000.0,
            rtp_timestamp: 96_000,
        };
        let video_sr = SenderReport {
            ntp_unix_ms: 2000.0,
            rtp_timestamp: 180_000,
        };
        offsets.report("alice", audio_sr.ntp_unix_ms, 2000.0 + 500.0 + 20.0);
        offsets.report("alice", video_sr.ntp_unix_ms, 2000.0 + 500.0 + 80.0);
        // Bob's clock is elsewhere: his offset does not touch Alice's.
        offsets.report("bob", 0.0, 100_000.0);
        let audio = TrackClock {
            clock_rate: 48_000,
            first_rtp: 48_000,
            first_arrival_ms: 1_600.0,
            report: Some(audio_sr),
        };
        let video = TrackClock {
            clock_rate: 90_000,
            first_rtp: 90_000,
            first_arrival_ms: 1_700.0,
            report: Some(video_sr),
        };
        let (a, _) = audio.start_ms(offsets.get("alice"));
        let (v, _) = video.start_ms(offsets.get("alice"));
        assert_eq!(a, v);
        assert_eq!(a, 1000.0 + 520.0);
    }
}
