//! The little SDP reading and writing the session needs beyond the media engine: which media
//! sections a client offer has (to prepare a sending slot for each new receiving section before
//! the engine applies the offer), and the last touches to rtcd's answer text (`msid-semantic`,
//! the current occupant's msid on a reused section).
//!
//! Plain text in, plain text out: the engine has already validated the SDP, or will.

use std::collections::HashMap;

/// The media type of a section (data channels and unknown types are `Other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    /// `m=audio`.
    Audio,
    /// `m=video`.
    Video,
    /// Anything else (`application`, ...).
    Other,
}

/// A direction attribute, as written by the side that wrote the SDP: the contract's rule
/// (`rtcd_proto::rules`), so rtcd answers a section exactly as the proxy authorized it.
pub use rtcd_proto::rules::Direction;

/// One media section of an SDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// `a=mid` (empty when absent).
    pub mid: String,
    /// The media type.
    pub media: Media,
    /// The direction (the section's own, else the session's, else sendrecv).
    pub direction: Direction,
    /// Port 0 without `a=bundle-only`: the section is rejected or stopped. (Firefox offers
    /// every bundled section after the first with port 0 and `a=bundle-only`: in use.)
    pub rejected: bool,
    /// The sender's MediaStreamTrack id (`a=msid:<stream> <track>`), if it names one.
    pub track_id: Option<String>,
    /// The header extensions (`a=extmap:<id>/sendonly`) its writer offers to send only.
    pub send_only_extensions: Vec<u16>,
    /// Its writer sends simulcast on it (`a=simulcast:` with a `send` list, RFC 8853).
    pub sends_simulcast: bool,
}

impl Section {
    /// Whether the section is in use and its writer receives on it.
    pub fn receives(&self) -> bool {
        !self.rejected && self.direction.receives()
    }

    /// Whether the section is in use and its writer sends on it.
    pub fn sends(&self) -> bool {
        !self.rejected && self.direction.sends()
    }

    /// Whether the media server may send another participant's track on it: its writer
    /// receives on it and does not send simulcast on it. A stack may take every `a=rid` of a
    /// section as layers it receives, whatever their direction (webrtc-rs 0.21 does), and then
    /// drop a stream declared there by `a=ssrc`: what the media server sent on it was lost.
    pub fn may_carry(&self) -> bool {
        self.receives() && !self.sends_simulcast
    }
}

/// The media sections of `sdp`, in order.
pub fn sections(sdp: &str) -> Vec<Section> {
    let mut session_direction = None;
    let mut out: Vec<(Section, Option<Direction>)> = Vec::new();
    let mut bundle_only: Vec<bool> = Vec::new();
    for line in sdp.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(m) = line.strip_prefix("m=") {
            let mut fields = m.split_whitespace();
            let media = match fields.next() {
                Some("audio") => Media::Audio,
                Some("video") => Media::Video,
                _ => Media::Other,
            };
            let rejected = fields.next().is_some_and(|port| port == "0");
            out.push((
                Section {
                    mid: String::new(),
                    media,
                    direction: Direction::SendRecv,
                    rejected,
                    track_id: None,
                    send_only_extensions: Vec::new(),
                    sends_simulcast: false,
                },
                None,
            ));
            bundle_only.push(false);
        } else if let Some(attr) = line.strip_prefix("a=") {
            let current = out.last_mut();
            if attr.trim() == "bundle-only" {
                if let Some(b) = bundle_only.last_mut() {
                    *b = true;
                }
            } else if let Some(msid) = attr.strip_prefix("msid:") {
                if let Some((section, _)) = current {
                    section.track_id = msid.split_whitespace().nth(1).map(str::to_owned);
                }
            } else if let Some((id, direction)) = extmap(attr) {
                if let Some((section, _)) = current
                    && direction == Some("sendonly")
                {
                    section.send_only_extensions.push(id);
                }
            } else if let Some(simulcast) = attr.strip_prefix("simulcast:") {
                // `<direction> <list>` pairs: `send q;h;f`, `recv 1;2`, both.
                if let Some((section, _)) = current {
                    section.sends_simulcast |=
                        simulcast.split_whitespace().step_by(2).any(|d| d == "send");
                }
            } else if let Some(mid) = attr.strip_prefix("mid:") {
                if let Some((section, _)) = current {
                    section.mid = mid.trim().to_owned();
                }
            } else if let Some(d) = Direction::parse(attr.trim()) {
                match current {
                    Some((_, own)) => *own = Some(d),
                    None => session_direction = Some(d),
                }
            }
        }
    }
    out.into_iter()
        .zip(bundle_only)
        .map(|((mut section, own), bundled)| {
            section.direction = own.or(session_direction).unwrap_or(Direction::SendRecv);
            section.rejected &= !bundled;
            section
        })
        .collect()
}

