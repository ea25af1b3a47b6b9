//! SRTP and SRTCP (RFC 3711; AES-GCM from RFC 7714), protected and checked in the caller's
//! buffer.
//!
//! `rtc`'s SRTP context returns a new buffer for every packet it encrypts or decrypts, so each
//! forwarded packet paid two allocations, two frees and two copies of itself on top of the
//! cipher (`docs/benchmarks.md`, issue 33). This one works in place: what rtcd sends is
//! marshalled into a buffer with room for the tag and encrypted there; what it receives is
//! authenticated and decrypted where it was copied to. The ciphers are `rtc`'s crypto provider's
//! (the one that ran the DTLS handshake), keyed once per session.
//!
//! What it keeps per SSRC: the highest packet index authenticated (which gives the rollover
//! counter, RFC 3711 appendix A) and, on what the client sends, a 64-packet replay window
//! (`rtc`'s default). State is created only for packets that authenticated, so packets nobody
//! keyed cannot grow it, and it is bounded ([`MAX_STREAMS`]).

use bytes::BytesMut;
use rtc::crypto::{
    AeadAlgorithm, AeadCipher, BlockCipherAlgorithm, HmacAlgorithm, Mac, RTCCrypto, SecretVec,
    StreamCipher, StreamCipherAlgorithm, constant_time_eq,
};
use rtc::srtp::protection_profile::ProtectionProfile;

/// Key derivation labels (RFC 3711 section 4.3.1).
const LABEL_RTP_ENCRYPTION: u8 = 0x00;
const LABEL_RTP_AUTH: u8 = 0x01;
const LABEL_RTP_SALT: u8 = 0x02;
const LABEL_RTCP_ENCRYPTION: u8 = 0x03;
const LABEL_RTCP_AUTH: u8 = 0x04;
const LABEL_RTCP_SALT: u8 = 0x05;

/// The AES-GCM tag (RFC 7714: 16 octets for both profiles).
const GCM_TAG: usize = 16;
/// The E flag and 31-bit SRTCP index every SRTCP packet ends its protected part with.
const SRTCP_INDEX: usize = 4;
/// The SRTCP index is 31 bits; past it the keys must not be used again (RFC 3711 section 9.2).
const MAX_SRTCP_INDEX: u32 = (1 << 31) - 1;
/// Packets remembered behind the highest one per SSRC (`rtc`'s default, libsrtp's is 128).
const REPLAY_WINDOW: u64 = 64;
/// SSRCs tracked per direction. A client sends a few (audio, three simulcast layers, their
/// repairs, RTCP senders); past this the least recently used is forgotten, which costs it
/// nothing but its replay history.
const MAX_STREAMS: usize = 64;

/// Why a packet was not protected or not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum SrtpError {
    #[error("packet too short for its header and tag")]
    TooShort,
    #[error("authentication failed")]
    Auth,
    #[error("replayed packet (ssrc {ssrc}, index {index})")]
    Replay { ssrc: u32, index: u64 },
    #[error("packet older than the replay window (ssrc {ssrc}, index {index})")]
    TooOld { ssrc: u32, index: u64 },
    #[error("the keys protected as many packets as they may (RFC 3711 section 9.2)")]
    Exhausted,
    #[error("the cipher failed")]
    Cipher,
    #[error("{0}")]
    Keying(String),
}

/// How a profile protects: AES counter mode with an HMAC-SHA1 tag, or AES-GCM.
enum Cipher {
    Cm {
        stream: Box<dyn StreamCipher>,
        mac: Box<dyn Mac>,
    },
    Gcm(Box<dyn AeadCipher>),
}

/// One kind's (RTP's or RTCP's) session keys.
struct Session {
    cipher: Cipher,
    /// The session salt, zero-padded to 14 bytes (GCM's is 12).
    salt: [u8; 14],
}

