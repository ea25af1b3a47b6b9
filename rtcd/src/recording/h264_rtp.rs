//! Test-only H.264 RTP payloads (RFC 6184, mode 1), shared by the depacketizer's unit tests
//! and the recorder's end-to-end tests so both speak the same packetization.

/// A STAP-A payload (section 5.7.1) aggregating `nals`; its NRI is the highest of theirs.
pub(crate) fn stap_a(nals: &[&[u8]]) -> Vec<u8> {
    let nri = nals.iter().map(|n| n[0] & 0x60).max().unwrap_or(0);
    let mut out = vec![nri | 24];
    for n in nals {
        out.extend((n.len() as u16).to_be_bytes());
        out.extend_from_slice(n);
    }
    out
}

/// The FU-A payloads (section 5.8) carrying `nal`, at most `max` bytes of its body each: S on
/// the first, E on the last.
pub(crate) fn fu_a(nal: &[u8], max: usize) -> Vec<Vec<u8>> {
    let chunks: Vec<&[u8]> = nal[1..].chunks(max).collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut fu = nal[0] & 0x1f;
            if i == 0 {
                fu |= 0x80;
            }
            if i + 1 == chunks.len() {
                fu |= 0x40;
            }
            let mut p = vec![(nal[0] & 0xe0) | 28, fu];
            p.extend_from_slice(chunk);
            p
        })
        .collect()
}
