//! Which of the client's sending sections an arriving RTP stream belongs to.
//!
//! `rtc` decides this inside its pipeline, from the first packet of each SSRC, and tells it as
//! `OnTrack`; since the engine decrypts media itself (`dtls`), it decides it here, by the same
//! rules in the same order (`rtc` 0.21.1's `ensure_remote_stream_bound`):
//!
//! 1. an RTX packet (a payload type that is some codec's RTX) on an SSRC the offer declared as a
//!    retransmission SSRC (`a=ssrc-group:FID`) stands for the stream it repairs;
//! 2. an SSRC the offer declared (`a=ssrc`) belongs to its section;
//! 3. with a single transceiver and no rids, any SSRC belongs to its one section;
//! 4. otherwise the MID header extension names the section and the RID extension the layer
//!    (simulcast, RFC 8853); retransmissions of a layer (repaired-rid) are left to the repair
//!    interceptor (`rtx`), which learns their SSRC from the layer's own packets.
//!
//! One deliberate extension of `rtc`'s rules: a packet naming by MID a section with no rids and no
//! declared SSRC binds as that section's one stream (`rtc` dropped it; browsers always declare
//! the SSRC, but nothing in RFC 8843 obliges a client to).
//!
//! The table is rebuilt from `rtc`'s negotiated receivers after every offer; it is plain data, so
//! its rules are tested here without a connection.

use std::collections::HashMap;

use super::peer::{MID_URI, REPAIRED_RID_URI, RID_URI};

/// One simulcast layer or the one stream of a section, as the offer declared it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Coding {
    /// Empty for a section without rids.
    pub rid: String,
    pub ssrc: Option<u32>,
    pub rtx_ssrc: Option<u32>,
}

/// One section the client sends on.
#[derive(Debug, Clone, Default)]
pub(super) struct Section<R> {
    pub mid: String,
    /// What the caller knows the section by (`rtc`'s receiver).
    pub receiver: R,
    pub codings: Vec<Coding>,
    /// Negotiated payload types of media codecs.
    pub payload_types: Vec<u8>,
    /// RTX payload type → the payload type it repairs.
    pub rtx: HashMap<u8, u8>,
}

/// Where a packet's stream belongs; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Binding {
    /// Index of its section in the table.
    pub section: usize,
    /// The stream's own SSRC (for an RTX packet, the stream it repairs).
    pub ssrc: u32,
    /// The stream's media payload type.
    pub payload_type: u8,
    /// Its layer, for a section with rids.
    pub rid: Option<String>,
    /// Its declared retransmission SSRC, if any.
    pub rtx_ssrc: Option<u32>,
}

/// Header extension ids naming a packet's section and layer.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct SdesIds {
    pub mid: Option<u8>,
    pub rid: Option<u8>,
    pub rrid: Option<u8>,
}

impl SdesIds {
    /// The ids from negotiated header extensions (uri, id).
    pub(super) fn from_extensions<'a>(extensions: impl IntoIterator<Item = (&'a str, u8)>) -> Self {
        let mut ids = Self::default();
        for (uri, id) in extensions {
            match uri {
                MID_URI => ids.mid = Some(id),
                RID_URI => ids.rid = Some(id),
                REPAIRED_RID_URI => ids.rrid = Some(id),
                _ => {}
            }
        }
        ids
    }
}

/// The client's sending sections; see the module docs.
#[derive(Debug, Clone, Default)]
pub(super) struct Table<R> {
    pub sections: Vec<Section<R>>,
    /// All transceivers of the connection, ours included (`rtc`'s rule 3 counts them all).
    pub transceivers: usize,
    pub ids: SdesIds,
}

impl<R> Table<R> {
    /// Where the stream of a packet with this header belongs, if anywhere.
    pub(super) fn bind(&self, header: &rtc::rtp::header::Header) -> Option<Binding> {
        let (ssrc, payload_type, rtx) = self
            .rtx_primary(header.ssrc, header.payload_type)
            .map(|(s, p)| (s, p, true))
            .unwrap_or((header.ssrc, header.payload_type, false));
        if let Some(b) = self.declared(ssrc, payload_type) {
            return Some(b);
        }
        let is_rtx_payload = self
            .sections
            .iter()
            .any(|s| s.rtx.contains_key(&header.payload_type));
        if rtx || is_rtx_payload {
            // An undeclared retransmission stream: the repair interceptor's (rule 4).
            return None;
        }
        if self.transceivers == 1
            && let Some(section) = self.sections.first()
            && section.codings.iter().all(|c| c.rid.is_empty())
            && section.payload_types.contains(&payload_type)
        {
            return Some(Binding {
                section: 0,
                ssrc,
                payload_type,
                rid: None,
                rtx_ssrc: None,
            });
        }
        self.by_mid(header, payload_type)
    }

    /// Rule 1: (primary SSRC, its payload type) of a declared retransmission SSRC.
    fn rtx_primary(&self, ssrc: u32, payload_type: u8) -> Option<(u32, u8)> {
        self.sections.iter().find_map(|s| {
            let apt = *s.rtx.get(&payload_type)?;
            let coding = s.codings.iter().find(|c| c.rtx_ssrc == Some(ssrc))?;
            Some((coding.ssrc?, apt))
        })
    }

