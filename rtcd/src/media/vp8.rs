//! The VP8 payload descriptor (RFC 7741 §4.2), read once per received packet and rewritten
//! per subscriber only when a down-track changed layer.
//!
//! Why it is rewritten at all: the layers of a simulcast track are three independent VP8
//! encoders, each numbering its pictures (picture ID), its base-layer frames (TL0PICIDX) and
//! its key frames (KEYIDX) from its own random start. A subscriber's decoder sees one stream;
//! when the SFU switches it from one layer to another, those numbers would jump, and a
//! receiver that orders frames by picture ID (libwebrtc's reference finder does) may take the
//! new layer's frames for old ones and drop them. The down-track therefore keeps the numbers
//! the subscriber sees continuous by adding per-layer offsets, and this module knows where the
//! numbers sit in the payload and how to write them back.
//!
//! Only the numbers change, never the descriptor's length: a picture ID keeps the width (7 or
//! 15 bits) its source wrote, so a rewrite is a copy of the payload with at most four bytes
//! patched. Browsers write 15-bit picture IDs on every layer; a 7-bit one receives the low 7
//! bits of the subscriber's counter, which stays continuous modulo 128.

use bytes::{Bytes, BytesMut};

/// Mask of a 15-bit picture ID.
pub const PICTURE_ID_MASK_15: u16 = 0x7fff;
/// Mask of a 7-bit picture ID.
pub const PICTURE_ID_MASK_7: u16 = 0x7f;
/// Mask of the 5-bit KEYIDX.
pub const KEYIDX_MASK: u8 = 0x1f;

/// Where the picture ID starts: after the first octet and the X (extension) octet.
const PICTURE_ID_AT: usize = 2;

/// A picture ID and the width its source wrote it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PictureId {
    /// The value (at most 15 bits, or 7 when not `wide`).
    pub value: u16,
    /// 15 bits (M = 1, two octets) or 7 bits (one octet).
    pub wide: bool,
}

impl PictureId {
    /// The mask of this width (`0x7fff` or `0x7f`).
    pub fn mask(self) -> u16 {
        if self.wide {
            PICTURE_ID_MASK_15
        } else {
            PICTURE_ID_MASK_7
        }
    }

    /// Octets it takes in the descriptor.
    fn len(self) -> usize {
        if self.wide { 2 } else { 1 }
    }
}

/// The renumberable fields of one packet's VP8 payload descriptor, and so (from which are
/// present) where each sits. Parsed by [`Vp8Descriptor::parse`] when the engine receives the
/// packet, so a down-track that rewrites never parses again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Descriptor {
    /// The picture ID, if the descriptor has one (X and I set).
    pub picture_id: Option<PictureId>,
    /// TL0PICIDX, if present (L set): the index of the newest base temporal layer frame.
    pub tl0picidx: Option<u8>,
    /// KEYIDX, if present (K set): the index of the newest key frame.
    pub keyidx: Option<u8>,
}

impl Vp8Descriptor {
    /// Reads the descriptor at the start of a VP8 RTP payload; `None` if the payload is too
    /// short for the fields it declares (such a packet is forwarded untouched, never patched).
    pub fn parse(p: &[u8]) -> Option<Self> {
        let b0 = *p.first()?;
        let mut out = Self {
            picture_id: None,
            tl0picidx: None,
            keyidx: None,
        };
        if b0 & 0x80 == 0 {
            return Some(out);
        }
        let x = *p.get(1)?;
        let mut i = PICTURE_ID_AT;
        if x & 0x80 != 0 {
            let hi = *p.get(i)?;
            let pic = if hi & 0x80 != 0 {
                let lo = *p.get(i + 1)?;
                PictureId {
                    value: u16::from_be_bytes([hi & 0x7f, lo]),
                    wide: true,
                }
            } else {
                PictureId {
                    value: u16::from(hi),
                    wide: false,
                }
            };
            i += pic.len();
            out.picture_id = Some(pic);
        }
        if x & 0x40 != 0 {
            out.tl0picidx = Some(*p.get(i)?);
            i += 1;
        }
        if x & 0x30 != 0 {
            // T or K: TID(2) Y(1) KEYIDX(5); KEYIDX means something only with K.
            let tk = *p.get(i)?;
            if x & 0x10 != 0 {
                out.keyidx = Some(tk & KEYIDX_MASK);
            }
        }
        Some(out)
    }

    /// Where TL0PICIDX sits (when present).
    fn tl0picidx_at(&self) -> usize {
        PICTURE_ID_AT + self.picture_id.map_or(0, PictureId::len)
    }

    /// Where the TID/Y/KEYIDX octet sits (when present).
    fn tk_at(&self) -> usize {
        self.tl0picidx_at() + usize::from(self.tl0picidx.is_some())
    }

