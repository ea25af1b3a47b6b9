//! Which forwarded track each receiving section of a session carries, and when to ask the
//! client for a new offer: the negotiation rules of `docs/protocol.md` section 4a as a plain
//! state machine, with no engine, no SDP and no I/O, so that the rules are tested here and the
//! worker only carries them out.
//!
//! The rules:
//! * The client makes every offer. Each receiving section it offers becomes a *slot*; rtcd
//!   never adds sections of its own.
//! * A track to send waits (*pending*) until an offer has a free slot of its media (audio or
//!   video). When tracks wait, rtcd asks for an offer with enough receiving sections
//!   (`negotiation_needed {audio, video}`), once per distinct count.
//! * A slot whose track ended stops sending at once, is answered `inactive` once (*cooling*:
//!   the client sees the track end), and then carries the next track. The SDP therefore grows
//!   with the most tracks ever live at once, not with the call's history.
//! * A section the client no longer receives on is *gone*; its track waits for another slot.
//!   The section may come back in a later offer.
//! * A section the client sends simulcast on is *kept* for it: rtcd sends nothing on it (a
//!   stack may take its `a=rid` lines as the only streams it receives there, `docs/protocol.md`
//!   section 4a), but counts it among the receiving sections it asks for, since the client
//!   counts every receiving section.

/// A forwarded track, as the caller numbers them.
pub type TrackId = u64;

/// What a slot carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotUse {
    /// Nothing; answered `inactive` (or `recvonly` where the client sends on it).
    Free,
    /// Its track just ended: answered `inactive` once before it carries another track.
    Cooling,
    /// A forwarded track.
    Busy(TrackId),
    /// The client's latest offer does not receive on this section.
    Gone,
    /// The client sends simulcast on this section: nothing is sent on it, and it is counted
    /// in what is asked for.
    Kept,
}

/// What the client's latest offer does with a slot's section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// It does not receive on it (or the section is gone).
    NotReceiving,
    /// It receives on it: the section may carry a track.
    Receiving,
    /// It receives on it but sends simulcast on it too: it may not carry a track.
    SendsSimulcast,
}

#[derive(Debug)]
struct Slot {
    audio: bool,
    usage: SlotUse,
}

/// One session's slots, waiting tracks and offer requests. Slots are numbered in the order
/// they were added (the engine's slot order), and never removed.
#[derive(Debug, Default)]
pub struct Negotiation {
    slots: Vec<Slot>,
    /// Tracks to send that have no slot yet, with whether they are audio, in arrival order.
    pending: Vec<(TrackId, bool)>,
    /// The client has offered at least once (before that, rtcd asks for nothing: the first
    /// offer comes anyway).
    offered: bool,
    /// The section counts last asked for, until the next offer.
    asked: Option<(u32, u32)>,
}

impl Negotiation {
    /// Whether an offer has been answered.
    pub fn offered(&self) -> bool {
        self.offered
    }

    /// What slot `i` carries (`Gone` for a slot that does not exist).
    pub fn usage(&self, i: usize) -> SlotUse {
        self.slots.get(i).map_or(SlotUse::Gone, |s| s.usage)
    }

    /// The track slot `i` forwards, if any.
    pub fn track(&self, i: usize) -> Option<TrackId> {
        match self.usage(i) {
            SlotUse::Busy(tid) => Some(tid),
            _ => None,
        }
    }

