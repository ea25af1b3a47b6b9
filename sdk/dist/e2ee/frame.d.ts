/**
 * One encoded frame, encrypted and decrypted in the format of docs/e2ee.md ("Frame format",
 * version 1). Pure: WebCrypto's `crypto.subtle` only, no DOM, so it runs in a worker behind
 * RTCRtpScriptTransform, behind the older encoded-streams API, and in Node for tests.
 *
 * ```
 * frame  = P ‖ C ‖ T ‖ IV ‖ N ‖ K ‖ F
 * P      the frame's first N bytes, in the clear (what the media server and the browser's
 *        packetizer read: clearBytes(codec, keyFrame))
 * C ‖ T  AES-GCM(key K, IV, rest of the frame, AAD = P ‖ N ‖ K ‖ F): ciphertext, 16-byte tag
 * IV     12 bytes: SSRC (4) ‖ RTP timestamp (4) ‖ sender counter (4), big-endian
 * N      1 byte: how many bytes P has
 * K      1 byte: the key index in the ring
 * F      1 byte: 0xE1, format version 1 (a frame not ending in it is not encrypted)
 * ```
 *
 * Nothing here throws on a frame: every failure is a typed result, so a bad frame from the
 * network (or a missing key) drops that frame and nothing else.
 */
import type { KeyRing } from './keys.js';
/** The last byte of every encrypted frame: format version 1. */
export declare const FORMAT_V1 = 225;
/** Bytes of the AES-GCM tag. */
export declare const TAG_BYTES = 16;
/** Bytes of the IV. */
export declare const IV_BYTES = 12;
/** Bytes after the tag: IV, N, K, F. */
export declare const TRAILER_BYTES: number;
/** What encryption adds to a frame. */
export declare const OVERHEAD_BYTES: number;
/** The codecs a frame may be of (H.264 is not encrypted: docs/e2ee.md, "Codecs"). */
export type Codec = 'vp8' | 'vp9' | 'av1' | 'opus' | 'h264';
/**
 * How many of a frame's first bytes stay in the clear, or `undefined` for a codec that is
 * not encrypted. VP8: the 3-byte frame tag of every frame (its P bit says key or delta
 * frame), and on a key frame the start code and the picture size too (10 bytes), which the
 * media server reads to pick layers for small views. Opus: the TOC byte. VP9 and AV1: none
 * (the media server reads only their RTP payload descriptors, written by the packetizer
 * outside the frame).
 */
export declare function clearBytes(codec: Codec, keyFrame: boolean): number | undefined;
/** What a sender knows of a frame besides its bytes (from the encoded frame's metadata). */
export interface FrameInfo {
    /** The codec. */
    codec: Codec;
    /** A key frame (video; false for audio). */
    keyFrame: boolean;
    /** The RTP SSRC it is sent on (`getMetadata().synchronizationSource`). */
    ssrc: number;
    /** Its RTP timestamp (`getMetadata().rtpTimestamp`, or the frame's `timestamp`). */
    timestamp: number;
}
/** Why a frame was not encrypted. */
export type EncryptFailure = 
/** The ring has no current key. */
'no_key'
/** The codec is never encrypted (H.264). */
 | 'unsupported_codec'
/** SSRC, timestamp, counter or key index out of range. */
 | 'invalid_input'
/** This encryptor used up its counter: rotate the key and make a new one. */
 | 'counter_exhausted'
/** WebCrypto failed. */
 | 'crypto_error';
/** Why a frame was not decrypted. */
export type DecryptFailure = 
/** It does not end in the trailer of an encrypted frame (or is too short for one). */
'not_encrypted'
/** The ring has no key at the frame's key index. */
 | 'unknown_key'
/** The key is wrong, or the frame was altered. */
 | 'authentication_failed';
/** An encryption's outcome. */
export type EncryptResult = {
    ok: true;
    data: Uint8Array;
    keyIndex: number;
    iv: Uint8Array;
} | {
    ok: false;
    reason: EncryptFailure;
};
/** A decryption's outcome. */
export type DecryptResult = {
    ok: true;
    data: Uint8Array;
    keyIndex: number;
} | {
    ok: false;
    reason: DecryptFailure;
};
/** The IV of a frame: SSRC ‖ RTP timestamp ‖ counter, each 32-bit big-endian. */
export declare function buildIv(ssrc: number, timestamp: number, counter: number): Uint8Array;
/** Whether `frame` ends in the trailer of a version-1 encrypted frame (cheap; no key needed). */
export declare function isEncryptedFrame(frame: Uint8Array): boolean;
/**
 * Encrypts `frame` with `key` (at `keyIndex`) and a given IV: the deterministic core of
 * {@link FrameEncryptor.encrypt}, for test vectors. A caller must never give one IV twice for
 * one key.
 */
export declare function encryptFrameWith(frame: Uint8Array, codec: Codec, keyFrame: boolean, key: CryptoKey, keyIndex: number, iv: Uint8Array): Promise<EncryptResult>;
/**
 * A sender's encryptor: one per sending track (or per transform), holding the frame
 * counter that makes every IV it builds unique. The counter starts at a random value and
 * goes up by one per frame; after 2^32 frames (two years of 60 fps) it refuses
 * (`counter_exhausted`) rather than repeat an IV.
 */
export declare class FrameEncryptor {
    #private;
    /** `counterStart`: for tests only; a random start otherwise. */
    constructor(ring: KeyRing, counterStart?: number);
    /** Encrypts one frame with the ring's current key. */
    encrypt(frame: Uint8Array, info: FrameInfo): Promise<EncryptResult>;
}
/** Decrypts one frame with the key its trailer names. Never throws. */
export declare function decryptFrame(frame: Uint8Array, ring: KeyRing): Promise<DecryptResult>;