/// What is kept of one SSRC's packets.
#[derive(Clone, Copy)]
struct Stream {
    ssrc: u32,
    /// The highest index authenticated (RTP: rollover counter and sequence number; RTCP: the
    /// SRTCP index).
    highest: u64,
    /// Bit `i` set: index `highest - i` was accepted.
    window: u64,
    /// For eviction: when it was last used, in packets.
    used: u64,
}

/// The streams of one kind and direction, looked up by a short scan (a peer has a handful).
#[derive(Default)]
struct Streams {
    list: Vec<Stream>,
    clock: u64,
}

impl Streams {
    fn get(&self, ssrc: u32) -> Option<&Stream> {
        self.list.iter().find(|s| s.ssrc == ssrc)
    }

    /// Records `index` as accepted (after it authenticated).
    fn accept(&mut self, ssrc: u32, index: u64) {
        self.clock += 1;
        let clock = self.clock;
        if let Some(s) = self.list.iter_mut().find(|s| s.ssrc == ssrc) {
            s.used = clock;
            if index > s.highest {
                let shift = index - s.highest;
                s.window = if shift >= 64 { 0 } else { s.window << shift };
                s.window |= 1;
                s.highest = index;
            } else if s.highest - index < REPLAY_WINDOW {
                s.window |= 1 << (s.highest - index);
            }
            return;
        }
        let stream = Stream {
            ssrc,
            highest: index,
            window: 1,
            used: clock,
        };
        if self.list.len() < MAX_STREAMS {
            self.list.push(stream);
        } else if let Some(oldest) = self.list.iter_mut().min_by_key(|s| s.used) {
            *oldest = stream;
        }
    }
}

/// Whether `index` may be accepted on `stream`: not seen, not behind the window.
fn replay_check(stream: Option<&Stream>, ssrc: u32, index: u64) -> Result<(), SrtpError> {
    let Some(s) = stream else { return Ok(()) };
    if index > s.highest {
        return Ok(());
    }
    let behind = s.highest - index;
    if behind >= REPLAY_WINDOW {
        return Err(SrtpError::TooOld { ssrc, index });
    }
    if s.window & (1 << behind) != 0 {
        return Err(SrtpError::Replay { ssrc, index });
    }
    Ok(())
}

/// The packet index of sequence number `seq` given the highest index seen (RFC 3711 appendix
/// A): the rollover counter that puts it nearest. `None`: before the first rollover counter.
fn estimate_index(highest: Option<u64>, seq: u16) -> Option<u64> {
    let Some(highest) = highest else {
        return Some(u64::from(seq));
    };
    let roc = highest >> 16;
    let s_l = highest as u16;
    let seq32 = u32::from(seq);
    let s_l32 = u32::from(s_l);
    let v = if s_l < 0x8000 {
        if seq32 > s_l32 && seq32 - s_l32 > 0x8000 {
            roc.checked_sub(1)?
        } else {
            roc
        }
    } else if s_l32 - 0x8000 > seq32 {
        roc + 1
    } else {
        roc
    };
    Some((v << 16) | u64::from(seq))
}

