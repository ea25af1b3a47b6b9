//! Permissions and the signaling-layer policy: what a granted session may publish or receive,
//! checked on every message before anything is relayed.
//!
//! The SDP inspection is a pure function over the text of an offer or answer: it lists the
//! media sections, then [`authorize_sdp`] decides whether each section the client would *send*
//! on is covered by a capability. Screen shares are recognised by the client's declared track
//! sources (`tracks: {mid: "screen"}`) or by the standard `a=content:slides` attribute
//! (RFC 4796); undeclared video is a camera. rtcd enforces the same permissions on media, so
//! this layer is the early, cheap refusal, not the only one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One thing a participant may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Send a microphone track.
    PublishAudio,
    /// Send a camera track.
    PublishVideo,
    /// Send a screen share (video and its audio).
    PublishScreen,
    /// Receive other participants' tracks.
    Subscribe,
    /// Start and stop the room's recording (moderators only: the `moderate` actions
    /// `start_recording` / `stop_recording`, and `record` in `set_policy`). Granted by the join
    /// token (its `permissions`, or the role's `[auth.permissions]` list); the media server
    /// does not know it, so it cannot be changed live.
    Record,
}

impl Capability {
    /// The wire name (`publish_video`, ...), as tokens, `joined` and the docs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::PublishAudio => "publish_audio",
            Capability::PublishVideo => "publish_video",
            Capability::PublishScreen => "publish_screen",
            Capability::Subscribe => "subscribe",
            Capability::Record => "record",
        }
    }
}

/// The role a token grants; decides the base capabilities (`[auth.permissions]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// May moderate the room (mute / remove others, once rtcd supports it).
    Moderator,
    /// A regular participant.
    Member,
    /// A restricted participant, typically receive-only.
    Guest,
}

impl Role {
    /// The wire name (rtcd's lobby knows the moderator and guest roles by the same names:
    /// the contract's rules).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Moderator => rtcd_proto::rules::MODERATOR_ROLE,
            Role::Member => "member",
            Role::Guest => rtcd_proto::rules::GUEST_ROLE,
        }
    }
}

/// What a session may do; everything false unless granted (default deny). Unknown keys are
/// refused (the room service API's bodies carry it: `{"admin": true}` is a 400, never
/// silently dropped).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    /// Microphone.
    pub publish_audio: bool,
    /// Camera.
    pub publish_video: bool,
    /// Screen share.
    pub publish_screen: bool,
    /// Receiving others' media.
    pub subscribe: bool,
    /// Starting and stopping the room's recording (with the moderator role). Absent from the
    /// JSON when false: the four media permissions stay the shape clients know.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub record: bool,
}

impl Permissions {
    /// Exactly the listed capabilities.
    pub fn from_capabilities(caps: &[Capability]) -> Self {
        let mut p = Self::default();
        for cap in caps {
            p.set(*cap, true);
        }
        p
    }

    /// Whether `cap` is granted.
    pub fn allows(&self, cap: Capability) -> bool {
        match cap {
            Capability::PublishAudio => self.publish_audio,
            Capability::PublishVideo => self.publish_video,
            Capability::PublishScreen => self.publish_screen,
            Capability::Subscribe => self.subscribe,
            Capability::Record => self.record,
        }
    }

    /// Grants or withdraws `cap` (token overrides).
    pub fn set(&mut self, cap: Capability, on: bool) {
        match cap {
            Capability::PublishAudio => self.publish_audio = on,
            Capability::PublishVideo => self.publish_video = on,
            Capability::PublishScreen => self.publish_screen = on,
            Capability::Subscribe => self.subscribe = on,
            Capability::Record => self.record = on,
        }
    }
}

/// What a client says a track is; the SDP alone cannot tell a camera from a screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackSource {
    /// Audio from a microphone.
    Microphone,
    /// Video from a camera.
    Camera,
    /// Video of a screen or window.
    Screen,
    /// Audio captured with a screen share.
    ScreenAudio,
}

