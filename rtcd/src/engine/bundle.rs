//! A peer's interceptors as one link of `rtc`'s chain, each RTP packet shown only to those that
//! read it.
//!
//! `rtc`'s chain walks every packet by value through every interceptor in it: into the
//! interceptor, onto its queue, off it, onto the chain's belt and off again, a few hundred bytes
//! copied at each step. In the simulcast benchmark the chain's copies were about a third of
//! rtcd's `memmove`, the largest single cost (`docs/benchmarks.md`). Since 2026-12-06 a peer of
//! rtcd has one interceptor left, rtc's TWCC receiver, reading what the client sends. The rest
//! went out of the walk into the peer, which keeps them in place on its media path: receiver
//! reports and NACKs (`reception`, in place of rtc's receiver reports and NACK generator),
//! sender reports (`sender_reports`) and transport-cc numbering (`bwe::TransportCc`); the RTX
//! repair runs on the packet itself before any of them. The bundle stays the way the TWCC
//! receiver is driven (and the way any interceptor rtcd adds would be).
//!
//! A [`Bundle`] holds the same interceptors in the same order (by [`Slot`], wire-most first) and
//! is registered as one link. An RTP packet walks only through the members that say they look
//! at RTP in that direction ([`Sees`]); RTCP and what members generate walk through all of them,
//! as in the chain. A member blind to RTP in one direction is not polled while only RTP passes
//! it: what it generated (reports and NACKs, at its timeouts) is collected when `rtc` next polls
//! the link with its queue empty, which it does at every flush; the bundle then polls every
//! member, but only if one may hold something (after a timeout, a stream bound, a packet walked
//! the other way), not once per packet sent as the chain does. Measured
//! (`tests::cost_of_the_interceptors_per_packet_sent`, release, with the five members of
//! 2026-12-04): 0.81-1.03 us per packet sent as a chain, 0.51-0.55 as a bundle.
//!
//! What a member declares is a fact about its code: `rtc` 0.21's TWCC receiver passes written
//! RTP on untouched. The tests below hold each declaration to the interceptor itself, so an
//! upgrade of `rtc` that starts reading where a member is declared blind fails here, not in a
//! call.

use std::collections::VecDeque;
use std::time::Instant;

use rtc::interceptor::{Interceptor, Packet, Slot, StreamInfo, TaggedPacket};
use rtc::shared::error::Error;

/// Which RTP packets a member must see; RTCP and everything else it always sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sees {
    /// RTP arriving from the client.
    pub read: bool,
    /// RTP on its way to the client.
    pub write: bool,
}

impl Sees {
    /// Arriving RTP only (receive logs, reception reports, repair).
    pub const READ: Self = Self {
        read: true,
        write: false,
    };
    /// No RTP at all (RTCP only; the tests' declarations).
    #[cfg(test)]
    pub const NONE: Self = Self {
        read: false,
        write: false,
    };
}

/// One interceptor for a [`Bundle`]: where it sits (its slot in `rtc`'s order) and the RTP it
/// reads.
pub(super) type Entry = (Slot, Sees, Box<dyn Interceptor>);

struct Member {
    slot: Slot,
    sees: Sees,
    interceptor: Box<dyn Interceptor>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

/// Interceptors registered as one link; see the module docs.
#[derive(Default)]
pub(super) struct Bundle {
    /// Ordered by slot: index 0 is closest to the network (as in `rtc`'s chain).
    members: Vec<Member>,
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
    /// The walk's belt, kept between walks (no allocation per packet).
    belt: VecDeque<TaggedPacket>,
    /// A member may hold something for the read (write) walk that nobody polled yet: set by
    /// whatever can make a member generate (a timeout, a binding, a packet walked the other
    /// way), cleared by a walk that polls every member. Without them every poll of an empty
    /// queue would poll every member, once per packet sent.
    pending_reads: bool,
    pending_writes: bool,
}

impl Bundle {
    /// Adds `interceptor` at `slot` (its position among the members, as in a `Registry`),
    /// seeing the RTP `sees` names. A second member at the same slot replaces the first, as the
    /// registry does.
    fn with(mut self, slot: Slot, sees: Sees, interceptor: Box<dyn Interceptor>) -> Self {
        self.members.retain(|m| m.slot != slot);
        let at = self.members.partition_point(|m| m.slot < slot);
        self.members.insert(
            at,
            Member {
                slot,
                sees,
                interceptor,
            },
        );
        self
    }

