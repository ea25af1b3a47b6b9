//! Media at the edges (issue 34), seen by a receiver that does only what the RFCs require:
//! webrtc-rs peers NACK lost packets and never send PLI or FIR, as aiortc does. A browser hides
//! the faults below by asking for a keyframe as soon as it cannot decode; such a receiver shows
//! them, because a hole in a section's sequence space holds every later frame behind it (aiortc's
//! jitter buffer waits for every sequence number until 512 packets have piled up: 15-17 s).
//!
//! * A section reused for one visitor after another: each visitor's video starts with a
//!   keyframe within a second of its `TrackPublished`, nothing of a departed visitor arrives
//!   after its `TrackRemoved`, and the section's sequence space has no hole.
//! * A publisher restarting ICE under 3 % random loss (nftables in the test's own namespace):
//!   the subscriber's sequence space has no unrepaired hole, and no packet waits more than a
//!   second behind a missing one.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use rtcd_e2e::daemon::TestRtcd;
use rtcd_e2e::media::{
    Arrival, KEYFRAME_INTERVAL, Participant, PeerOptions, all_permissions, eventually, publisher,
};
use rtcd_e2e::netns;
use rtcd_proto::v1 as pb;
use rtcd_proto::v1::server_signal::Signal;

/// Visitors that come and go on the same sections (the issue asks for 40).
const VISITORS: usize = 40;
/// What a visitor's video may take from its `TrackPublished` to its first keyframe.
const FIRST_KEYFRAME_WITHIN: Duration = Duration::from_secs(1);
/// How long after `TrackRemoved` a packet of the departed track may still arrive without having
/// been sent after it. rtcd stops forwarding before it emits the event, but the two travel on
/// different paths (UDP and the participant's track reader; gRPC and its stream reader) that a
/// loaded 2-core machine may schedule tens of ms apart. The fault this catches arrived 0.3 to
/// 1.2 s late; on one SSRC the order is exact and checked without any grace.
const REMOVAL_GRACE: Duration = Duration::from_millis(150);
/// ICE restarts of the publisher in the loss test (each is a chance to lose what is in flight).
const RESTARTS: usize = 3;
/// The longest a received packet may wait behind a missing earlier one (a receiver that
/// delivers in order, as a jitter buffer does).
const HELD_AT_MOST: Duration = Duration::from_secs(1);

/// A subscriber that logs every packet it receives, publishing audio and video itself.
async fn logging_publisher(
    client: &mut rtcd_proto::v1::signaling_client::SignalingClient<tonic::transport::Channel>,
    auth: &str,
    session: &str,
) -> anyhow::Result<Participant> {
    let p = Participant::join_with(
        client,
        Some(auth),
        "call",
        session,
        all_permissions(),
        PeerOptions {
            log_packets: true,
            stable_nacks: true,
            ..Default::default()
        },
    )
    .await?;
    p.add_track("audio").await?;
    p.add_track("video").await?;
    p.renegotiate().await?;
    Ok(p)
}

/// The arrivals of `ssrc`, with their sequence numbers unwrapped (in arrival order).
fn unwrapped(arrivals: &[Arrival], ssrc: u32) -> Vec<(u64, &Arrival)> {
    let mut last: Option<u64> = None;
    let mut out = Vec::new();
    for a in arrivals.iter().filter(|a| a.ssrc == ssrc) {
        let ext = match last {
            None => (1 << 16) + u64::from(a.seq),
            Some(prev) => {
                let delta = a.seq.wrapping_sub(prev as u16) as i16;
                prev.wrapping_add_signed(i64::from(delta))
            }
        };
        last = Some(last.map_or(ext, |l| l.max(ext)));
        out.push((ext, a));
    }
    out
}

/// For a receiver that plays `ssrc` in sequence order: sequence numbers never received
/// (between the first and the last received before `until`), and the longest a packet
/// received before `until` waited for an earlier one, with its sequence number.
fn holes_and_longest_wait(
    arrivals: &[Arrival],
    ssrc: u32,
    until: Instant,
) -> (Vec<u64>, Duration, u64) {
    let seqs = unwrapped(arrivals, ssrc);
    let mut first_arrival: BTreeMap<u64, Instant> = BTreeMap::new();
    for (ext, a) in &seqs {
        first_arrival.entry(*ext).or_insert(a.at);
    }
    let Some((&lo, _)) = first_arrival.iter().next() else {
        return (Vec::new(), Duration::ZERO, 0);
    };
    let hi = first_arrival
        .iter()
        .filter(|(_, at)| **at <= until)
        .map(|(e, _)| *e)
        .max()
        .unwrap_or(lo);
    let holes: Vec<u64> = (lo..=hi)
        .filter(|e| !first_arrival.contains_key(e))
        .collect();
    // Playable when it and every earlier number have arrived.
    let mut playable = first_arrival[&lo];
    let mut longest = (Duration::ZERO, lo);
    for e in lo..=hi {
        let Some(&at) = first_arrival.get(&e) else {
            continue;
        };
        playable = playable.max(at);
        let waited = playable.saturating_duration_since(at);
        if waited > longest.0 {
            longest = (waited, e);
        }
    }
    (holes, longest.0, longest.1)
}