/// The RTP header's length as written (fixed part, CSRCs, extension block), if the packet holds
/// one. Encryption starts there, whatever a parser makes of the extensions.
pub(super) fn rtp_header_len(packet: &[u8]) -> Option<usize> {
    if packet.len() < 12 {
        return None;
    }
    let mut len = 12 + 4 * usize::from(packet[0] & 0x0f);
    if packet[0] & 0x10 != 0 {
        let words = packet.get(len + 2..len + 4)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    (len <= packet.len()).then_some(len)
}

/// One direction's SRTP and SRTCP keys and per-SSRC state.
pub(super) struct Context {
    rtp: Session,
    rtcp: Session,
    /// RTP tag bytes (HMAC: 10 or 4; GCM: 16).
    rtp_tag: usize,
    /// SRTCP tag bytes (HMAC: always 10; GCM: 16).
    rtcp_tag: usize,
    rtp_streams: Streams,
    rtcp_streams: Streams,
    /// The last SRTCP index sent (one counter for every SSRC rtcd sends RTCP from).
    rtcp_index: u32,
}

impl Context {
    /// Derives the session keys (RFC 3711 section 4.3, key derivation rate 0 as DTLS-SRTP
    /// requires) for `profile` from a master key and salt.
    pub(super) fn new(
        profile: ProtectionProfile,
        master_key: &[u8],
        master_salt: &[u8],
        crypto: &dyn RTCCrypto,
    ) -> Result<Self, SrtpError> {
        if master_key.len() != profile.key_len() || master_salt.len() != profile.salt_len() {
            return Err(SrtpError::Keying(format!(
                "master key {} and salt {} bytes, the profile takes {} and {}",
                master_key.len(),
                master_salt.len(),
                profile.key_len(),
                profile.salt_len()
            )));
        }
        let err = |e: rtc::crypto::CryptoError| SrtpError::Keying(e.to_string());
        let kdf = |label: u8, len: usize| derive(crypto, label, master_key, master_salt, len);
        let salt = |label: u8| -> Result<[u8; 14], SrtpError> {
            let mut salt = [0; 14];
            salt[..master_salt.len()].copy_from_slice(&kdf(label, master_salt.len())?);
            Ok(salt)
        };
        let key_len = master_key.len();
        let gcm = matches!(
            profile,
            ProtectionProfile::AeadAes128Gcm | ProtectionProfile::AeadAes256Gcm
        );
        let session = |enc: u8, auth: u8, salt_label: u8| -> Result<Session, SrtpError> {
            let key = SecretVec::new(kdf(enc, key_len)?);
            let cipher = if gcm {
                let algorithm = if key_len == 16 {
                    AeadAlgorithm::Aes128Gcm
                } else {
                    AeadAlgorithm::Aes256Gcm
                };
                let aead = crypto.new_aead(algorithm, key.as_ref()).map_err(err)?;
                if aead.tag_len() != GCM_TAG {
                    return Err(SrtpError::Keying(format!(
                        "AES-GCM tag of {} bytes",
                        aead.tag_len()
                    )));
                }
                Cipher::Gcm(aead)
            } else {
                let algorithm = if key_len == 16 {
                    StreamCipherAlgorithm::Aes128Ctr
                } else {
                    StreamCipherAlgorithm::Aes256Ctr
                };
                let auth = SecretVec::new(kdf(auth, profile.auth_key_len())?);
                Cipher::Cm {
                    stream: crypto
                        .new_stream_cipher(algorithm, key.as_ref())
                        .map_err(err)?,
                    mac: crypto
                        .new_hmac(HmacAlgorithm::Sha1, auth.as_ref())
                        .map_err(err)?,
                }
            };
            Ok(Session {
                cipher,
                salt: salt(salt_label)?,
            })
        };
        let (rtp_tag, rtcp_tag) = if gcm {
            (GCM_TAG, GCM_TAG)
        } else {
            (profile.rtp_auth_tag_len(), profile.rtcp_auth_tag_len())
        };
        Ok(Self {
            rtp: session(LABEL_RTP_ENCRYPTION, LABEL_RTP_AUTH, LABEL_RTP_SALT)?,
            rtcp: session(LABEL_RTCP_ENCRYPTION, LABEL_RTCP_AUTH, LABEL_RTCP_SALT)?,
            rtp_tag,
            rtcp_tag,
            rtp_streams: Streams::default(),
            rtcp_streams: Streams::default(),
            rtcp_index: 0,
        })
    }

    /// The bytes [`Context::protect_rtp`] appends.
    pub(super) fn rtp_overhead(&self) -> usize {
        self.rtp_tag
    }

    /// The bytes [`Context::protect_rtcp`] appends.
    pub(super) fn rtcp_overhead(&self) -> usize {
        self.rtcp_tag + SRTCP_INDEX
    }

    /// Encrypts the RTP packet `packet` holds and appends its tag (into spare capacity if it
    /// has [`Context::rtp_overhead`] bytes of it).
    pub(super) fn protect_rtp(&mut self, packet: &mut BytesMut) -> Result<(), SrtpError> {
        let header = rtp_header_len(packet).ok_or(SrtpError::TooShort)?;
        let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        let index = estimate_index(self.rtp_streams.get(ssrc).map(|s| s.highest), seq).ok_or(
            SrtpError::TooOld {
                ssrc,
                index: u64::from(seq),
            },
        )?;
        let roc = u32::try_from(index >> 16).map_err(|_| SrtpError::Exhausted)?;
        let tag = self.rtp_tag;
        let session = &mut self.rtp;
        match &mut session.cipher {
            Cipher::Cm { stream, mac } => {
                let iv = cm_iv(&session.salt, ssrc, index);
                stream
                    .apply_keystream(&iv, &mut packet[header..])
                    .map_err(|_| SrtpError::Cipher)?;
                let mut full = [0; 20];
                mac.sign(&[&packet[..], &roc.to_be_bytes()], &mut full)
                    .map_err(|_| SrtpError::Cipher)?;
                packet.extend_from_slice(&full[..tag]);
            }
            Cipher::Gcm(aead) => {
                let nonce = gcm_rtp_nonce(&session.salt, ssrc, roc, seq);
                let mut tag = [0; GCM_TAG];
                let (aad, body) = packet.split_at_mut(header);
                aead.seal_in_place(&nonce, aad, body, &mut tag)
                    .map_err(|_| SrtpError::Cipher)?;
                packet.extend_from_slice(&tag);
            }
        }
        self.rtp_streams.accept(ssrc, index);
        Ok(())
    }

    /// Authenticates and decrypts the SRTP packet in `packet`, in place. Returns the length of
    /// the RTP packet it now begins with (the tag is what follows).
    pub(super) fn unprotect_rtp(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        let header = rtp_header_len(packet).ok_or(SrtpError::TooShort)?;
        if packet.len() < header + self.rtp_tag {
            return Err(SrtpError::TooShort);
        }
        let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        let stream = self.rtp_streams.get(ssrc);
        let index = estimate_index(stream.map(|s| s.highest), seq).ok_or(SrtpError::TooOld {
            ssrc,
            index: u64::from(seq),
        })?;
        replay_check(stream, ssrc, index)?;
        let roc = u32::try_from(index >> 16).map_err(|_| SrtpError::Exhausted)?;
        let tag = self.rtp_tag;
        let end = packet.len() - tag;
        let session = &mut self.rtp;
        match &mut session.cipher {
            Cipher::Cm { stream, mac } => {
                let mut full = [0; 20];
                mac.sign(&[&packet[..end], &roc.to_be_bytes()], &mut full)
                    .map_err(|_| SrtpError::Auth)?;
                if !constant_time_eq(&full[..tag], &packet[end..]) {
                    return Err(SrtpError::Auth);
                }
                let iv = cm_iv(&session.salt, ssrc, index);
                stream
                    .apply_keystream(&iv, &mut packet[header..end])
                    .map_err(|_| SrtpError::Cipher)?;
            }
            Cipher::Gcm(aead) => {
                let nonce = gcm_rtp_nonce(&session.salt, ssrc, roc, seq);
                let (protected, tag) = packet.split_at_mut(end);
                let (aad, body) = protected.split_at_mut(header);
                aead.open_in_place(&nonce, aad, body, tag)
                    .map_err(|_| SrtpError::Auth)?;
            }
        }
        self.rtp_streams.accept(ssrc, index);
        Ok(end)
    }

    /// Encrypts the compound RTCP packet `packet` holds and appends the E flag, the SRTCP index
    /// and the tag (into spare capacity if it has [`Context::rtcp_overhead`] bytes of it).
    pub(super) fn protect_rtcp(&mut self, packet: &mut BytesMut) -> Result<(), SrtpError> {
        if packet.len() < 8 {
            return Err(SrtpError::TooShort);
        }
        if self.rtcp_index >= MAX_SRTCP_INDEX {
            return Err(SrtpError::Exhausted);
        }
        self.rtcp_index += 1;
        let index = self.rtcp_index;
        let ssrc = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        let trailer = (index | 1 << 31).to_be_bytes();
        let tag = self.rtcp_tag;
        let session = &mut self.rtcp;
        match &mut session.cipher {
            Cipher::Cm { stream, mac } => {
                let iv = cm_iv(&session.salt, ssrc, u64::from(index));
                stream
                    .apply_keystream(&iv, &mut packet[8..])
                    .map_err(|_| SrtpError::Cipher)?;
                packet.extend_from_slice(&trailer);
                let mut full = [0; 20];
                mac.sign(&[&packet[..]], &mut full)
                    .map_err(|_| SrtpError::Cipher)?;
                packet.extend_from_slice(&full[..tag]);
            }
            Cipher::Gcm(aead) => {
                let nonce = gcm_rtcp_nonce(&session.salt, ssrc, index);
                let mut aad = [0; 12];
                aad[..8].copy_from_slice(&packet[..8]);
                aad[8..].copy_from_slice(&trailer);
                let mut tag = [0; GCM_TAG];
                aead.seal_in_place(&nonce, &aad, &mut packet[8..], &mut tag)
                    .map_err(|_| SrtpError::Cipher)?;
                packet.extend_from_slice(&tag);
                packet.extend_from_slice(&trailer);
            }
        }
        Ok(())
    }

    /// Authenticates and (if its E flag says it is encrypted) decrypts the SRTCP packet in
    /// `packet`, in place. Returns the length of the compound RTCP packet it now begins with.
    pub(super) fn unprotect_rtcp(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        let tag_len = self.rtcp_tag;
        if packet.len() < 8 + SRTCP_INDEX + tag_len {
            return Err(SrtpError::TooShort);
        }
        let ssrc = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        let session = &mut self.rtcp;
        let (end, trailer_at) = match session.cipher {
            // | RTCP | E + index | tag |
            Cipher::Cm { .. } => {
                let trailer_at = packet.len() - tag_len - SRTCP_INDEX;
                (trailer_at, trailer_at)
            }
            // | RTCP | tag | E + index |
            Cipher::Gcm(_) => {
                let trailer_at = packet.len() - SRTCP_INDEX;
                (trailer_at - tag_len, trailer_at)
            }
        };
        let trailer: [u8; 4] = packet[trailer_at..trailer_at + SRTCP_INDEX]
            .try_into()
            .map_err(|_| SrtpError::TooShort)?;
        let word = u32::from_be_bytes(trailer);
        let encrypted = word & 1 << 31 != 0;
        let index = word & MAX_SRTCP_INDEX;
        let stream = self.rtcp_streams.get(ssrc);
        replay_check(stream, ssrc, u64::from(index))?;
        match &mut session.cipher {
            Cipher::Cm { stream, mac } => {
                let mut full = [0; 20];
                mac.sign(&[&packet[..trailer_at + SRTCP_INDEX]], &mut full)
                    .map_err(|_| SrtpError::Auth)?;
                if !constant_time_eq(&full[..tag_len], &packet[trailer_at + SRTCP_INDEX..]) {
                    return Err(SrtpError::Auth);
                }
                if encrypted {
                    let iv = cm_iv(&session.salt, ssrc, u64::from(index));
                    stream
                        .apply_keystream(&iv, &mut packet[8..end])
                        .map_err(|_| SrtpError::Cipher)?;
                }
            }
            Cipher::Gcm(aead) => {
                let nonce = gcm_rtcp_nonce(&session.salt, ssrc, index);
                let (body, rest) = packet.split_at_mut(end);
                let tag = &rest[..GCM_TAG];
                if encrypted {
                    let mut aad = [0; 12];
                    aad[..8].copy_from_slice(&body[..8]);
                    aad[8..].copy_from_slice(&trailer);
                    aead.open_in_place(&nonce, &aad, &mut body[8..], tag)
                        .map_err(|_| SrtpError::Auth)?;
                } else {
                    // Authenticated only (RFC 7714 section 9.2): all of it is associated data.
                    let mut aad = body.to_vec();
                    aad.extend_from_slice(&trailer);
                    aead.open_in_place(&nonce, &aad, &mut [], tag)
                        .map_err(|_| SrtpError::Auth)?;
                }
            }
        }
        self.rtcp_streams.accept(ssrc, u64::from(index));
        Ok(end)
    }
}

/// AES-CM's counter block (RFC 3711 section 4.1.1): the session salt shifted left 16 bits, XORed
/// with the SSRC at bits 64..96 and the index at bits 16..64.
fn cm_iv(salt: &[u8; 14], ssrc: u32, index: u64) -> [u8; 16] {
    let mut iv = [0; 16];
    iv[..14].copy_from_slice(salt);
    for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
        *b ^= s;
    }
    for (b, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
        *b ^= s;
    }
    iv
}