    /// Whether writing `values` would change any byte: a rewrite to the same numbers is not
    /// worth a copy.
    pub fn changes(&self, values: Vp8Rewrite) -> bool {
        self.picture_id
            .is_some_and(|p| p.value != values.picture_id & p.mask())
            || self.tl0picidx.is_some_and(|t| t != values.tl0picidx)
            || self
                .keyidx
                .is_some_and(|k| k != values.keyidx & KEYIDX_MASK)
    }

    /// `payload` (the packet this descriptor was parsed from) with the fields present written
    /// to `values`. The original `Bytes` (no copy) when nothing changes or when the payload does
    /// not hold the fields (a descriptor that does not belong to it: never patched blindly).
    pub fn rewrite(&self, payload: &Bytes, values: Vp8Rewrite) -> Bytes {
        if !self.changes(values)
            || payload.len() < self.tk_at() + usize::from(self.keyidx.is_some())
        {
            return payload.clone();
        }
        let mut out = BytesMut::from(&payload[..]);
        if let Some(p) = self.picture_id {
            let v = values.picture_id & p.mask();
            if p.wide {
                let [hi, lo] = v.to_be_bytes();
                out[PICTURE_ID_AT] = 0x80 | hi;
                out[PICTURE_ID_AT + 1] = lo;
            } else {
                out[PICTURE_ID_AT] = v as u8;
            }
        }
        if self.tl0picidx.is_some() {
            out[self.tl0picidx_at()] = values.tl0picidx;
        }
        if self.keyidx.is_some() {
            let at = self.tk_at();
            out[at] = (out[at] & !KEYIDX_MASK) | (values.keyidx & KEYIDX_MASK);
        }
        out.freeze()
    }
}

/// The numbers one outgoing copy carries in its VP8 descriptor, decided by its down-track;
/// fields the packet's descriptor lacks are ignored. Inline and `Copy`: it rides in the
/// outgoing header and in the down-track's history (so a retransmission carries the very
/// numbers the first copy did).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Vp8Rewrite {
    /// The picture ID (masked to the packet's width when written).
    pub picture_id: u16,
    /// TL0PICIDX.
    pub tl0picidx: u8,
    /// KEYIDX (masked to 5 bits when written).
    pub keyidx: u8,
}

/// Keeps the VP8 numbers a subscriber sees continuous while its down-track switches between
/// the layers of a simulcast track: per layer (per "generation" of the down-track) an offset
/// for each of picture ID, TL0PICIDX and KEYIDX, chosen at the layer's first forwarded packet
/// so that it continues right after the newest number the subscriber has seen (the first
/// packet after a switch is a key frame: a new picture, a new base-layer frame and a new key
/// frame, so each number is the last + 1).
///
/// The first layer passes through unchanged (offsets 0), so a track that never switches layer
/// never has a payload copied.
#[derive(Debug, Clone, Copy, Default)]
pub struct Vp8Continuity {
    /// Newest picture ID sent (in the width it was written).
    last_picture_id: Option<u16>,
    last_tl0picidx: Option<u8>,
    last_keyidx: Option<u8>,
    /// Offsets in force for the current layer; `None`: not chosen yet (the layer has not yet
    /// sent a packet with that field), chosen by the next one that has it.
    picture_id_offset: Option<u16>,
    tl0picidx_offset: Option<u8>,
    keyidx_offset: Option<u8>,
}

impl Vp8Continuity {
    /// A new layer of the same stream starts: its numbers continue after the newest sent.
    pub fn next_layer(&mut self) {
        self.picture_id_offset = None;
        self.tl0picidx_offset = None;
        self.keyidx_offset = None;
    }

    /// A new, unrelated stream starts (a switch of source that restarts the subscriber's
    /// decoder anyway): its numbers pass unchanged, as they always did.
    pub fn pass_through(&mut self) {
        self.picture_id_offset = Some(0);
        self.tl0picidx_offset = Some(0);
        self.keyidx_offset = Some(0);
    }