/// The msid of a section's current track: `a=msid:<stream> <track>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msid {
    /// The stream id (rtcd: the publishing session).
    pub stream: String,
    /// The track id (rtcd: the published track's id).
    pub track: String,
}

/// Per section of an offer its writer does not send on, the header extensions it offered to
/// send only: nothing will carry them there, and the answer leaves them out
/// ([`polish_answer`]).
///
/// Firefox, once one of its sections sends simulcast, offers the rid extensions (`/sendonly`)
/// on every video section of its later offers, receiving ones included; answered (rtc echoes
/// them, without a direction), they changed what a receiving section had negotiated, and
/// Firefox made that section's receive stream anew: its decoder waited for a keyframe and
/// asked for one, at the first renegotiation after the simulcast section came (in every
/// two-minute Chromium-Firefox call: Bob's receiver of Alice's camera at Carol's join).
/// RFC 8285 section 6 also allows only `recvonly` or `inactive`, or leaving the extension out,
/// in an answer to a `sendonly` one.
pub fn unsent_extensions(offer: &[Section]) -> HashMap<String, Vec<u16>> {
    offer
        .iter()
        .filter(|s| !s.sends() && !s.send_only_extensions.is_empty())
        .map(|s| (s.mid.clone(), s.send_only_extensions.clone()))
        .collect()
}

/// Finishes rtcd's answer before it is sent:
/// * a session-level `a=msid-semantic: WMS *` (some stacks, aiortc among them, ignore `a=msid`
///   without it);
/// * a section in `current` gets that msid on its `a=msid` and `a=ssrc:* msid` lines: a reused
///   section must name its current track, while the engine keeps the first one (RFC 8829
///   §5.2.2 keeps msid stable for an offerer; our answers describe what is sent now).
///
/// * a section in `unsent` leaves out those header extensions ([`unsent_extensions`]).
///
/// An `inactive` section keeps its SSRC lines: Chromium (156), when a receiving section loses
/// its SSRC and gets it back, never renders that receiver's track again although it decodes
/// the frames; with the SSRC kept, it resumes the stream (the slot's sequence numbers run on).
pub fn polish_answer(
    sdp: &str,
    current: &HashMap<String, Msid>,
    unsent: &HashMap<String, Vec<u16>>,
) -> String {
    let mut sections: Vec<Vec<&str>> = vec![Vec::new()];
    for line in sdp.split("\r\n").filter(|l| !l.is_empty()) {
        if line.starts_with("m=") {
            sections.push(Vec::new());
        }
        if let Some(last) = sections.last_mut() {
            last.push(line);
        }
    }
    let mut out = String::with_capacity(sdp.len() + 64);
    let session = sections.remove(0);
    let has_semantic = session.iter().any(|l| l.starts_with("a=msid-semantic"));
    for line in &session {
        // Written `a=msid-semantic: WMS` by browsers and the RFC's examples; some parsers
        // (aiortc) only accept that spelling, and rtc 0.21 writes it without the space.
        match line.strip_prefix("a=msid-semantic:") {
            Some(rest) if !rest.starts_with(' ') => {
                out.push_str("a=msid-semantic: ");
                out.push_str(rest);
            }
            _ => out.push_str(line),
        }
        out.push_str("\r\n");
        if !has_semantic && line.starts_with("t=") {
            out.push_str("a=msid-semantic: WMS *\r\n");
        }
    }
    for section in sections {
        let mid = section
            .iter()
            .find_map(|l| l.strip_prefix("a=mid:"))
            .unwrap_or("")
            .trim();
        let msid = current.get(mid);
        let unsent = unsent.get(mid);
        for line in section {
            if let Some(ids) = unsent
                && line
                    .strip_prefix("a=")
                    .and_then(extmap)
                    .is_some_and(|(id, _)| ids.contains(&id))
            {
                continue;
            }
            match (msid, rewrite_msid(line)) {
                (Some(m), Some(prefix)) => {
                    out.push_str(&format!("{prefix}{} {}\r\n", m.stream, m.track));
                }
                _ => {
                    out.push_str(line);
                    out.push_str("\r\n");
                }
            }
        }
    }
    out
}