/// AES-GCM's RTP nonce (RFC 7714 section 8.1): 00 00, SSRC, ROC, SEQ, XORed with the salt.
fn gcm_rtp_nonce(salt: &[u8; 14], ssrc: u32, roc: u32, seq: u16) -> [u8; 12] {
    let mut nonce = [0; 12];
    nonce[2..6].copy_from_slice(&ssrc.to_be_bytes());
    nonce[6..10].copy_from_slice(&roc.to_be_bytes());
    nonce[10..12].copy_from_slice(&seq.to_be_bytes());
    for (n, s) in nonce.iter_mut().zip(salt) {
        *n ^= s;
    }
    nonce
}

/// AES-GCM's RTCP nonce (RFC 7714 section 9.1): 00 00, SSRC, 00 00, the 31-bit index, XORed
/// with the salt.
fn gcm_rtcp_nonce(salt: &[u8; 14], ssrc: u32, index: u32) -> [u8; 12] {
    let mut nonce = [0; 12];
    nonce[2..6].copy_from_slice(&ssrc.to_be_bytes());
    nonce[8..12].copy_from_slice(&index.to_be_bytes());
    for (n, s) in nonce.iter_mut().zip(salt) {
        *n ^= s;
    }
    nonce
}

/// The AES-CM PRF (RFC 3711 section 4.3.3, with RFC 6188's AES-256 and RFC 7714's 96-bit
/// salts zero-padded): `len` bytes of keystream under the master key from the master salt
/// XORed with the label at byte 7, shifted left 16 bits.
fn derive(
    crypto: &dyn RTCCrypto,
    label: u8,
    master_key: &[u8],
    master_salt: &[u8],
    len: usize,
) -> Result<Vec<u8>, SrtpError> {
    let algorithm = match master_key.len() {
        16 => BlockCipherAlgorithm::Aes128,
        32 => BlockCipherAlgorithm::Aes256,
        n => return Err(SrtpError::Keying(format!("a master key of {n} bytes"))),
    };
    if master_salt.len() > 14 {
        return Err(SrtpError::Keying("a master salt over 14 bytes".into()));
    }
    let mut out = Vec::with_capacity(len.div_ceil(16) * 16);
    for counter in 0..len.div_ceil(16) {
        let mut block = [0u8; 16];
        block[..master_salt.len()].copy_from_slice(master_salt);
        block[7] ^= label;
        block[14..].copy_from_slice(&(counter as u16).to_be_bytes());
        crypto
            .block_encrypt(algorithm, master_key, &mut block)
            .map_err(|e| SrtpError::Keying(e.to_string()))?;
        out.extend_from_slice(&block);
    }
    out.truncate(len);
    Ok(out)
}

#[cfg(test)]
mod tests;
