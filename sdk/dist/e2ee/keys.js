/**
 * The key ring of end-to-end encryption (docs/e2ee.md, "Keys").
 *
 * The platform distributes keys; this module only holds them. A ring has 256 slots, one per
 * key index (the byte every encrypted frame carries in its trailer), so a receiver always
 * knows which key a frame was encrypted with and a rotation never drops a frame: the new key
 * is set at a new index on every participant first, then senders switch to it
 * (`setCurrent`), then the old one is removed once no frame under it can still arrive.
 *
 * Keys are AES-GCM keys of 128 or 256 bits, imported non-extractable: once in the ring, the
 * raw bytes cannot be read back out of it.
 */
/** Slots in a ring: a key index is one byte. */
export const KEY_SLOTS = 256;
/** The HKDF salt of {@link deriveKey} when the caller gives none: fixed, so every SDK derives the same key. */
export const DEFAULT_SALT = 'rtcd-e2ee-v1';
/** The HKDF info of {@link deriveKey} when the caller gives none. */
export const DEFAULT_INFO = 'frame key';
/** Key sizes AES-GCM takes here, in bytes. */
const KEY_BYTES = [16, 32];
/** A key index is an integer 0-255. */
export function isKeyIndex(index) {
    return Number.isInteger(index) && index >= 0 && index < KEY_SLOTS;
}
function checkIndex(index) {
    if (!isKeyIndex(index)) {
        throw new RangeError(`key index must be an integer 0-${KEY_SLOTS - 1}, got ${index}`);
    }
}
const encoder = new TextEncoder();
function bytesOf(value) {
    return typeof value === 'string' ? encoder.encode(value) : value;
}
/**
 * Imports raw key bytes (16 bytes: AES-128-GCM, 32 bytes: AES-256-GCM) as a non-extractable
 * key for encrypting and decrypting frames. Throws a `RangeError` for any other length.
 */
export async function importRawKey(raw) {
    if (!KEY_BYTES.includes(raw.length)) {
        throw new RangeError(`a frame key is 16 or 32 bytes, got ${raw.length}`);
    }
    return crypto.subtle.importKey('raw', new Uint8Array(raw), { name: 'AES-GCM' }, false, [
        'encrypt',
        'decrypt',
    ]);
}
/**
 * Derives a frame key from key material the platform hands out (a shared secret of any
 * length, at least 16 bytes) with HKDF-SHA-256 (RFC 5869). Optional: a platform that hands
 * out 16 or 32 random bytes per key can use {@link importRawKey} directly. Deriving lets it
 * hand out one secret and bind the key to a context (`info`), and is the same in every SDK:
 * salt and info are UTF-8 strings or bytes, the output the first `bits` bits of HKDF's.
 */
export async function deriveKey(material, options = {}) {
    if (material.length < 16) {
        throw new RangeError(`key material must be at least 16 bytes, got ${material.length}`);
    }
    const bits = options.bits ?? 128;
    const base = await crypto.subtle.importKey('raw', new Uint8Array(material), 'HKDF', false, [
        'deriveKey',
        'deriveBits',
    ]);
    return crypto.subtle.deriveKey({
        name: 'HKDF',
        hash: 'SHA-256',
        salt: new Uint8Array(bytesOf(options.salt ?? DEFAULT_SALT)),
        info: new Uint8Array(bytesOf(options.info ?? DEFAULT_INFO)),
    }, base, { name: 'AES-GCM', length: bits }, false, ['encrypt', 'decrypt']);
}
/** The raw bytes {@link deriveKey} would derive (for test vectors and other SDKs' checks). */
export async function deriveKeyBytes(material, options = {}) {
    const base = await crypto.subtle.importKey('raw', new Uint8Array(material), 'HKDF', false, [
        'deriveBits',
    ]);
    const out = await crypto.subtle.deriveBits({
        name: 'HKDF',
        hash: 'SHA-256',
        salt: new Uint8Array(bytesOf(options.salt ?? DEFAULT_SALT)),
        info: new Uint8Array(bytesOf(options.info ?? DEFAULT_INFO)),
    }, base, options.bits ?? 128);
    return new Uint8Array(out);
}
/**
 * Keys by index. Receivers decrypt with whichever key a frame names; senders encrypt with the
 * current one. Not shared between participants: each holds its own ring, filled by the
 * platform's key exchange.
 */
export class KeyRing {
    #keys = new Map();
    #current;
    /**
     * Puts `key` at `index` (replacing what was there). The first key set becomes current;
     * later ones become current only with `makeCurrent` (a sender switches once every receiver
     * has the new key).
     */
    setKey(index, key, makeCurrent = false) {
        checkIndex(index);
        this.#keys.set(index, key);
        if (makeCurrent || this.#current === undefined) {
            this.#current = index;
        }
    }
    /** {@link importRawKey}, then {@link KeyRing.setKey}. */
    async setRawKey(index, raw, makeCurrent = false) {
        checkIndex(index);
        this.setKey(index, await importRawKey(raw), makeCurrent);
    }
    /** {@link deriveKey}, then {@link KeyRing.setKey}. */
    async setDerivedKey(index, material, options = {}, makeCurrent = false) {
        checkIndex(index);
        this.setKey(index, await deriveKey(material, options), makeCurrent);
    }
    /** Makes the key at `index` the one senders use. Throws if there is none. */
    setCurrent(index) {
        checkIndex(index);
        if (!this.#keys.has(index)) {
            throw new RangeError(`no key at index ${index}`);
        }
        this.#current = index;
    }
    /**
     * Forgets the key at `index`: frames under it no longer decrypt. Removing the current key
     * leaves none current (a sender then encrypts nothing: `no_key`) until one is set.
     */
    removeKey(index) {
        if (index === this.#current) {
            this.#current = undefined;
        }
        return this.#keys.delete(index);
    }
    /** The key at `index`, if any. */
    get(index) {
        return this.#keys.get(index);
    }
    /** The key senders use now (`undefined` until one is set). */
    get current() {
        if (this.#current === undefined) {
            return undefined;
        }
        const key = this.#keys.get(this.#current);
        return key === undefined ? undefined : { index: this.#current, key };
    }
    /** Indexes holding a key, ascending. */
    get indexes() {
        return [...this.#keys.keys()].sort((a, b) => a - b);
    }
}