    /// Rule 2.
    fn declared(&self, ssrc: u32, payload_type: u8) -> Option<Binding> {
        self.sections.iter().enumerate().find_map(|(i, s)| {
            let coding = s.codings.iter().find(|c| c.ssrc == Some(ssrc))?;
            if !s.payload_types.contains(&payload_type) {
                return None;
            }
            Some(Binding {
                section: i,
                ssrc,
                payload_type,
                rid: (!coding.rid.is_empty()).then(|| coding.rid.clone()),
                rtx_ssrc: coding.rtx_ssrc,
            })
        })
    }

    /// Rule 4.
    fn by_mid(&self, header: &rtc::rtp::header::Header, payload_type: u8) -> Option<Binding> {
        let ext = |id: Option<u8>| {
            id.and_then(|id| header.get_extension(id))
                .filter(|v| !v.is_empty())
        };
        let mid = ext(self.ids.mid)?;
        let (index, section) = self
            .sections
            .iter()
            .enumerate()
            .find(|(_, s)| s.mid.as_bytes() == mid.as_ref())?;
        if !section.payload_types.contains(&payload_type) {
            return None;
        }
        let has_rids = section.codings.iter().any(|c| !c.rid.is_empty());
        let rid = match ext(self.ids.rid) {
            Some(rid) => {
                let rid = std::str::from_utf8(&rid).ok()?.to_owned();
                // Only a layer the offer named.
                section.codings.iter().find(|c| c.rid == rid)?;
                Some(rid)
            }
            None if has_rids => return None,
            None => None,
        };
        Some(Binding {
            section: index,
            ssrc: header.ssrc,
            payload_type,
            rid,
            rtx_ssrc: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rtc::rtp::header::Header;

    const MID: u8 = 4;
    const RID: u8 = 10;
    const RRID: u8 = 11;

    fn section(mid: &str, codings: Vec<Coding>) -> Section<u32> {
        Section {
            mid: mid.into(),
            receiver: 0,
            codings,
            payload_types: vec![96, 111],
            rtx: HashMap::from([(97, 96)]),
        }
    }

    fn table(sections: Vec<Section<u32>>, transceivers: usize) -> Table<u32> {
        Table {
            sections,
            transceivers,
            ids: SdesIds {
                mid: Some(MID),
                rid: Some(RID),
                rrid: Some(RRID),
            },
        }
    }

    fn header(ssrc: u32, payload_type: u8, extensions: &[(u8, &str)]) -> Header {
        let mut h = Header {
            version: 2,
            ssrc,
            payload_type,
            ..Default::default()
        };
        for (id, value) in extensions {
            h.set_extension(*id, Bytes::from(value.to_string()))
                .unwrap();
        }
        h
    }

    fn declared(ssrc: u32, rtx: Option<u32>) -> Coding {
        Coding {
            rid: String::new(),
            ssrc: Some(ssrc),
            rtx_ssrc: rtx,
        }
    }

    fn rid(rid: &str) -> Coding {
        Coding {
            rid: rid.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_declared_ssrc_and_its_retransmissions_belong_to_their_section() {
        let t = table(
            vec![
                section("0", vec![declared(1000, None)]),
                section("1", vec![declared(2000, Some(2001))]),
            ],
            4,
        );
        let b = t.bind(&header(2000, 96, &[])).unwrap();
        assert_eq!((b.section, b.ssrc, b.rtx_ssrc), (1, 2000, Some(2001)));
        // Its RTX, even first: the stream it repairs, with the repaired payload type.
        let b = t.bind(&header(2001, 97, &[])).unwrap();
        assert_eq!((b.section, b.ssrc, b.payload_type), (1, 2000, 96));
        assert_eq!(t.bind(&header(1000, 111, &[])).unwrap().section, 0);
        // A payload type the section did not negotiate, an unknown SSRC without MID: nowhere.
        assert_eq!(t.bind(&header(1000, 100, &[])), None);
        assert_eq!(t.bind(&header(3000, 96, &[])), None);
    }

    #[test]
    fn with_one_transceiver_any_ssrc_is_its_stream() {
        let t = table(vec![section("0", vec![])], 1);
        assert_eq!(t.bind(&header(77, 96, &[])).unwrap().section, 0);
        // Not with a transceiver of ours beside it (rtc's rule): then by MID only.
        let t = table(vec![section("0", vec![])], 2);
        assert_eq!(t.bind(&header(77, 96, &[])), None);
        assert_eq!(t.bind(&header(77, 96, &[(MID, "0")])).unwrap().section, 0);
    }

    #[test]
    fn simulcast_layers_bind_by_mid_and_rid_and_their_rtx_is_left_to_the_repair() {
        let t = table(
            vec![
                section("0", vec![declared(1000, None)]),
                section("1", vec![rid("q"), rid("h"), rid("f")]),
            ],
            3,
        );
        let b = t.bind(&header(5, 96, &[(MID, "1"), (RID, "h")])).unwrap();
        assert_eq!((b.section, b.ssrc, b.rid.as_deref()), (1, 5, Some("h")));
        // A rid the offer did not name, or none in a section with rids: nowhere.
        assert_eq!(t.bind(&header(6, 96, &[(MID, "1"), (RID, "x")])), None);
        assert_eq!(t.bind(&header(6, 96, &[(MID, "1")])), None);
        // A layer's retransmission: the repair interceptor's.
        assert_eq!(t.bind(&header(7, 97, &[(MID, "1"), (RRID, "h")])), None);
        // An unknown mid.
        assert_eq!(t.bind(&header(8, 96, &[(MID, "9"), (RID, "h")])), None);
    }
}