    /// The numbers one forwarded packet of the current layer carries, recording the newest;
    /// `None` when they are the source's own (send the payload as it is).
    pub fn map(&mut self, d: &Vp8Descriptor) -> Option<Vp8Rewrite> {
        let mut out = Vp8Rewrite::default();
        if let Some(p) = d.picture_id {
            let mask = p.mask();
            let last = self.last_picture_id;
            let offset = *self
                .picture_id_offset
                .get_or_insert_with(|| last.map_or(0, |l| l.wrapping_add(1).wrapping_sub(p.value)));
            let v = p.value.wrapping_add(offset) & mask;
            if last.is_none_or(|l| newer_u16(v, l, mask)) {
                self.last_picture_id = Some(v);
            }
            out.picture_id = v;
        }
        if let Some(t) = d.tl0picidx {
            let last = self.last_tl0picidx;
            let offset = *self
                .tl0picidx_offset
                .get_or_insert_with(|| last.map_or(0, |l| l.wrapping_add(1).wrapping_sub(t)));
            let v = t.wrapping_add(offset);
            if last.is_none_or(|l| (v.wrapping_sub(l) as i8) > 0) {
                self.last_tl0picidx = Some(v);
            }
            out.tl0picidx = v;
        }
        if let Some(k) = d.keyidx {
            let last = self.last_keyidx;
            let offset = *self
                .keyidx_offset
                .get_or_insert_with(|| last.map_or(0, |l| l.wrapping_add(1).wrapping_sub(k)));
            let v = k.wrapping_add(offset) & KEYIDX_MASK;
            if last.is_none_or(|l| newer_u16(u16::from(v), u16::from(l), u16::from(KEYIDX_MASK))) {
                self.last_keyidx = Some(v);
            }
            out.keyidx = v;
        }
        d.changes(out).then_some(out)
    }
}

