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
import { FrameEncryptor, decryptFrame } from './frame.js';
import { KeyRing } from './keys.js';

/** A key operation, from the page to wherever the frames are encrypted. Keys travel as raw
 * bytes (derivation, when asked for, already happened on the page). */
export type KeyMessage =
  | { type: 'setKey'; index: number; raw: Uint8Array; current: boolean }
  | { type: 'useKey'; index: number }
  | { type: 'removeKey'; index: number };

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
export function emptyStats(): E2eeStats {
  return {
    encrypted: 0,
    decrypted: 0,
    encryptFailed: {
      no_key: 0,
      unsupported_codec: 0,
      invalid_input: 0,
      counter_exhausted: 0,
      crypto_error: 0,
    },
    decryptFailed: { not_encrypted: 0, unknown_key: 0, authentication_failed: 0 },
  };
}

/** All frames that could not be decrypted. */
export function decryptFailures(stats: E2eeStats): number {
  const f = stats.decryptFailed;
  return f.not_encrypted + f.unknown_key + f.authentication_failed;
}

/**
 * The codec of a frame: audio is Opus (the only audio codec rtcd negotiates); video from the
 * frame's metadata `mimeType` (`video/VP8`), and VP8 when the browser does not say (Firefox),
 * because in an encrypted room the SDK offers VP8 first and never H.264 or AV1
 * ({@link videoCodecOrder}).
 */
export function codecOf(kind: 'audio' | 'video', mimeType?: string): Codec {
  if (kind === 'audio') return 'opus';
  const name = (mimeType ?? '').toLowerCase().replace(/^video\//, '');
  switch (name) {
    case 'vp9':
      return 'vp9';
    case 'av1':
      return 'av1';
    case 'h264':
      return 'h264';
    default:
      return 'vp8';
  }
}

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
export function videoCodecOrder<T extends CodecCapability>(codecs: readonly T[]): T[] {
  const rank = (c: T): number => {
    switch (c.mimeType.toLowerCase()) {
      case 'video/vp8':
        return 0;
      case 'video/vp9':
        return 1;
      case 'video/rtx':
      case 'video/red':
      case 'video/ulpfec':
      case 'video/flexfec-03':
        return 2;
      default:
        return -1;
    }
  };
  const kept = codecs.filter((c) => rank(c) >= 0);
  if (!kept.some((c) => rank(c) < 2)) return [];
  // Stable: the browser's own order within a rank.
  return kept.map((c, i) => ({ c, i })).sort((a, b) => rank(a.c) - rank(b.c) || a.i - b.i).map((x) => x.c);
}

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

function u32(n: number | undefined): number {
  return n === undefined || !Number.isFinite(n) ? 0 : Math.floor(n) >>> 0;
}

/**
 * The key ring and counters of one client, wherever its frames are transformed. Messages are
 * applied in the order they come (each waits for the one before: an import is async), and
 * frames see a key once its message is applied.
 */
export class E2eeCryptor {
  readonly ring = new KeyRing();
  stats: E2eeStats = emptyStats();
  #applying: Promise<void> = Promise.resolve();
  /** Bumped by every counted frame; the worker reports stats when it changed. */
  version = 0;

  /** Applies a key message (after the ones before it). Invalid messages are ignored: they
   * come from the page's own SDK, which checked them. */
  handle(message: KeyMessage): Promise<void> {
    this.#applying = this.#applying.then(async () => {
      try {
        switch (message.type) {
          case 'setKey':
            await this.ring.setRawKey(message.index, message.raw, message.current);
            break;
          case 'useKey':
            this.ring.setCurrent(message.index);
            break;
          case 'removeKey':
            this.ring.removeKey(message.index);
            break;
        }
      } catch {
        // Out of range or a missing key: the page checked before sending.
      }
    });
    return this.#applying;
  }

  /** An encryptor for one sending transform (its own IV counter). */
  encryptor(): FrameEncryptor {
    return new FrameEncryptor(this.ring);
  }

  /**
   * Encrypts one frame's bytes in place of the frame's data; false when the frame must be
   * dropped (counted).
   */
  async encrypt(encryptor: FrameEncryptor, frame: EncodedFrameLike, kind: 'audio' | 'video'): Promise<boolean> {
    const meta = frame.getMetadata();
    const result = await encryptor.encrypt(new Uint8Array(frame.data), {
      codec: codecOf(kind, meta.mimeType),
      keyFrame: kind === 'video' && frame.type === 'key',
      ssrc: u32(meta.synchronizationSource),
      timestamp: u32(meta.rtpTimestamp ?? frame.timestamp),
    });
    this.version += 1;
    if (!result.ok) {
      this.stats.encryptFailed[result.reason] += 1;
      return false;
    }
    frame.data = result.data.buffer as ArrayBuffer;
    this.stats.encrypted += 1;
    return true;
  }

  /** Decrypts one frame in place; false when it must be dropped (counted). */
  async decrypt(frame: EncodedFrameLike): Promise<boolean> {
    const result = await decryptFrame(new Uint8Array(frame.data), this.ring);
    this.version += 1;
    if (!result.ok) {
      this.stats.decryptFailed[result.reason] += 1;
      return false;
    }
    frame.data = result.data.buffer as ArrayBuffer;
    this.stats.decrypted += 1;
    return true;
  }

  /**
   * Pipes a sender's or receiver's encoded frames through this cryptor: from `readable` to
   * `writable`, each frame encrypted (send) or decrypted (receive), in order; frames that fail
   * are dropped. Resolves when the stream ends.
   */
  pipe(readable: ReadableStream<EncodedFrameLike>, writable: WritableStream<EncodedFrameLike>, options: TransformOptions): Promise<void> {
    const encryptor = options.side === 'send' ? this.encryptor() : undefined;
    const transform = new TransformStream<EncodedFrameLike, EncodedFrameLike>({
      transform: async (frame, controller) => {
        const keep = encryptor ? await this.encrypt(encryptor, frame, options.kind) : await this.decrypt(frame);
        if (keep) controller.enqueue(frame);
      },
    });
    return readable.pipeThrough(transform).pipeTo(writable).catch(() => {});
  }
}