    /// Walks the belt through the members in `direction`'s order; what comes out of the last
    /// one is appended to the link's queue for that direction. `drain`: every member is polled,
    /// even one that sees none of what is on the belt (what it generated is collected).
    fn walk(&mut self, direction: Direction, drain: bool) {
        let Self {
            members,
            reads,
            writes,
            belt,
            ..
        } = self;
        let count = members.len();
        for k in 0..count {
            let member = match direction {
                Direction::Read => &mut members[k],
                Direction::Write => &mut members[count - 1 - k],
            };
            let blind = match direction {
                Direction::Read => !member.sees.read,
                Direction::Write => !member.sees.write,
            };
            // The common case: RTP passing a member blind to it, which is then not even polled.
            if blind && !drain && belt.iter().all(is_rtp) {
                continue;
            }
            let interceptor = member.interceptor.as_mut();
            for _ in 0..belt.len() {
                let Some(msg) = belt.pop_front() else { break };
                if blind && is_rtp(&msg) {
                    belt.push_back(msg);
                    continue;
                }
                let handled = match direction {
                    Direction::Read => interceptor.handle_read(msg),
                    Direction::Write => interceptor.handle_write(msg),
                };
                if let Err(err) = handled {
                    tracing::debug!(error = %err, "interceptor refused a packet");
                }
            }
            loop {
                let out = match direction {
                    Direction::Read => interceptor.poll_read(),
                    Direction::Write => interceptor.poll_write(),
                };
                let Some(msg) = out else { break };
                belt.push_back(msg);
            }
        }
        match direction {
            Direction::Read => reads.append(belt),
            Direction::Write => writes.append(belt),
        }
    }

    /// What came out of the members towards the application, without polling any of them
    /// (the engine's media path takes a packet's own result at once, and polls for what the
    /// members generated once per round: `Peer::collect`).
    pub(super) fn take_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }

    /// As [`Bundle::take_read`], towards the client.
    pub(super) fn take_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }

    fn mark_pending(&mut self) {
        self.pending_reads = true;
        self.pending_writes = true;
    }
}

impl FromIterator<Entry> for Bundle {
    fn from_iter<I: IntoIterator<Item = Entry>>(iter: I) -> Self {
        iter.into_iter()
            .fold(Self::default(), |bundle, (slot, sees, interceptor)| {
                bundle.with(slot, sees, interceptor)
            })
    }
}

fn is_rtp(msg: &TaggedPacket) -> bool {
    matches!(msg.message.packet, Packet::Rtp(_))
}

impl rtc::sansio::Protocol<TaggedPacket, TaggedPacket, ()> for Bundle {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.belt.push_back(msg);
        self.walk(Direction::Read, false);
        self.pending_writes = true;
        Ok(())
    }

    /// Polls every member when nothing is queued and one may hold something: what they
    /// generated at their timeouts, or while only RTP they do not read went past them.
    fn poll_read(&mut self) -> Option<TaggedPacket> {
        if self.reads.is_empty() && self.pending_reads {
            self.pending_reads = false;
            self.walk(Direction::Read, true);
        }
        self.reads.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.belt.push_back(msg);
        self.walk(Direction::Write, false);
        self.pending_reads = true;
        Ok(())
    }

    /// As [`Self::poll_read`], for generated RTCP (reports, NACKs, transport-cc feedback).
    fn poll_write(&mut self) -> Option<TaggedPacket> {
        if self.writes.is_empty() && self.pending_writes {
            self.pending_writes = false;
            self.walk(Direction::Write, true);
        }
        self.writes.pop_front()
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), Self::Error> {
        self.mark_pending();
        for member in &mut self.members {
            member.interceptor.handle_timeout(now)?;
        }
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.members
            .iter_mut()
            .filter_map(|m| m.interceptor.poll_timeout())
            .min()
    }

    fn close(&mut self) -> Result<(), Self::Error> {
        self.mark_pending();
        for member in &mut self.members {
            member.interceptor.close()?;
        }
        Ok(())
    }
}

impl Interceptor for Bundle {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        self.mark_pending();
        for member in &mut self.members {
            member.interceptor.bind_local_stream(info);
        }
    }

    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.mark_pending();
        for member in &mut self.members {
            member.interceptor.unbind_local_stream(info);
        }
    }

    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        self.mark_pending();
        for member in &mut self.members {
            member.interceptor.bind_remote_stream(info);
        }
    }

    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        self.mark_pending();
        for member in &mut self.members {
            member.interceptor.unbind_remote_stream(info);
        }
    }
}

#[cfg(test)]
mod tests;
