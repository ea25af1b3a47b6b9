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
import { isKeyIndex } from './keys.js';
/** The last byte of every encrypted frame: format version 1. */
export const FORMAT_V1 = 0xe1;
/** Bytes of the AES-GCM tag. */
export const TAG_BYTES = 16;
/** Bytes of the IV. */
export const IV_BYTES = 12;
/** Bytes after the tag: IV, N, K, F. */
export const TRAILER_BYTES = IV_BYTES + 3;
/** What encryption adds to a frame. */
export const OVERHEAD_BYTES = TAG_BYTES + TRAILER_BYTES;
/**
 * How many of a frame's first bytes stay in the clear, or `undefined` for a codec that is
 * not encrypted. VP8: the 3-byte frame tag of every frame (its P bit says key or delta
 * frame), and on a key frame the start code and the picture size too (10 bytes), which the
 * media server reads to pick layers for small views. Opus: the TOC byte. VP9 and AV1: none
 * (the media server reads only their RTP payload descriptors, written by the packetizer
 * outside the frame).
 */
export function clearBytes(codec, keyFrame) {
    switch (codec) {
        case 'vp8':
            return keyFrame ? 10 : 3;
        case 'opus':
            return 1;
        case 'vp9':
        case 'av1':
            return 0;
        case 'h264':
            return undefined;
    }
}
function isU32(n) {
    return Number.isInteger(n) && n >= 0 && n <= 0xffffffff;
}
/** The IV of a frame: SSRC ‖ RTP timestamp ‖ counter, each 32-bit big-endian. */
export function buildIv(ssrc, timestamp, counter) {
    const iv = new Uint8Array(IV_BYTES);
    const view = new DataView(iv.buffer);
    view.setUint32(0, ssrc >>> 0);
    view.setUint32(4, timestamp >>> 0);
    view.setUint32(8, counter >>> 0);
    return iv;
}
/** Whether `frame` ends in the trailer of a version-1 encrypted frame (cheap; no key needed). */
export function isEncryptedFrame(frame) {
    const n = frame.length;
    if (n < OVERHEAD_BYTES || frame[n - 1] !== FORMAT_V1) {
        return false;
    }
    const clear = frame[n - 3] ?? 0;
    return n >= OVERHEAD_BYTES + clear;
}
/**
 * Encrypts `frame` with `key` (at `keyIndex`) and a given IV: the deterministic core of
 * {@link FrameEncryptor.encrypt}, for test vectors. A caller must never give one IV twice for
 * one key.
 */
export async function encryptFrameWith(frame, codec, keyFrame, key, keyIndex, iv) {
    const rule = clearBytes(codec, keyFrame);
    if (rule === undefined) {
        return { ok: false, reason: 'unsupported_codec' };
    }
    if (!isKeyIndex(keyIndex) || iv.length !== IV_BYTES) {
        return { ok: false, reason: 'invalid_input' };
    }
    const clear = Math.min(rule, frame.length);
    const trailer = new Uint8Array([clear, keyIndex, FORMAT_V1]);
    const aad = new Uint8Array(clear + trailer.length);
    aad.set(frame.subarray(0, clear));
    aad.set(trailer, clear);
    let sealed;
    try {
        sealed = await crypto.subtle.encrypt({ name: 'AES-GCM', iv: new Uint8Array(iv), additionalData: aad, tagLength: TAG_BYTES * 8 }, key, new Uint8Array(frame.subarray(clear)));
    }
    catch {
        return { ok: false, reason: 'crypto_error' };
    }
    const out = new Uint8Array(clear + sealed.byteLength + TRAILER_BYTES);
    out.set(frame.subarray(0, clear));
    out.set(new Uint8Array(sealed), clear);
    out.set(iv, clear + sealed.byteLength);
    out.set(trailer, clear + sealed.byteLength + IV_BYTES);
    return { ok: true, data: out, keyIndex, iv: new Uint8Array(iv) };
}
/** A random 32-bit start for a sender's counter. */
function randomU32() {
    const b = new Uint32Array(1);
    crypto.getRandomValues(b);
    return b[0] ?? 0;
}
/**
 * A sender's encryptor: one per sending track (or per transform), holding the frame
 * counter that makes every IV it builds unique. The counter starts at a random value and
 * goes up by one per frame; after 2^32 frames (two years of 60 fps) it refuses
 * (`counter_exhausted`) rather than repeat an IV.
 */
export class FrameEncryptor {
    #ring;
    #counter;
    #left = 2 ** 32;
    /** `counterStart`: for tests only; a random start otherwise. */
    constructor(ring, counterStart) {
        this.#ring = ring;
        this.#counter = counterStart !== undefined && isU32(counterStart) ? counterStart : randomU32();
    }
    /** Encrypts one frame with the ring's current key. */
    async encrypt(frame, info) {
        const current = this.#ring.current;
        if (current === undefined) {
            return { ok: false, reason: 'no_key' };
        }
        if (!isU32(info.ssrc) || !isU32(info.timestamp)) {
            return { ok: false, reason: 'invalid_input' };
        }
        if (this.#left === 0) {
            return { ok: false, reason: 'counter_exhausted' };
        }
        const iv = buildIv(info.ssrc, info.timestamp, this.#counter);
        // Used up even if encryption fails below: an IV is never offered twice.
        this.#counter = (this.#counter + 1) >>> 0;
        this.#left -= 1;
        return encryptFrameWith(frame, info.codec, info.keyFrame, current.key, current.index, iv);
    }
}
/** Decrypts one frame with the key its trailer names. Never throws. */
export async function decryptFrame(frame, ring) {
    if (!isEncryptedFrame(frame)) {
        return { ok: false, reason: 'not_encrypted' };
    }
    const n = frame.length;
    const clear = frame[n - 3] ?? 0;
    const keyIndex = frame[n - 2] ?? 0;
    const key = ring.get(keyIndex);
    if (key === undefined) {
        return { ok: false, reason: 'unknown_key' };
    }
    const trailerAt = n - TRAILER_BYTES;
    const iv = new Uint8Array(frame.subarray(trailerAt, trailerAt + IV_BYTES));
    const aad = new Uint8Array(clear + 3);
    aad.set(frame.subarray(0, clear));
    aad.set(frame.subarray(n - 3), clear);
    let opened;
    try {
        opened = await crypto.subtle.decrypt({ name: 'AES-GCM', iv, additionalData: aad, tagLength: TAG_BYTES * 8 }, key, new Uint8Array(frame.subarray(clear, trailerAt)));
    }
    catch {
        return { ok: false, reason: 'authentication_failed' };
    }
    const out = new Uint8Array(clear + opened.byteLength);
    out.set(frame.subarray(0, clear));
    out.set(new Uint8Array(opened), clear);
    return { ok: true, data: out, keyIndex };
}
