//! Keeps every outgoing stream's RTP timestamps continuous when the track behind it changes.
//!
//! A sending slot (see `session`) carries one forwarded track after another on the same SSRC.
//! Its sequence numbers run on (the engine's sequence transformer), but each publisher has its
//! own RTP clock base: without this, a receiver sees the stream's timestamps leap, and
//! Chromium's video pipeline then keeps asking for keyframes and decodes next to nothing on
//! the reused section. So each outgoing stream carries an offset, chosen when a packet's
//! timestamp departs from the stream's wall-clock progress by more than [`JUMP`]: the new
//! source continues where the old one's clock would be now. A mute (packets dropped for a
//! while, then resumed) advances both clocks alike and changes nothing.
//!
//! An interceptor, registered outermost, so that the retransmission buffer and the sender
//! reports below it see the timestamps the receiver sees.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use webrtc::interceptor::stream_info::StreamInfo;
use webrtc::interceptor::{
    Attributes, Interceptor, InterceptorBuilder, RTCPReader, RTCPWriter, RTPReader, RTPWriter,
};

/// A departure from wall-clock progress larger than this is a change of source.
pub const JUMP: Duration = Duration::from_secs(2);

/// Builds the interceptor (one per peer connection; it keeps no state itself).
pub struct RebaseBuilder;

impl InterceptorBuilder for RebaseBuilder {
    fn build(
        &self,
        _id: &str,
    ) -> Result<Arc<dyn Interceptor + Send + Sync>, webrtc::interceptor::Error> {
        Ok(Arc::new(Rebase))
    }
}

struct Rebase;

#[async_trait]
impl Interceptor for Rebase {
    async fn bind_rtcp_reader(
        &self,
        reader: Arc<dyn RTCPReader + Send + Sync>,
    ) -> Arc<dyn RTCPReader + Send + Sync> {
        reader
    }

    async fn bind_rtcp_writer(
        &self,
        writer: Arc<dyn RTCPWriter + Send + Sync>,
    ) -> Arc<dyn RTCPWriter + Send + Sync> {
        writer
    }

    async fn bind_local_stream(
        &self,
        info: &StreamInfo,
        writer: Arc<dyn RTPWriter + Send + Sync>,
    ) -> Arc<dyn RTPWriter + Send + Sync> {
        Arc::new(RebasingWriter {
            next: writer,
            clock: Mutex::new(Clock::new(info.clock_rate)),
        })
    }

    async fn unbind_local_stream(&self, _info: &StreamInfo) {}

    async fn bind_remote_stream(
        &self,
        _info: &StreamInfo,
        reader: Arc<dyn RTPReader + Send + Sync>,
    ) -> Arc<dyn RTPReader + Send + Sync> {
        reader
    }

    async fn unbind_remote_stream(&self, _info: &StreamInfo) {}

    async fn close(&self) -> Result<(), webrtc::interceptor::Error> {
        Ok(())
    }
}

struct RebasingWriter {
    next: Arc<dyn RTPWriter + Send + Sync>,
    /// Held for a few arithmetic operations per packet; only this stream's writes take it.
    clock: Mutex<Clock>,
}

#[async_trait]
impl RTPWriter for RebasingWriter {
    async fn write(
        &self,
        pkt: &webrtc::rtp::packet::Packet,
        attributes: &Attributes,
    ) -> Result<usize, webrtc::interceptor::Error> {
        let out = self
            .clock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(pkt.header.timestamp, Instant::now());
        if out == pkt.header.timestamp {
            return self.next.write(pkt, attributes).await;
        }
        let mut rebased = pkt.clone();
        rebased.header.timestamp = out;
        self.next.write(&rebased, attributes).await
    }
}

/// One outgoing stream's timestamp mapping: `out = in + offset`, the offset chosen anew when
/// the input leaps.
#[derive(Debug)]
pub struct Clock {
    rate: u32,
    offset: u32,
    /// The newest input timestamp and when it was written.
    last: Option<(u32, Instant)>,
}

impl Clock {
    /// A mapping for a stream of `rate` Hz (identity until the input leaps).
    pub fn new(rate: u32) -> Self {
        Self {
            rate: rate.max(1),
            offset: 0,
            last: None,
        }
    }

    /// The output timestamp of an input timestamp `ts` written at `now`.
    pub fn map(&mut self, ts: u32, now: Instant) -> u32 {
        let Some((last, at)) = self.last else {
            self.last = Some((ts, now));
            return ts.wrapping_add(self.offset);
        };
        let elapsed = now.saturating_duration_since(at);
        let expected = (elapsed.as_secs_f64() * f64::from(self.rate)) as i64;
        let moved = i64::from(ts.wrapping_sub(last) as i32);
        let jump = (JUMP.as_secs_f64() * f64::from(self.rate)) as i64;
        if (moved - expected).abs() > jump {
            // A new source: continue from where the old one's clock would be now.
            let continued = last
                .wrapping_add(self.offset)
                .wrapping_add(expected.max(1) as u32);
            self.offset = continued.wrapping_sub(ts);
            self.last = Some((ts, now));
        } else if moved >= 0 {
            self.last = Some((ts, now));
        }
        ts.wrapping_add(self.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 90_000;

    #[test]
    fn a_steady_stream_and_a_mute_pass_unchanged() {
        let t0 = Instant::now();
        let mut c = Clock::new(RATE);
        for i in 0..100u32 {
            let at = t0 + Duration::from_millis(u64::from(i) * 33);
            assert_eq!(c.map(1000 + i * 2970, at), 1000 + i * 2970);
        }
        // Muted for 10 s: packets stop, then resume 10 s of clock later.
        let at = t0 + Duration::from_millis(99 * 33 + 10_000);
        let ts = 1000 + 99 * 2970 + 900_000;
        assert_eq!(c.map(ts, at), ts);
        // A packet that arrives late (reordered by a few frames) maps with the same offset.
        assert_eq!(c.map(ts - 3 * 2970, at), ts - 3 * 2970);
    }

    #[test]
    fn a_new_source_continues_the_streams_clock() {
        let t0 = Instant::now();
        let mut c = Clock::new(RATE);
        assert_eq!(c.map(4_000_000_000, t0), 4_000_000_000);
        // 1 s later another publisher's packet arrives with an unrelated base.
        let at = t0 + Duration::from_secs(1);
        let out = c.map(12_345, at);
        assert_eq!(out, 4_000_000_000u32.wrapping_add(RATE));
        // Its own progress is kept from then on (wrapping around u32 on the way).
        let out2 = c.map(12_345 + 3000, at + Duration::from_millis(33));
        assert_eq!(out2, out.wrapping_add(3000));
    }
}