impl TrackSource {
    /// The wire name (`camera`, `screen_audio`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            TrackSource::Microphone => "microphone",
            TrackSource::Camera => "camera",
            TrackSource::Screen => "screen",
            TrackSource::ScreenAudio => "screen_audio",
        }
    }

    /// The kind rtcd knows this source as (the contract's `TrackKind`).
    pub fn wire_kind(self) -> rtcd_proto::v1::TrackKind {
        use rtcd_proto::v1::TrackKind;
        match self {
            TrackSource::Microphone => TrackKind::Audio,
            TrackSource::Camera => TrackKind::Video,
            TrackSource::Screen => TrackKind::Screen,
            TrackSource::ScreenAudio => TrackKind::ScreenAudio,
        }
    }

    /// The capability needed to publish this source: the contract's rule
    /// (`rtcd_proto::rules::publish_right`), the one rtcd enforces too.
    pub fn capability(self) -> Capability {
        use rtcd_proto::rules::{PublishRight, publish_right};
        match publish_right(self.wire_kind()) {
            Some(PublishRight::Audio) => Capability::PublishAudio,
            Some(PublishRight::Video) => Capability::PublishVideo,
            // Every source has a kind; `None` is only the wire's UNSPECIFIED.
            Some(PublishRight::Screen) | None => Capability::PublishScreen,
        }
    }

    fn kind(self) -> MediaKind {
        if rtcd_proto::rules::is_audio(self.wire_kind()) {
            MediaKind::Audio
        } else {
            MediaKind::Video
        }
    }
}

/// The media type of an `m=` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// `m=audio`.
    Audio,
    /// `m=video`.
    Video,
    /// `m=application` (data channels).
    Application,
}

/// The direction attribute of a media section, from the SDP author's point of view, read as
/// rtcd reads it (the contract's rule).
pub use rtcd_proto::rules::Direction;

/// One `m=` section of an SDP, reduced to what the policy needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSection {
    /// audio / video / application.
    pub kind: MediaKind,
    /// `a=mid`, if present.
    pub mid: Option<String>,
    /// Effective direction (session-level default applied).
    pub direction: Direction,
    /// Port 0: the section is rejected / stopped and carries nothing.
    pub disabled: bool,
    /// `a=content:slides` (RFC 4796): a presentation, i.e. a screen share.
    pub slides: bool,
}

impl MediaKind {
    /// The SDP media type (`audio`, `video`, `application`).
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
            MediaKind::Application => "application",
        }
    }
}

/// Why an SDP was refused by the policy layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The text is not a session description this proxy can read.
    #[error("malformed SDP: {0}")]
    MalformedSdp(String),
    /// A declared track source does not match the SDP (unknown mid, or wrong media kind).
    #[error("track declaration: {0}")]
    BadTrack(String),
    /// The session lacks the capability an action needs.
    #[error("not permitted: {action} needs {}", capability.as_str())]
    Forbidden {
        /// What was attempted, e.g. `send video (mid 1) as screen`.
        action: String,
        /// The missing capability.
        capability: Capability,
    },
}

/// Most media sections an SDP may carry; a browser call has a handful.
pub const MAX_MEDIA_SECTIONS: usize = 64;

/// Lists the media sections of an SDP. Pure; rejects text that is not an SDP.
pub fn media_sections(sdp: &str) -> Result<Vec<MediaSection>, PolicyError> {
    let malformed = |m: &str| PolicyError::MalformedSdp(m.to_owned());
    let mut lines = sdp.lines().map(|l| l.trim_end_matches('\r'));
    if lines.next() != Some("v=0") {
        return Err(malformed("must start with v=0"));
    }
    let mut session_direction = Direction::SendRecv;
    let mut sections: Vec<MediaSection> = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(malformed("a line is not of the form x=value"));
        };
        if key.len() != 1 || !key.as_bytes()[0].is_ascii_lowercase() {
            return Err(malformed("a line does not start with a one-letter type"));
        }
        match key {
            "m" => {
                if sections.len() == MAX_MEDIA_SECTIONS {
                    return Err(malformed("too many media sections"));
                }
                let mut fields = value.split_ascii_whitespace();
                let kind = match fields.next() {
                    Some("audio") => MediaKind::Audio,
                    Some("video") => MediaKind::Video,
                    Some("application") => MediaKind::Application,
                    _ => return Err(malformed("m= line with an unsupported media type")),
                };
                let port = fields
                    .next()
                    .and_then(|p| p.split('/').next())
                    .and_then(|p| p.parse::<u16>().ok())
                    .ok_or_else(|| malformed("m= line without a port"))?;
                if fields.next().is_none() {
                    return Err(malformed("m= line without a protocol"));
                }
                sections.push(MediaSection {
                    kind,
                    mid: None,
                    direction: session_direction,
                    disabled: port == 0,
                    slides: false,
                });
            }
            "a" => {
                let direction = Direction::parse(value);
                match (sections.last_mut(), direction) {
                    (None, Some(d)) => session_direction = d,
                    (Some(s), Some(d)) => s.direction = d,
                    (Some(s), None) => {
                        if let Some(mid) = value.strip_prefix("mid:") {
                            s.mid = Some(mid.trim().to_owned());
                        } else if value.strip_prefix("content:").is_some_and(|c| {
                            c.split(',')
                                .any(|t| t.trim().eq_ignore_ascii_case("slides"))
                        }) {
                            s.slides = true;
                        }
                    }
                    (None, None) => {}
                }
            }
            _ => {}
        }
    }
    Ok(sections)
}