/// What arrived on `ssrc` around sequence number `ext` (in sequence order, with arrival times),
/// and when the video tracks were published and removed: the story of a failure.
fn context(arrivals: &[Arrival], events: &[(Instant, Signal)], ssrc: u32, ext: u64) -> String {
    let Some(origin) = arrivals.first().map(|a| a.at) else {
        return String::new();
    };
    let mut sorted = unwrapped(arrivals, ssrc);
    sorted.sort_by_key(|(e, _)| *e);
    let around: Vec<String> = sorted
        .iter()
        .filter(|(e, _)| e.abs_diff(ext) <= 6)
        .map(|(e, a)| {
            format!(
                "{e} {:?} key={} at {:?}",
                a.flow,
                a.keyframe,
                a.at.saturating_duration_since(origin)
            )
        })
        .collect();
    let told: Vec<String> = events
        .iter()
        .filter_map(|(t, e)| {
            let (what, x) = match e {
                Signal::TrackPublished(x) => ("published", x),
                Signal::TrackRemoved(x) => ("removed", x),
                _ => return None,
            };
            (x.kind == pb::TrackKind::Video as i32).then(|| {
                format!(
                    "{} {what} at {:?}",
                    x.session_id,
                    t.saturating_duration_since(origin)
                )
            })
        })
        .collect();
    format!("around {ext}: {around:#?}; video events: {told:?}")
}

fn published(
    events: &[(Instant, Signal)],
    session: &str,
    kind: pb::TrackKind,
) -> Option<(Instant, String)> {
    events.iter().find_map(|(at, e)| match e {
        Signal::TrackPublished(t) if t.session_id == session && t.kind == kind as i32 => {
            Some((*at, t.track_id.clone()))
        }
        _ => None,
    })
}

fn removed(events: &[(Instant, Signal)], track_id: &str) -> Option<Instant> {
    events.iter().find_map(|(at, e)| match e {
        Signal::TrackRemoved(t) if t.track_id == track_id => Some(*at),
        _ => None,
    })
}

/// 3 % of the UDP datagrams in the test's namespace are dropped (media, feedback and ICE, both
/// ways): a departing visitor's last packets may be lost where nobody can resend them any more.
/// DTLS (first byte 20-63, RFC 7983) is spared: under loss a webrtc-rs client sometimes never
/// finished its handshake (`connecting` for 30 s, about one join in twenty) although rtcd's side
/// recovers from any lost flight (`engine::peer::tests::dtls_handshake_survives_...`), and the
/// handshake is not what these tests are about.
async fn lose_three_percent() -> anyhow::Result<()> {
    netns::nft(
        "table inet lossy {\n\
           chain input { type filter hook input priority 0; \
             meta l4proto udp @th,64,8 != 20-63 numgen random mod 100 < 3 drop; }\n\
         }\n",
    )
    .await
}

/// A call under 3 % loss: rtcd, alice publishing, bob (logging every packet) receiving her.
struct Lossy {
    _rtcd: TestRtcd,
    auth: String,
    client: rtcd_proto::v1::signaling_client::SignalingClient<tonic::transport::Channel>,
    alice: Participant,
    bob: Participant,
}

impl Lossy {
    /// Starts it; the loss begins once bob receives alice.
    async fn start() -> anyhow::Result<Self> {
        let rtcd = TestRtcd::start(&[]).await?;
        let auth = rtcd.register("tenant-a").await?;
        let mut client = rtcd.client().await?;
        let alice = publisher(&mut client, &auth, "alice").await?;
        let bob = logging_publisher(&mut client, &auth, "bob").await?;
        eventually("bob receives alice", || bob.received("alice", "video") > 20).await?;
        lose_three_percent().await?;
        Ok(Self {
            _rtcd: rtcd,
            auth,
            client,
            alice,
            bob,
        })
    }
}

/// Forty visitors come and go one after another while 3 % of the datagrams are lost: each
/// visitor's video lands on the section the last one left.
#[test]
fn visitors_on_reused_sections_start_with_a_keyframe_and_nothing_of_the_last_follows()
-> anyhow::Result<()> {
    netns::run(reused_sections)
}