/// Whether `a` is after `b` in a counter space of `mask + 1` values (less than half ahead).
fn newer_u16(a: u16, b: u16, mask: u16) -> bool {
    let d = a.wrapping_sub(b) & mask;
    d != 0 && d <= mask / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    /// X, I (15-bit 0x1234), L (TL0 9), T+K (TID 2, Y, KEYIDX 5), then a VP8 key frame tag.
    const FULL: [u8; 8] = [0x90, 0xf0, 0x92, 0x34, 0x09, 0xa5, 0x50, 0x01];

    #[test]
    fn parses_every_field_and_width() {
        let d = Vp8Descriptor::parse(&FULL).unwrap();
        assert_eq!(
            d.picture_id,
            Some(PictureId {
                value: 0x1234,
                wide: true
            })
        );
        assert_eq!(d.tl0picidx, Some(9));
        assert_eq!(d.keyidx, Some(5));
        // 7-bit picture id, no L, T without K: KEYIDX is meaningless and not reported.
        let d = Vp8Descriptor::parse(&[0x90, 0xa0, 0x15, 0x40, 0x50]).unwrap();
        assert_eq!(
            d.picture_id,
            Some(PictureId {
                value: 0x15,
                wide: false
            })
        );
        assert_eq!((d.tl0picidx, d.keyidx), (None, None));
        // No X: nothing to renumber.
        let d = Vp8Descriptor::parse(&[0x10, 0x50]).unwrap();
        assert_eq!((d.picture_id, d.tl0picidx, d.keyidx), (None, None, None));
    }

    #[test]
    fn truncated_descriptors_are_rejected() {
        assert_eq!(Vp8Descriptor::parse(&[]), None);
        for n in 1..6 {
            assert_eq!(Vp8Descriptor::parse(&FULL[..n]), None, "{n} octets");
        }
        // The descriptor alone, without VP8 data, still parses (and can be rewritten).
        assert!(Vp8Descriptor::parse(&FULL[..6]).is_some());
    }

    #[test]
    fn rewrite_patches_only_the_numbers_and_copies_only_when_needed() {
        let payload = Bytes::copy_from_slice(&FULL);
        let d = Vp8Descriptor::parse(&payload).unwrap();
        let same = Vp8Rewrite {
            picture_id: 0x1234,
            tl0picidx: 9,
            keyidx: 5,
        };
        assert!(!d.changes(same));
        assert_eq!(d.rewrite(&payload, same).as_ptr(), payload.as_ptr());

        let new = Vp8Rewrite {
            picture_id: 0x7ffe,
            tl0picidx: 255,
            keyidx: 0x1f,
        };
        let out = d.rewrite(&payload, new);
        assert_ne!(out.as_ptr(), payload.as_ptr());
        assert_eq!(&out[..], &[0x90, 0xf0, 0xff, 0xfe, 0xff, 0xbf, 0x50, 0x01]);
        assert_eq!(
            Vp8Descriptor::parse(&out).unwrap(),
            Vp8Descriptor {
                picture_id: Some(PictureId {
                    value: 0x7ffe,
                    wide: true
                }),
                tl0picidx: Some(255),
                keyidx: Some(0x1f),
            }
        );
        // The original is untouched (other subscribers share it).
        assert_eq!(&payload[..], &FULL);

        // A 7-bit picture id keeps its width: the low 7 bits of the counter.
        let short = Bytes::from_static(&[0x90, 0x80, 0x15, 0x50]);
        let d = Vp8Descriptor::parse(&short).unwrap();
        let out = d.rewrite(
            &short,
            Vp8Rewrite {
                picture_id: 0x0381,
                ..Default::default()
            },
        );
        assert_eq!(&out[..], &[0x90, 0x80, 0x01, 0x50]);
    }

    #[test]
    fn a_descriptor_that_does_not_fit_the_payload_is_not_applied() {
        let d = Vp8Descriptor::parse(&FULL).unwrap();
        let short = Bytes::from_static(&[0x90, 0xf0, 0x92]);
        let out = d.rewrite(&short, Vp8Rewrite::default());
        assert_eq!(&out[..], &short[..]);
    }

    #[test]
    fn random_bytes_never_panic_and_rewrites_keep_the_length() {
        // A small deterministic generator (xorshift): property-style, reproducible.
        let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for _ in 0..20_000 {
            let len = (next() % 12) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let payload = Bytes::from(bytes);
            let Some(d) = Vp8Descriptor::parse(&payload) else {
                continue;
            };
            let r = next();
            let values = Vp8Rewrite {
                picture_id: r as u16,
                tl0picidx: (r >> 16) as u8,
                keyidx: (r >> 24) as u8,
            };
            let out = d.rewrite(&payload, values);
            assert_eq!(out.len(), payload.len());
            // Whatever was patched reads back as what was asked for.
            let back = Vp8Descriptor::parse(&out).unwrap();
            if let Some(p) = back.picture_id {
                assert_eq!(p.value, values.picture_id & p.mask());
            }
            if let Some(t) = back.tl0picidx {
                assert_eq!(t, values.tl0picidx);
            }
            if let Some(k) = back.keyidx {
                assert_eq!(k, values.keyidx & KEYIDX_MASK);
            }
            // And the rest of the bytes are the source's.
            assert_eq!(out[0], payload[0]);
            // A mismatched descriptor applied to other random bytes never panics either.
            let other = Bytes::from(vec![next() as u8; (next() % 8) as usize]);
            let _ = d.rewrite(&other, values);
        }
    }

    fn desc(pic: u16, tl0: u8, keyidx: u8) -> Vp8Descriptor {
        Vp8Descriptor {
            picture_id: Some(PictureId {
                value: pic,
                wide: true,
            }),
            tl0picidx: Some(tl0),
            keyidx: Some(keyidx),
        }
    }

    #[test]
    fn continuity_passes_the_first_layer_through_and_continues_the_next() {
        let mut c = Vp8Continuity::default();
        // The first layer: its own numbers, nothing to rewrite.
        assert_eq!(c.map(&desc(0x7fff, 255, 31)), None);
        // A late packet of an older picture does not move the newest back.
        assert_eq!(c.map(&desc(0x7ffe, 254, 31)), None);
        // The next layer's keyframe continues at + 1 of each (wrapping in its width).
        c.next_layer();
        assert_eq!(
            c.map(&desc(1234, 17, 4)),
            Some(Vp8Rewrite {
                picture_id: 0,
                tl0picidx: 0,
                keyidx: 0
            })
        );
        // Its later packets keep the offsets: same frame, then the next one.
        assert_eq!(c.map(&desc(1234, 17, 4)).map(|r| r.picture_id), Some(0));
        assert_eq!(
            c.map(&desc(1235, 17, 4)),
            Some(Vp8Rewrite {
                picture_id: 1,
                tl0picidx: 0,
                keyidx: 0
            })
        );
        // A new unrelated stream passes through again.
        c.pass_through();
        assert_eq!(c.map(&desc(42, 42, 2)), None);
        // And a layer after it continues from what the subscriber saw last.
        c.next_layer();
        assert_eq!(
            c.map(&desc(7, 7, 7)),
            Some(Vp8Rewrite {
                picture_id: 43,
                tl0picidx: 43,
                keyidx: 3
            })
        );
    }

    #[test]
    fn continuity_chooses_an_offset_only_when_the_field_first_appears() {
        let mut c = Vp8Continuity::default();
        assert_eq!(c.map(&desc(100, 1, 1)), None);
        c.next_layer();
        // A layer without any of the fields: nothing to write, nothing chosen.
        let bare = Vp8Descriptor {
            picture_id: None,
            tl0picidx: None,
            keyidx: None,
        };
        assert_eq!(c.map(&bare), None);
        // Its picture IDs appear later: they continue after 100.
        let pic_only = Vp8Descriptor {
            picture_id: Some(PictureId {
                value: 5000,
                wide: true,
            }),
            tl0picidx: None,
            keyidx: None,
        };
        assert_eq!(c.map(&pic_only).map(|r| r.picture_id), Some(101));
    }
}
