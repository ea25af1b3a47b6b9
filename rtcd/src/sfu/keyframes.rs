//! When to ask a publisher for a keyframe of one layer (a PLI), from the requests of its
//! subscribers and of their down-tracks.
//!
//! A keyframe costs the publisher's uplink and every receiver's link several times a frame, so
//! requests are bounded: at most one PLI per layer per interval (`rtc.keyframe_request_interval_ms`,
//! 500 ms by default), whatever the subscribers send. But a request is not always answered by
//! the keyframe already asked for. Seen in the long browser calls: Carol joined, her
//! down-track asked for Alice's camera (PLI, keyframe 37 ms later); Bob's Firefox, its
//! receiving pipeline rebuilt by the renegotiation that added Carol, asked for a keyframe of
//! the same camera 374 ms after that PLI, when the keyframe had long gone by. Dropped as
//! within the interval, it was answered only when Firefox asked again, and when it did not ask
//! soon, Bob's picture of Alice stood still for 3-5 s. So a request in the interval is held
//! back only while the keyframe asked for has not arrived (it answers this request too: it
//! reaches the subscriber after it asked); once it has, the request needs a newer one, and is
//! deferred to the end of the interval instead of dropped.
//!
//! Plain state, fed with requests, keyframes and `now`; the room sends the PLIs.

use std::time::{Duration, Instant};

/// The keyframe requests of one layer of a published video track. See the module docs.
#[derive(Debug, Default)]
pub struct KeyframeGate {
    /// When the last PLI went out.
    sent_at: Option<Instant>,
    /// Whether a keyframe has arrived since then (the PLI is answered).
    answered: bool,
    /// A request that needs a keyframe newer than the last one, waiting for the interval.
    deferred: bool,
    /// The RTP timestamp of the newest keyframe seen: a copy of an older keyframe's first
    /// packet (a publisher's RTX padding resends old packets) answers nothing.
    newest: Option<u32>,
}

impl KeyframeGate {
    /// A request for a keyframe at `now`: whether to send a PLI now (the caller sends it).
    pub fn request(&mut self, now: Instant, interval: Duration) -> bool {
        match self.sent_at {
            Some(at) if now.saturating_duration_since(at) < interval => {
                // The keyframe asked for answers this request too; else it waits its turn.
                self.deferred |= self.answered;
                false
            }
            _ => {
                self.sent_at = Some(now);
                self.answered = false;
                self.deferred = false;
                true
            }
        }
    }

    /// The first packet of a keyframe with RTP timestamp `timestamp` arrived: it answers every
    /// request made so far (it is forwarded after them), unless it is a copy of an older one.
    pub fn keyframe(&mut self, timestamp: u32) {
        if let Some(newest) = self.newest
            && !is_newer(timestamp, newest)
        {
            return;
        }
        self.newest = Some(timestamp);
        self.answered = true;
        self.deferred = false;
    }

    /// Whether a request waits for the end of the interval.
    pub fn deferred(&self) -> bool {
        self.deferred
    }

    /// Whether a deferred request is due at `now` (call [`KeyframeGate::request`] then): on
    /// every packet of the layer, a comparison.
    pub fn due(&self, now: Instant, interval: Duration) -> bool {
        self.deferred
            && self
                .sent_at
                .is_none_or(|at| now.saturating_duration_since(at) >= interval)
    }
}

/// Whether RTP timestamp `a` is after `b` (modulo 2^32).
fn is_newer(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 1 << 31
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_millis(500);

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_request_while_the_keyframe_asked_for_is_on_its_way_is_answered_by_it() {
        let t0 = Instant::now();
        let mut g = KeyframeGate::default();
        assert!(g.request(t0, INTERVAL));
        // Another subscriber asks before the keyframe came: nothing more to send, ever.
        assert!(!g.request(ms(t0, 20), INTERVAL));
        g.keyframe(90_000);
        assert!(!g.due(ms(t0, 500), INTERVAL));
        assert!(!g.due(ms(t0, 5_000), INTERVAL));
    }

    /// The case of the module docs: Bob's request came after the keyframe Carol's had brought.
    #[test]
    fn a_request_after_the_keyframe_came_is_deferred_to_the_end_of_the_interval_not_dropped() {
        let t0 = Instant::now();
        let mut g = KeyframeGate::default();
        assert!(g.request(t0, INTERVAL));
        g.keyframe(90_000);
        assert!(!g.request(ms(t0, 374), INTERVAL));
        assert!(!g.due(ms(t0, 499), INTERVAL));
        assert!(g.due(ms(t0, 500), INTERVAL));
        assert!(g.request(ms(t0, 500), INTERVAL));
        // Sent: nothing more is due, and the next requests wait for its keyframe.
        assert!(!g.due(ms(t0, 600), INTERVAL));
        assert!(!g.request(ms(t0, 600), INTERVAL));
        assert!(!g.due(ms(t0, 1_100), INTERVAL));
    }

    #[test]
    fn a_newer_keyframe_answers_a_deferred_request_and_a_copy_of_an_old_one_does_not() {
        let t0 = Instant::now();
        let mut g = KeyframeGate::default();
        assert!(g.request(t0, INTERVAL));
        g.keyframe(90_000);
        assert!(!g.request(ms(t0, 100), INTERVAL));
        // The first keyframe's first packet again (RTX padding): still deferred.
        g.keyframe(90_000);
        assert!(g.due(ms(t0, 500), INTERVAL));
        // A keyframe of the publisher's own (or asked by another path) answers it.
        g.keyframe(99_000);
        assert!(!g.due(ms(t0, 500), INTERVAL));
        // Timestamps wrap.
        g.keyframe(u32::MAX - 10);
        let mut g2 = KeyframeGate::default();
        g2.keyframe(u32::MAX - 10);
        assert!(g2.request(t0, INTERVAL));
        assert!(!g2.request(ms(t0, 10), INTERVAL));
        g2.keyframe(5);
        assert!(!g2.request(ms(t0, 20), INTERVAL));
        assert!(g2.due(ms(t0, 500), INTERVAL), "5 is after u32::MAX - 10");
    }

    #[test]
    fn at_most_one_pli_per_interval_whatever_is_asked() {
        let t0 = Instant::now();
        let mut g = KeyframeGate::default();
        let mut sent = 0;
        let mut ts = 0u32;
        // A subscriber asking every 10 ms for 10 s, every keyframe coming 30 ms after its PLI.
        let mut answer_at = None;
        for i in 0..1_000u64 {
            let now = ms(t0, i * 10);
            if answer_at.is_some_and(|a| now >= a) {
                ts = ts.wrapping_add(3_000);
                g.keyframe(ts);
                answer_at = None;
            }
            if g.request(now, INTERVAL) {
                sent += 1;
                answer_at = Some(now + Duration::from_millis(30));
            }
        }
        assert_eq!(sent, 20);
    }
}