async fn reused_sections() -> anyhow::Result<()> {
    let Lossy {
        _rtcd,
        auth,
        mut client,
        alice,
        bob,
    } = Lossy::start().await?;
    for n in 1..=VISITORS {
        let name = format!("visitor{n}");
        let visitor = publisher(&mut client, &auth, &name).await?;
        let flow = format!("{name}/video");
        let keyframe = eventually(&format!("bob gets a keyframe of {name}"), || {
            bob.any_arrival(|a| a.flow == flow && a.keyframe)
        })
        .await;
        if let Err(e) = keyframe {
            let told = published(&bob.timed_events(), &name, pb::TrackKind::Video).is_some();
            anyhow::bail!(
                "{e:#}: visitor {:?}, PLIs it got {}, bob told of its video {told}, \
                 bob received {} of its video, {} of its audio",
                visitor.connection_state(),
                visitor.plis(),
                bob.received(&name, "video"),
                bob.received(&name, "audio"),
            );
        }
        // A few more frames, then the visitor leaves (a stream that merely breaks would be
        // parked for a resume).
        tokio::time::sleep(Duration::from_millis(200)).await;
        visitor
            .send(pb::client_signal::Signal::Leave(pb::Leave {}))
            .await?;
        eventually(&format!("bob is told {name}'s tracks ended"), || {
            bob.timed_events().iter().any(|(_, e)| {
                matches!(e, Signal::TrackRemoved(t) if t.session_id == name
                    && t.kind == pb::TrackKind::Video as i32)
            })
        })
        .await?;
        drop(visitor);
    }
    // Let late packets (if any) arrive before judging.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let events = bob.timed_events();
    let arrivals = bob.arrivals();
    let end = Instant::now() - Duration::from_secs(1);

    let mut video_ssrcs: HashMap<u32, usize> = HashMap::new();
    for n in 1..=VISITORS {
        let name = format!("visitor{n}");
        for (kind, flow) in [
            (pb::TrackKind::Video, format!("{name}/video")),
            (pb::TrackKind::Audio, format!("{name}/audio")),
        ] {
            let (published_at, track_id) = published(&events, &name, kind)
                .with_context(|| format!("bob was never told of {flow}"))?;
            let removed_at = removed(&events, &track_id)
                .with_context(|| format!("bob was never told {flow} ended"))?;
            let mine: Vec<&Arrival> = arrivals.iter().filter(|a| a.flow == flow).collect();
            let ssrc = mine
                .first()
                .with_context(|| format!("bob received nothing of {flow}"))?
                .ssrc;
            if kind == pb::TrackKind::Video {
                let uses = video_ssrcs.entry(ssrc).or_default();
                // The visitor that opens a section has no packet before its own on that SSRC:
                // under the 3 % loss its first packet (the keyframe) may be lost unseen, and a
                // receiver that only NACKs cannot ask for what it cannot know was sent (it
                // failed so once in CI). Its first keyframe is still bounded below; each
                // visitor after it follows a known sequence number, so a lost start is NACKed.
                let opens = *uses == 0;
                *uses += 1;
                // First in sequence order (its first packet may have been lost and resent).
                let (_, first) = unwrapped(&arrivals, ssrc)
                    .into_iter()
                    .filter(|(_, a)| a.flow == flow)
                    .min_by_key(|(ext, _)| *ext)
                    .context("no packet")?;
                if !first.keyframe && !opens {
                    let mut around: Vec<(u64, &Arrival)> = unwrapped(&arrivals, ssrc);
                    around.sort_by_key(|(ext, _)| *ext);
                    let at = around
                        .iter()
                        .position(|(_, a)| std::ptr::eq(*a, first))
                        .unwrap_or(0);
                    let shown: Vec<String> = around
                        [at.saturating_sub(4)..(at + 6).min(around.len())]
                        .iter()
                        .map(|(ext, a)| {
                            format!(
                                "{ext} {} key={} +{:?}",
                                a.flow,
                                a.keyframe,
                                a.at.saturating_duration_since(published_at)
                            )
                        })
                        .collect();
                    anyhow::bail!(
                        "{flow} started without a keyframe on ssrc {ssrc:#x} seq {}: {shown:#?}",
                        first.seq
                    );
                }
                let keyframe = mine.iter().find(|a| a.keyframe).context("no keyframe")?;
                let took = keyframe.at.saturating_duration_since(published_at);
                // An opener whose first keyframe was lost unseen has the next of its own.
                let within = if opens {
                    FIRST_KEYFRAME_WITHIN + KEYFRAME_INTERVAL
                } else {
                    FIRST_KEYFRAME_WITHIN
                };
                ensure!(
                    took <= within,
                    "{flow}: first keyframe {took:?} after its TrackPublished"
                );
            }
            let late: Vec<Duration> = mine
                .iter()
                .filter(|a| a.at > removed_at + REMOVAL_GRACE)
                .map(|a| a.at - removed_at)
                .collect();
            ensure!(
                late.is_empty(),
                "{} packets of {flow} arrived after its TrackRemoved (up to {:?} later)",
                late.len(),
                late.iter().max()
            );
        }
    }
    ensure!(
        video_ssrcs.len() < VISITORS,
        "the visitors' video never shared a section: {video_ssrcs:?}"
    );
    for &ssrc in video_ssrcs.keys() {
        // On one SSRC the order is exact: once a visitor's packets stop and another's begin,
        // nothing of the earlier one may follow.
        let mut seen: Vec<&str> = Vec::new();
        for a in arrivals
            .iter()
            .filter(|a| a.ssrc == ssrc && !a.flow.is_empty())
        {
            if seen.last() != Some(&a.flow.as_str()) {
                ensure!(
                    !seen.contains(&a.flow.as_str()),
                    "ssrc {ssrc:#x}: {} came back after {} (seq {})",
                    a.flow,
                    seen.last().unwrap_or(&""),
                    a.seq
                );
                seen.push(&a.flow);
            }
        }
        let (holes, longest, at) = holes_and_longest_wait(&arrivals, ssrc, end);
        if let Some(&hole) = holes.first() {
            anyhow::bail!(
                "ssrc {ssrc:#x}: {} sequence numbers never arrived: {holes:?}; {}",
                holes.len(),
                context(&arrivals, &events, ssrc, hole)
            );
        }
        ensure!(
            longest <= HELD_AT_MOST,
            "ssrc {ssrc:#x}: a packet (seq {at}) waited {longest:?} for an earlier one; {}",
            context(&arrivals, &events, ssrc, at)
        );
    }
    eprintln!(
        "{VISITORS} visitors on {} video sections: {:?}",
        video_ssrcs.len(),
        video_ssrcs
    );
    drop(alice);
    Ok(())
}