/// Decides whether a client holding `perms` may send this SDP (offer or answer), given the
/// track sources it declared by mid. Pure.
pub fn authorize_sdp(
    sdp: &str,
    declared: &BTreeMap<String, TrackSource>,
    perms: &Permissions,
) -> Result<Vec<MediaSection>, PolicyError> {
    let sections = media_sections(sdp)?;
    for (mid, source) in declared {
        let section = sections
            .iter()
            .find(|s| s.mid.as_deref() == Some(mid.as_str()))
            .ok_or_else(|| PolicyError::BadTrack(format!("no media section with mid {mid}")))?;
        let matches = match section.kind {
            MediaKind::Audio => source.kind() == MediaKind::Audio,
            MediaKind::Video => source.kind() == MediaKind::Video,
            MediaKind::Application => false,
        };
        if !matches {
            return Err(PolicyError::BadTrack(format!(
                "mid {mid} is a{} {} section, `{}` is a{} {} source",
                if section.kind == MediaKind::Audio {
                    "n"
                } else {
                    ""
                },
                section.kind.as_str(),
                source.as_str(),
                if source.kind() == MediaKind::Audio {
                    "n"
                } else {
                    ""
                },
                source.kind().as_str()
            )));
        }
    }
    for (index, s) in sections.iter().enumerate() {
        if s.disabled || s.kind == MediaKind::Application {
            continue;
        }
        let label = s.mid.clone().unwrap_or_else(|| format!("#{index}"));
        if s.direction.sends() {
            let source = match (s.mid.as_ref().and_then(|m| declared.get(m)), s.kind) {
                (Some(source), _) => *source,
                (None, MediaKind::Video) if s.slides => TrackSource::Screen,
                (None, MediaKind::Video) => TrackSource::Camera,
                (None, _) => TrackSource::Microphone,
            };
            let source = if s.slides && s.kind == MediaKind::Video {
                TrackSource::Screen
            } else {
                source
            };
            let capability = source.capability();
            if !perms.allows(capability) {
                return Err(PolicyError::Forbidden {
                    action: format!("send {} (mid {label})", source.as_str()),
                    capability,
                });
            }
        } else if s.direction == Direction::RecvOnly && !perms.subscribe {
            return Err(PolicyError::Forbidden {
                action: format!("receive media (mid {label})"),
                capability: Capability::Subscribe,
            });
        }
    }
    Ok(sections)
}