    /// Every slot that forwards a track, with the track.
    pub fn busy(&self) -> impl Iterator<Item = (usize, TrackId)> + '_ {
        (0..self.slots.len()).filter_map(|i| Some((i, self.track(i)?)))
    }

    /// Whether tracks wait for a slot.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// A new receiving section of the client's offer; returns its slot number.
    pub fn add_slot(&mut self, audio: bool) -> usize {
        self.slots.push(Slot {
            audio,
            usage: SlotUse::Free,
        });
        self.slots.len() - 1
    }

    /// A track this session should receive: it waits for a slot.
    pub fn want(&mut self, track: TrackId, audio: bool) {
        if !self.pending.iter().any(|(t, _)| *t == track) {
            self.pending.push((track, audio));
        }
    }

    /// Drops waiting tracks for which `gone` holds; returns whether any was dropped.
    pub fn forget(&mut self, gone: impl Fn(TrackId) -> bool) -> bool {
        let before = self.pending.len();
        self.pending.retain(|(t, _)| !gone(*t));
        self.pending.len() != before
    }

    /// The start of an offer, applied by the engine: `section(i)` says what the offer does
    /// with slot `i`'s section. Slots the client stopped receiving on are gone, slots it sends
    /// simulcast on are kept (either way their tracks wait again, and are returned so the
    /// caller stops forwarding them); slots that may carry a track again are free. The counts
    /// asked for so far are answered by this offer.
    pub fn offer(&mut self, section: impl Fn(usize) -> Offered) -> Vec<(usize, TrackId)> {
        self.asked = None;
        let mut lost = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let now = match section(i) {
                Offered::NotReceiving => SlotUse::Gone,
                Offered::SendsSimulcast => SlotUse::Kept,
                Offered::Receiving => match slot.usage {
                    SlotUse::Gone | SlotUse::Kept => SlotUse::Free,
                    usage => usage,
                },
            };
            if now != slot.usage {
                if let SlotUse::Busy(tid) = slot.usage {
                    lost.push((i, tid));
                }
                slot.usage = now;
            }
        }
        for &(i, tid) in &lost {
            let audio = self.slots[i].audio;
            self.want(tid, audio);
        }
        lost
    }

    /// Places waiting tracks on free slots of their media, oldest first; tracks for which
    /// `exists` is false are dropped. Returns the slots that now carry a track (the caller
    /// starts forwarding on them). Slots cooling in this answer stay out of it.
    pub fn place(&mut self, exists: impl Fn(TrackId) -> bool) -> Vec<usize> {
        self.pending.retain(|(t, _)| exists(*t));
        let mut placed = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if slot.usage != SlotUse::Free {
                continue;
            }
            let Some(at) = self.pending.iter().position(|(_, a)| *a == slot.audio) else {
                continue;
            };
            let (tid, _) = self.pending.remove(at);
            slot.usage = SlotUse::Busy(tid);
            placed.push(i);
        }
        placed
    }

    /// Whether the answer sends on slot `i`.
    pub fn sends(&self, i: usize) -> bool {
        matches!(self.usage(i), SlotUse::Busy(_))
    }

    /// The slots cooling in the answer being made (freed by [`Negotiation::answered`]).
    pub fn cooling(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].usage == SlotUse::Cooling)
            .collect()
    }

    /// The answer went out: the slots that cooled in it (from [`Negotiation::cooling`]) are
    /// free for the next offer.
    pub fn answered(&mut self, cooled: &[usize]) {
        self.offered = true;
        for &i in cooled {
            if self.slots[i].usage == SlotUse::Cooling {
                self.slots[i].usage = SlotUse::Free;
            }
        }
    }

    /// Slot `i`'s track ended or is no longer allowed: it stops sending now and cools in the
    /// next answer. Returns the track it carried.
    pub fn free(&mut self, i: usize) -> Option<TrackId> {
        let slot = self.slots.get_mut(i)?;
        let SlotUse::Busy(tid) = slot.usage else {
            return None;
        };
        slot.usage = SlotUse::Cooling;
        Some(tid)
    }

    /// Slot `i` could not start forwarding its track after all (the track vanished, or no
    /// down-track could be built): it is free again, the track is not retried.
    pub fn release(&mut self, i: usize) {
        if let Some(slot) = self.slots.get_mut(i) {
            slot.usage = SlotUse::Free;
        }
    }

    /// The session may no longer receive: nothing waits any more, and every busy slot stops
    /// (the tracks are returned, for the caller to stop forwarding them).
    pub fn stop_receiving(&mut self) -> Vec<(usize, TrackId)> {
        self.pending.clear();
        let busy: Vec<(usize, TrackId)> = self.busy().collect();
        for &(i, _) in &busy {
            self.free(i);
        }
        busy
    }

    /// The receiving sections (audio, video) to ask the client for, when that is news: every
    /// slot that sends, cools or is kept, plus every waiting track. `None` before the first
    /// offer, and when the same counts were already asked for since the last offer.
    pub fn request(&mut self) -> Option<(u32, u32)> {
        if !self.offered {
            return None;
        }
        let (mut audio, mut video) = (0u32, 0u32);
        let kinds = self
            .slots
            .iter()
            .filter(|s| matches!(s.usage, SlotUse::Busy(_) | SlotUse::Cooling | SlotUse::Kept))
            .map(|s| s.audio)
            .chain(self.pending.iter().map(|(_, a)| *a));
        for audio_kind in kinds {
            if audio_kind {
                audio += 1;
            } else {
                video += 1;
            }
        }
        if self.asked == Some((audio, video)) {
            return None;
        }
        self.asked = Some((audio, video));
        Some((audio, video))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUDIO: bool = true;
    const VIDEO: bool = false;

    /// One offer-answer round: the offer receives on `receiving` slots (adding new ones up to
    /// that many, audio first), tracks are placed, the answer goes out. Returns what was
    /// placed.
    fn round(n: &mut Negotiation, audio: usize, video: usize) -> Vec<usize> {
        let have_audio = n.slots.iter().filter(|s| s.audio).count();
        let have_video = n.slots.len() - have_audio;
        for _ in have_audio..audio {
            n.add_slot(AUDIO);
        }
        for _ in have_video..video {
            n.add_slot(VIDEO);
        }
        n.offer(|_| Offered::Receiving);
        let cooling = n.cooling();
        let placed = n.place(|_| true);
        n.answered(&cooling);
        placed
    }

    #[test]
    fn nothing_is_asked_before_the_first_offer() {
        let mut n = Negotiation::default();
        n.want(1, VIDEO);
        assert_eq!(n.request(), None);
        assert_eq!(
            round(&mut n, 1, 0),
            Vec::<usize>::new(),
            "no video slot yet"
        );
        assert_eq!(n.request(), Some((0, 1)));
    }

    #[test]
    fn a_waiting_track_asks_once_per_count_and_is_placed_by_media() {
        let mut n = Negotiation::default();
        round(&mut n, 1, 0);
        n.want(7, VIDEO);
        n.want(8, AUDIO);
        // The audio track fits the existing audio slot only at the next offer.
        assert_eq!(n.request(), Some((1, 1)));
        assert_eq!(n.request(), None, "the same counts are not asked twice");
        n.want(9, VIDEO);
        assert_eq!(n.request(), Some((1, 2)));
        let placed = round(&mut n, 1, 2);
        assert_eq!(placed.len(), 3);
        assert_eq!(n.usage(0), SlotUse::Busy(8));
        assert_eq!(n.track(1), Some(7));
        assert_eq!(n.track(2), Some(9));
        assert!(!n.has_pending());
        // An offer answered the request: the same counts may be asked again later.
        assert_eq!(n.request(), Some((1, 2)));
    }

    #[test]
    fn a_freed_slot_cools_for_one_answer_then_carries_the_next_track() {
        let mut n = Negotiation::default();
        n.add_slot(VIDEO);
        n.want(1, VIDEO);
        round(&mut n, 0, 1);
        assert_eq!(n.free(0), Some(1));
        assert!(!n.sends(0));
        assert_eq!(n.free(0), None, "freeing twice does nothing");
        n.want(2, VIDEO);
        // The answer after the track ended marks the slot inactive, and does not reuse it.
        assert_eq!(round(&mut n, 0, 1), Vec::<usize>::new());
        assert_eq!(n.usage(0), SlotUse::Free);
        assert!(n.has_pending());
        assert_eq!(n.request(), Some((0, 1)));
        assert_eq!(round(&mut n, 0, 1), vec![0]);
        assert_eq!(n.track(0), Some(2));
    }

    #[test]
    fn a_section_the_client_stops_receiving_on_gives_its_track_back() {
        let mut n = Negotiation::default();
        n.want(1, VIDEO);
        round(&mut n, 0, 1);
        assert_eq!(n.track(0), Some(1));
        let lost = n.offer(|_| Offered::NotReceiving);
        assert_eq!(lost, vec![(0, 1)]);
        assert_eq!(n.usage(0), SlotUse::Gone);
        assert!(n.has_pending());
        assert_eq!(
            n.place(|_| true),
            Vec::<usize>::new(),
            "gone slots carry nothing"
        );
        n.answered(&[]);
        // The section comes back: free again, and the track returns to it.
        n.offer(|_| Offered::Receiving);
        assert_eq!(n.place(|_| true), vec![0]);
        assert_eq!(n.track(0), Some(1));
    }

    #[test]
    fn tracks_that_vanished_while_waiting_are_dropped() {
        let mut n = Negotiation::default();
        round(&mut n, 0, 1);
        n.want(1, VIDEO);
        n.want(2, VIDEO);
        n.want(2, VIDEO);
        assert!(n.forget(|t| t == 1));
        assert!(!n.forget(|t| t == 1));
        assert_eq!(n.request(), Some((0, 1)), "a track wanted twice waits once");
        n.offer(|_| Offered::Receiving);
        assert_eq!(n.place(|t| t != 2), Vec::<usize>::new());
        assert!(!n.has_pending());
    }

    #[test]
    fn losing_the_right_to_receive_stops_every_slot() {
        let mut n = Negotiation::default();
        n.want(1, AUDIO);
        n.want(2, VIDEO);
        round(&mut n, 1, 1);
        n.want(3, VIDEO);
        let stopped = n.stop_receiving();
        assert_eq!(stopped, vec![(0, 1), (1, 2)]);
        assert!(!n.has_pending());
        assert_eq!(n.busy().count(), 0);
        // The cooling slots are still counted until the answer marks them inactive.
        assert_eq!(n.request(), Some((1, 1)));
        round(&mut n, 1, 1);
        assert_eq!(n.request(), Some((0, 0)));
    }

    #[test]
    fn a_section_the_client_sends_simulcast_on_carries_nothing_but_is_counted() {
        let mut n = Negotiation::default();
        // The client publishes a simulcast camera on a sendrecv section (slot 0).
        n.add_slot(VIDEO);
        let simulcast = |i: usize| {
            if i == 0 {
                Offered::SendsSimulcast
            } else {
                Offered::Receiving
            }
        };
        n.offer(simulcast);
        n.answered(&[]);
        assert_eq!(n.usage(0), SlotUse::Kept);
        n.want(7, VIDEO);
        assert_eq!(
            n.place(|_| true),
            Vec::<usize>::new(),
            "not on the simulcast section"
        );
        // Counted as the client counts it: one receiving section more is needed than it has.
        assert_eq!(n.request(), Some((0, 2)));
        n.add_slot(VIDEO);
        n.offer(simulcast);
        assert_eq!(n.place(|_| true), vec![1]);
        n.answered(&[]);
        assert_eq!(n.track(1), Some(7));
        assert_eq!(n.request(), Some((0, 2)), "steady: what it has");
        // A section that carried a track and then sends simulcast gives the track back.
        let lost = n.offer(|_| Offered::SendsSimulcast);
        assert_eq!(lost, vec![(1, 7)]);
        assert_eq!(n.usage(1), SlotUse::Kept);
        assert!(n.has_pending());
        // Receiving plainly again: free, and the track returns.
        n.offer(|_| Offered::Receiving);
        assert_eq!(n.place(|_| true), vec![0]);
    }

    #[test]
    fn a_slot_that_cannot_start_is_released_without_retry() {
        let mut n = Negotiation::default();
        n.want(1, VIDEO);
        let placed = round(&mut n, 0, 1);
        n.release(placed[0]);
        assert_eq!(n.usage(0), SlotUse::Free);
        assert!(!n.has_pending());
        assert_eq!(n.usage(5), SlotUse::Gone, "unknown slots carry nothing");
    }
}
