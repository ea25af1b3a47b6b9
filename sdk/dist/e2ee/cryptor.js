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
import { FrameEncryptor, decryptFrame } from './frame.js';
import { KeyRing } from './keys.js';
/** Counters at zero. */
export function emptyStats() {
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
export function decryptFailures(stats) {
    const f = stats.decryptFailed;
    return f.not_encrypted + f.unknown_key + f.authentication_failed;
}
/**
 * The codec of a frame: audio is Opus (the only audio codec rtcd negotiates); video from the
 * frame's metadata `mimeType` (`video/VP8`), and VP8 when the browser does not say (Firefox),
 * because in an encrypted room the SDK offers VP8 first and never H.264 or AV1
 * ({@link videoCodecOrder}).
 */
export function codecOf(kind, mimeType) {
    if (kind === 'audio')
        return 'opus';
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
/**
 * The video codecs to offer in an encrypted room, in order (`setCodecPreferences`): VP8, then
 * VP9, then what repairs them (RTX, RED, ULPFEC); H.264 and AV1 left out (docs/e2ee.md,
 * "Codecs"). Empty when the browser lists no VP8 or VP9 (then leave its defaults alone).
 */
export function videoCodecOrder(codecs) {
    const rank = (c) => {
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
    if (!kept.some((c) => rank(c) < 2))
        return [];
    // Stable: the browser's own order within a rank.
    return kept.map((c, i) => ({ c, i })).sort((a, b) => rank(a.c) - rank(b.c) || a.i - b.i).map((x) => x.c);
}
function u32(n) {
    return n === undefined || !Number.isFinite(n) ? 0 : Math.floor(n) >>> 0;
}
/**
 * The key ring and counters of one client, wherever its frames are transformed. Messages are
 * applied in the order they come (each waits for the one before: an import is async), and
 * frames see a key once its message is applied.
 */
export class E2eeCryptor {
    ring = new KeyRing();
    stats = emptyStats();
    #applying = Promise.resolve();
    /** Bumped by every counted frame; the worker reports stats when it changed. */
    version = 0;
    /** Applies a key message (after the ones before it). Invalid messages are ignored: they
     * come from the page's own SDK, which checked them. */
    handle(message) {
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
            }
            catch {
                // Out of range or a missing key: the page checked before sending.
            }
        });
        return this.#applying;
    }
    /** An encryptor for one sending transform (its own IV counter). */
    encryptor() {
        return new FrameEncryptor(this.ring);
    }
    /**
     * Encrypts one frame's bytes in place of the frame's data; false when the frame must be
     * dropped (counted).
     */
    async encrypt(encryptor, frame, kind) {
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
        frame.data = result.data.buffer;
        this.stats.encrypted += 1;
        return true;
    }
    /** Decrypts one frame in place; false when it must be dropped (counted). */
    async decrypt(frame) {
        const result = await decryptFrame(new Uint8Array(frame.data), this.ring);
        this.version += 1;
        if (!result.ok) {
            this.stats.decryptFailed[result.reason] += 1;
            return false;
        }
        frame.data = result.data.buffer;
        this.stats.decrypted += 1;
        return true;
    }
    /**
     * Pipes a sender's or receiver's encoded frames through this cryptor: from `readable` to
     * `writable`, each frame encrypted (send) or decrypted (receive), in order; frames that fail
     * are dropped. Resolves when the stream ends.
     */
    pipe(readable, writable, options) {
        const encryptor = options.side === 'send' ? this.encryptor() : undefined;
        const transform = new TransformStream({
            transform: async (frame, controller) => {
                const keep = encryptor ? await this.encrypt(encryptor, frame, options.kind) : await this.decrypt(frame);
                if (keep)
                    controller.enqueue(frame);
            },
        });
        return readable.pipeThrough(transform).pipeTo(writable).catch(() => { });
    }
}