/// Permissions the unit tests of the policy and the session share.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::{Capability, Permissions};

    /// A member's: audio, camera, subscribe (no screen share).
    pub(crate) fn member() -> Permissions {
        Permissions::from_capabilities(&[
            Capability::PublishAudio,
            Capability::PublishVideo,
            Capability::Subscribe,
        ])
    }

    /// A listener's: subscribe only.
    pub(crate) fn listener() -> Permissions {
        Permissions::from_capabilities(&[Capability::Subscribe])
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::member;
    use super::*;

    fn sdp(sections: &[(&str, &str, &str, &[&str])]) -> String {
        let mut s = String::from(
            "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2\r\n",
        );
        for (kind, mid, dir, extra) in sections {
            let port = if *dir == "disabled" { 0 } else { 9 };
            s.push_str(&format!(
                "m={kind} {port} UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\n"
            ));
            if *dir != "disabled" && !dir.is_empty() {
                s.push_str(&format!("a={dir}\r\n"));
            }
            for e in *extra {
                s.push_str(&format!("a={e}\r\n"));
            }
        }
        s
    }

    fn tracks(pairs: &[(&str, TrackSource)]) -> BTreeMap<String, TrackSource> {
        pairs.iter().map(|(m, s)| (m.to_string(), *s)).collect()
    }

    #[test]
    fn parses_sections_directions_and_defaults() {
        let text = sdp(&[
            ("audio", "0", "sendrecv", &[]),
            ("video", "1", "", &["content:slides"]),
            ("application", "2", "", &[]),
            ("video", "3", "disabled", &[]),
        ]);
        let s = media_sections(&text).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].kind, MediaKind::Audio);
        assert_eq!(
            s[1].direction,
            Direction::SendRecv,
            "no attribute = sendrecv"
        );
        assert!(s[1].slides);
        assert_eq!(s[2].kind, MediaKind::Application);
        assert!(s[3].disabled);
        assert_eq!(s[3].mid.as_deref(), Some("3"));
    }

    #[test]
    fn session_level_direction_is_the_default() {
        let text = "v=0\r\ns=-\r\na=recvonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n";
        assert_eq!(
            media_sections(text).unwrap()[0].direction,
            Direction::RecvOnly
        );
    }

    #[test]
    fn malformed_sdp_is_an_error_not_a_panic() {
        for bad in [
            "",
            "hello",
            "v=1\r\n",
            "v=0\r\nm=\r\n",
            "v=0\r\nm=video\r\n",
            "v=0\r\nm=video x RTP\r\n",
            "v=0\r\nm=video 9\r\n",
            "v=0\r\nm=text 9 RTP/AVP 0\r\n",
            "v=0\r\nnot a line\r\n",
            "v=0\r\nXY=1\r\n",
            "v=0\r\n\u{1F600}=1\r\n",
        ] {
            assert!(
                matches!(media_sections(bad), Err(PolicyError::MalformedSdp(_))),
                "{bad:?}"
            );
        }
        let many = format!(
            "v=0\r\n{}",
            "m=audio 9 RTP/AVP 0\r\n".repeat(MAX_MEDIA_SECTIONS + 1)
        );
        assert!(media_sections(&many).is_err());
    }

    #[test]
    fn member_may_send_camera_and_microphone() {
        let text = sdp(&[
            ("audio", "0", "sendrecv", &[]),
            ("video", "1", "sendonly", &[]),
        ]);
        authorize_sdp(&text, &tracks(&[]), &member()).unwrap();
        authorize_sdp(
            &text,
            &tracks(&[("0", TrackSource::Microphone), ("1", TrackSource::Camera)]),
            &member(),
        )
        .unwrap();
    }

    #[test]
    fn screen_without_the_right_is_refused_declared_or_by_content_attribute() {
        let declared = sdp(&[("video", "1", "sendonly", &[])]);
        let e = authorize_sdp(&declared, &tracks(&[("1", TrackSource::Screen)]), &member())
            .unwrap_err();
        assert!(
            matches!(
                e,
                PolicyError::Forbidden {
                    capability: Capability::PublishScreen,
                    ..
                }
            ),
            "{e}"
        );
        let slides = sdp(&[("video", "1", "sendrecv", &["content:slides"])]);
        let e = authorize_sdp(&slides, &tracks(&[]), &member()).unwrap_err();
        assert!(
            matches!(
                e,
                PolicyError::Forbidden {
                    capability: Capability::PublishScreen,
                    ..
                }
            ),
            "{e}"
        );
        // Declaring slides as a camera does not launder it.
        let e =
            authorize_sdp(&slides, &tracks(&[("1", TrackSource::Camera)]), &member()).unwrap_err();
        assert!(matches!(e, PolicyError::Forbidden { .. }));
        let mut presenter = member();
        presenter.publish_screen = true;
        authorize_sdp(&slides, &tracks(&[]), &presenter).unwrap();
    }

    #[test]
    fn guest_may_only_receive() {
        let guest = Permissions::from_capabilities(&[Capability::Subscribe]);
        let recv = sdp(&[
            ("audio", "0", "recvonly", &[]),
            ("video", "1", "recvonly", &[]),
        ]);
        authorize_sdp(&recv, &tracks(&[]), &guest).unwrap();
        let send = sdp(&[("audio", "0", "sendrecv", &[])]);
        let e = authorize_sdp(&send, &tracks(&[]), &guest).unwrap_err();
        assert!(matches!(
            e,
            PolicyError::Forbidden {
                capability: Capability::PublishAudio,
                ..
            }
        ));
        // Disabled and inactive sections carry nothing and need nothing.
        let idle = sdp(&[
            ("video", "0", "disabled", &[]),
            ("audio", "1", "inactive", &[]),
        ]);
        authorize_sdp(&idle, &tracks(&[]), &Permissions::default()).unwrap();
    }

    #[test]
    fn receiving_needs_subscribe() {
        let recv = sdp(&[("video", "0", "recvonly", &[])]);
        let e = authorize_sdp(&recv, &tracks(&[]), &Permissions::default()).unwrap_err();
        assert!(matches!(
            e,
            PolicyError::Forbidden {
                capability: Capability::Subscribe,
                ..
            }
        ));
    }

    #[test]
    fn declarations_must_match_the_sdp() {
        let text = sdp(&[("audio", "0", "sendrecv", &[])]);
        let e = authorize_sdp(&text, &tracks(&[("9", TrackSource::Microphone)]), &member())
            .unwrap_err();
        assert!(matches!(e, PolicyError::BadTrack(_)));
        let e =
            authorize_sdp(&text, &tracks(&[("0", TrackSource::Camera)]), &member()).unwrap_err();
        assert!(matches!(e, PolicyError::BadTrack(_)));
    }

    /// Issue 16 #7: refusals name sources and capabilities as the protocol spells them.
    #[test]
    fn refusals_use_protocol_names() {
        let text = sdp(&[("video", "1", "sendonly", &[])]);
        let e = authorize_sdp(&text, &tracks(&[]), &Permissions::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "not permitted: send camera (mid 1) needs publish_video"
        );
        let e = authorize_sdp(&text, &tracks(&[("1", TrackSource::Microphone)]), &member())
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "track declaration: mid 1 is a video section, `microphone` is an audio source"
        );
        let recv = sdp(&[("audio", "0", "recvonly", &[])]);
        let e = authorize_sdp(&recv, &tracks(&[]), &Permissions::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "not permitted: receive media (mid 0) needs subscribe"
        );
        assert_eq!(TrackSource::ScreenAudio.as_str(), "screen_audio");
    }

    #[test]
    fn screen_audio_needs_the_screen_right() {
        let text = sdp(&[("audio", "0", "sendonly", &[])]);
        let e = authorize_sdp(
            &text,
            &tracks(&[("0", TrackSource::ScreenAudio)]),
            &member(),
        )
        .unwrap_err();
        assert!(matches!(
            e,
            PolicyError::Forbidden {
                capability: Capability::PublishScreen,
                ..
            }
        ));
    }

    #[test]
    fn record_is_a_capability_shown_only_when_granted() {
        let mut p = Permissions::from_capabilities(&[Capability::Subscribe]);
        assert!(!p.allows(Capability::Record));
        // The four media permissions stay the shape clients know.
        assert_eq!(
            serde_json::to_value(p).unwrap(),
            serde_json::json!({"publish_audio": false, "publish_video": false, "publish_screen": false, "subscribe": true})
        );
        p.set(Capability::Record, true);
        assert!(p.record && p.allows(Capability::Record));
        assert_eq!(serde_json::to_value(p).unwrap()["record"], true);
        assert_eq!(Capability::Record.as_str(), "record");
        let c: Capability = serde_json::from_value("record".into()).unwrap();
        assert_eq!(c, Capability::Record);
        // Absent means false (bodies and tokens written before it existed).
        let q: Permissions = serde_json::from_value(serde_json::json!({"publish_audio": true, "publish_video": true, "publish_screen": true, "subscribe": true})).unwrap();
        assert!(!q.record);
    }
}