/// The publisher restarts ICE mid-call while 3 % of every UDP datagram in the namespace is
/// dropped (both ways, media and feedback): whatever it sent that rtcd missed is asked for again
/// (or, where it cannot be had, the hole closes and a keyframe follows), and the subscriber's
/// video goes on in sequence with no packet held more than a second behind a missing one.
#[test]
fn a_publisher_restarting_ice_under_loss_leaves_no_unrepaired_hole() -> anyhow::Result<()> {
    netns::run(|| async {
        let Lossy {
            _rtcd, alice, bob, ..
        } = Lossy::start().await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let restarted = Instant::now();
        for _ in 0..RESTARTS {
            let before = alice.negotiations();
            alice.restart_ice().await?;
            eventually("alice's ICE restart is answered", || {
                alice.negotiations() > before
            })
            .await?;
            let received = bob.received("alice", "video");
            tokio::time::sleep(Duration::from_secs(2)).await;
            ensure!(
                bob.received("alice", "video") > received + 40,
                "bob's video from alice stopped after her ICE restart"
            );
        }
        netns::nft("delete table inet lossy\n").await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let arrivals = bob.arrivals();
        let ssrc = arrivals
            .iter()
            .find(|a| a.flow == "alice/video")
            .context("bob received no video from alice")?
            .ssrc;
        let end = Instant::now() - Duration::from_secs(1);
        let (holes, longest, at) = holes_and_longest_wait(&arrivals, ssrc, end);
        let lost_and_repaired = unwrapped(&arrivals, ssrc)
            .windows(2)
            .filter(|w| w[1].0 < w[0].0)
            .count();
        eprintln!(
            "alice -> bob over 3 % loss with {RESTARTS} ICE restarts from {:?} before: {} repaired late, \
             longest wait {longest:?} (seq {at}), {} never arrived",
            restarted.elapsed(),
            lost_and_repaired,
            holes.len()
        );
        ensure!(
            lost_and_repaired > 0,
            "nothing arrived out of order: the loss did not happen"
        );
        ensure!(
            holes.is_empty(),
            "{} sequence numbers never arrived at bob: {holes:?}",
            holes.len()
        );
        ensure!(
            longest <= HELD_AT_MOST,
            "a packet (seq {at}) waited {longest:?} for an earlier one"
        );
        Ok(())
    })
}
