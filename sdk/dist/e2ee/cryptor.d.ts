/**
 * The part of end-to-end encryption that runs where the frames are (docs/e2ee.md): a key ring
 * fed by messages, one {@link FrameEncryptor} per sending transform, the per-frame decisions
 * (which codec, key frame or not, what to drop) and the counters a page shows. Used by the
 * dedicated worker behind `RTCRtpScriptTransform` (`worker.ts`) and, with the older
 * encoded-streams API, on the page itself. No DOM and no worker globals: Node tests drive it.
 *
 * The one rule it keeps: a frame that cannot be encrypted is dropped (never sent in the
 * clear), and a frame that cannot be decrypted is dropped (never handed to the decoder).
 */
import type { Codec, DecryptFailure, EncryptFailure } from './frame.js';
import { FrameEncryptor } from './frame.js';
import { KeyRing } from './keys.js';
/** A key operation, from the page to wherever the frames are encrypted. Keys travel as raw
 * bytes (derivation, when asked for, already happened on the page). */
export type KeyMessage = {
    type: 'setKey';
    index: number;
    raw: Uint8Array;
    current: boolean;
} | {
    type: 'useKey';
    index: number;
} | {
    type: 'removeKey';
    index: number;
};
/** Which way a transform works: `send` encrypts, `receive` decrypts. */
export type Side = 'send' | 'receive';
/** What a transform is told when it is made (`RTCRtpScriptTransform`'s options). */
export interface TransformOptions {
    side: Side;
    kind: 'audio' | 'video';
}
/** Counters of one client's frames (read with `RtcdClient.e2eeStats`). */
export interface E2eeStats {
    /** Frames encrypted and sent. */
    encrypted: number;
    /** Frames decrypted and handed to the decoder. */
    decrypted: number;
    /** Frames not sent, by why (`no_key` before a key is current; `unsupported_codec`: H.264). */
    encryptFailed: Record<EncryptFailure, number>;
    /** Frames received and dropped, by why: `unknown_key` (no key at the frame's index: this
     * page lacks the key), `authentication_failed` (a wrong key, or an altered frame),
     * `not_encrypted` (a frame without the trailer: someone sent in the clear). */
    decryptFailed: Record<DecryptFailure, number>;
}
/** Counters at zero. */
export declare function emptyStats(): E2eeStats;
/** All frames that could not be decrypted. */
export declare function decryptFailures(stats: E2eeStats): number;
/**
 * The codec of a frame: audio is Opus (the only audio codec rtcd negotiates); video from the
 * frame's metadata `mimeType` (`video/VP8`), and VP8 when the browser does not say (Firefox),
 * because in an encrypted room the SDK offers VP8 first and never H.264 or AV1
 * ({@link videoCodecOrder}).
 */
export declare function codecOf(kind: 'audio' | 'video', mimeType?: string): Codec;
/** A codec capability as `RTCRtpReceiver.getCapabilities` lists it. */
export interface CodecCapability {
    mimeType: string;
    clockRate: number;
    channels?: number;
    sdpFmtpLine?: string;
}
/**
 * The video codecs to offer in an encrypted room, in order (`setCodecPreferences`): VP8, then
 * VP9, then what repairs them (RTX, RED, ULPFEC); H.264 and AV1 left out (docs/e2ee.md,
 * "Codecs"). Empty when the browser lists no VP8 or VP9 (then leave its defaults alone).
 */
export declare function videoCodecOrder<T extends CodecCapability>(codecs: readonly T[]): T[];
/** What the transform needs of one encoded frame (RTCEncodedVideoFrame / RTCEncodedAudioFrame). */
export interface EncodedFrameLike {
    data: ArrayBuffer;
    type?: string;
    timestamp?: number;
    getMetadata(): {
        synchronizationSource?: number;
        rtpTimestamp?: number;
        mimeType?: string;
    };
}
/**
 * The key ring and counters of one client, wherever its frames are transformed. Messages are
 * applied in the order they come (each waits for the one before: an import is async), and
 * frames see a key once its message is applied.
 */
export declare class E2eeCryptor {
    #private;
    readonly ring: KeyRing;
    stats: E2eeStats;
    /** Bumped by every counted frame; the worker reports stats when it changed. */
    version: number;
    /** Applies a key message (after the ones before it). Invalid messages are ignored: they
     * come from the page's own SDK, which checked them. */
    handle(message: KeyMessage): Promise<void>;
    /** An encryptor for one sending transform (its own IV counter). */
    encryptor(): FrameEncryptor;
    /**
     * Encrypts one frame's bytes in place of the frame's data; false when the frame must be
     * dropped (counted).
     */
    encrypt(encryptor: FrameEncryptor, frame: EncodedFrameLike, kind: 'audio' | 'video'): Promise<boolean>;
    /** Decrypts one frame in place; false when it must be dropped (counted). */
    decrypt(frame: EncodedFrameLike): Promise<boolean>;
    /**
     * Pipes a sender's or receiver's encoded frames through this cryptor: from `readable` to
     * `writable`, each frame encrypted (send) or decrypted (receive), in order; frames that fail
     * are dropped. Resolves when the stream ends.
     */
    pipe(readable: ReadableStream<EncodedFrameLike>, writable: WritableStream<EncodedFrameLike>, options: TransformOptions): Promise<void>;
}