/// The id and direction of an `extmap:<id>[/<direction>] <uri>` attribute (after `a=`).
fn extmap(attr: &str) -> Option<(u16, Option<&str>)> {
    let field = attr.strip_prefix("extmap:")?.split_whitespace().next()?;
    let (id, direction) = match field.split_once('/') {
        Some((id, direction)) => (id, Some(direction)),
        None => (field, None),
    };
    Some((id.parse().ok()?, direction))
}

/// For an `a=msid:` or `a=ssrc:<n> msid:` line, the part before the msid value.
fn rewrite_msid(line: &str) -> Option<&str> {
    if line.starts_with("a=msid:") {
        return Some("a=msid:");
    }
    let rest = line.strip_prefix("a=ssrc:")?;
    let at = rest.find(" msid:")?;
    Some(&line[..("a=ssrc:".len() + at + " msid:".len())])
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2 3\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=recvonly\r\n\
        m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=recvonly\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:3\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:4\r\n";

    #[test]
    fn sections_have_mid_type_direction_and_rejection() {
        let s = sections(OFFER);
        assert_eq!(s.len(), 5);
        assert_eq!(
            (s[0].mid.as_str(), s[0].media, s[0].direction),
            ("0", Media::Audio, Direction::SendOnly)
        );
        assert!(s[0].sends() && !s[0].receives());
        assert!(s[1].receives() && !s[1].sends());
        assert!(s[2].rejected && !s[2].receives(), "port 0 is not in use");
        assert_eq!(
            s[3].direction,
            Direction::SendRecv,
            "no attribute = sendrecv"
        );
        assert_eq!(s[4].media, Media::Other);
    }

    #[test]
    fn a_session_level_direction_is_the_default() {
        let s = sections(
            "v=0\r\na=recvonly\r\nm=video 9 X 96\r\na=mid:a\r\nm=audio 9 X 0\r\na=mid:b\r\na=inactive\r\n",
        );
        assert_eq!(s[0].direction, Direction::RecvOnly);
        assert_eq!(s[1].direction, Direction::Inactive);
    }

    #[test]
    fn a_bundle_only_section_with_port_0_is_in_use() {
        // Firefox's re-offers: every bundled section after the first.
        let s = sections(
            "v=0\r\nm=audio 9 X 111\r\na=mid:0\r\na=sendonly\r\n\
             m=video 0 X 96\r\na=bundle-only\r\na=mid:1\r\na=sendonly\r\n\
             m=video 0 X 96\r\na=mid:2\r\na=recvonly\r\na=bundle-only\r\n\
             m=video 0 X 96\r\na=mid:3\r\na=recvonly\r\n",
        );
        assert!(s[1].sends() && !s[1].rejected);
        assert!(s[2].receives());
        assert!(s[3].rejected && !s[3].receives(), "no bundle-only: stopped");
    }

    #[test]
    fn a_section_its_writer_sends_simulcast_on_may_not_carry_another_track() {
        let s = sections(
            "v=0\r\nm=video 9 X 96\r\na=mid:0\r\na=sendrecv\r\na=rid:q send\r\na=rid:f send\r\n\
             a=simulcast:send q;f\r\n\
             m=video 9 X 96\r\na=mid:1\r\na=sendrecv\r\n\
             m=video 9 X 96\r\na=mid:2\r\na=sendrecv\r\na=simulcast:recv 1;2\r\n\
             m=video 9 X 96\r\na=mid:3\r\na=simulcast:recv a send b\r\n",
        );
        assert!(s[0].receives() && s[0].sends_simulcast && !s[0].may_carry());
        assert!(s[1].may_carry());
        assert!(
            !s[2].sends_simulcast && s[2].may_carry(),
            "it receives simulcast"
        );
        assert!(s[3].sends_simulcast, "send in the second pair");
    }

    #[test]
    fn garbage_has_no_sections() {
        assert!(sections("hello").is_empty());
        assert!(sections("").is_empty());
    }

    const ANSWER: &str = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=msid:old-session old-track\r\n\
        a=ssrc:11 cname:old-session\r\na=ssrc:11 msid:old-session old-track\r\na=sendonly\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=msid:gone t\r\na=ssrc:22 cname:gone\r\n\
        a=ssrc:22 msid:gone t\r\na=inactive\r\n";

    #[test]
    fn answers_get_msid_semantic_and_current_msids_and_inactive_sections_keep_their_ssrc() {
        let current = HashMap::from([(
            "0".to_owned(),
            Msid {
                stream: "s7".into(),
                track: "s7-video-3".into(),
            },
        )]);
        let out = polish_answer(ANSWER, &current, &HashMap::new());
        assert!(out.contains("t=0 0\r\na=msid-semantic: WMS *\r\n"), "{out}");
        assert!(out.contains("a=msid:s7 s7-video-3\r\n"), "{out}");
        assert!(out.contains("a=ssrc:11 msid:s7 s7-video-3\r\n"), "{out}");
        assert!(out.contains("a=ssrc:11 cname:old-session\r\n"), "{out}");
        assert!(!out.contains("old-track"), "{out}");
        let inactive = &out[out.find("a=mid:1").unwrap()..];
        assert!(inactive.contains("a=ssrc:22 cname:gone\r\n"), "{out}");
        assert!(inactive.contains("a=msid:gone t\r\n"), "{out}");
        let shape = |sdp: &str| -> Vec<(String, Media, Direction, bool)> {
            sections(sdp)
                .into_iter()
                .map(|s| (s.mid, s.media, s.direction, s.rejected))
                .collect()
        };
        assert_eq!(shape(&out), shape(ANSWER), "sections are unchanged");
        assert_eq!(sections(&out)[0].track_id.as_deref(), Some("s7-video-3"));
        assert_eq!(
            polish_answer(&out, &current, &HashMap::new()),
            out,
            "polishing twice changes nothing"
        );
    }

    /// Firefox's re-offer once its camera sends simulcast (from a two-minute call's trace,
    /// trimmed): the rid extensions `/sendonly` on its receiving video section too.
    const FIREFOX_REOFFER: &str = "v=0\r\no=mozilla...THIS_IS_SDPARTA-99.0 1 3 IN IP4 0.0.0.0\r\n\
        s=-\r\nt=0 0\r\na=group:BUNDLE 1 3\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 120\r\na=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
        a=extmap:9/sendonly urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n\
        a=extmap:10/sendonly urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n\
        a=mid:1\r\na=recvonly\r\n\
        m=video 0 UDP/TLS/RTP/SAVPF 120\r\na=bundle-only\r\na=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
        a=extmap:9/sendonly urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n\
        a=extmap:10/sendonly urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n\
        a=mid:3\r\na=sendonly\r\na=rid:q send\r\na=rid:f send\r\na=simulcast:send q;f\r\n";

    /// What rtc 0.21 answered to it: every offered extension echoed, without a direction.
    const ECHOING_ANSWER: &str = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
        a=group:BUNDLE 1 3\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 120\r\na=mid:1\r\n\
        a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n\
        a=extmap:9 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n\
        a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=sendonly\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 120\r\na=mid:3\r\n\
        a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n\
        a=extmap:9 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n\
        a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=recvonly\r\n";

    #[test]
    fn extensions_offered_send_only_are_left_out_where_the_offerer_does_not_send() {
        let offer = sections(FIREFOX_REOFFER);
        assert_eq!(offer[0].send_only_extensions, [9, 10]);
        assert_eq!(offer[1].send_only_extensions, [9, 10]);
        let unsent = unsent_extensions(&offer);
        assert_eq!(
            unsent,
            HashMap::from([("1".to_owned(), vec![9, 10])]),
            "only where Firefox receives"
        );
        let out = polish_answer(ECHOING_ANSWER, &HashMap::new(), &unsent);
        let (receiving, sending) = out.split_at(out.find("a=mid:3").unwrap());
        assert!(!receiving.contains("rtp-stream-id"), "{out}");
        assert!(
            receiving.contains("a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"),
            "{out}"
        );
        assert!(
            sending.contains("a=extmap:9 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n"),
            "{out}"
        );
        assert!(sending.contains("a=extmap:10 "), "{out}");
        // Nothing offered send-only: the answer as before.
        assert_eq!(
            polish_answer(
                ECHOING_ANSWER,
                &HashMap::new(),
                &unsent_extensions(&sections(OFFER))
            ),
            polish_answer(ECHOING_ANSWER, &HashMap::new(), &HashMap::new())
        );
    }
}
