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
export declare const KEY_SLOTS = 256;
/** The HKDF salt of {@link deriveKey} when the caller gives none: fixed, so every SDK derives the same key. */
export declare const DEFAULT_SALT = "rtcd-e2ee-v1";
/** The HKDF info of {@link deriveKey} when the caller gives none. */
export declare const DEFAULT_INFO = "frame key";
/** A key index is an integer 0-255. */
export declare function isKeyIndex(index: number): boolean;
/**
 * Imports raw key bytes (16 bytes: AES-128-GCM, 32 bytes: AES-256-GCM) as a non-extractable
 * key for encrypting and decrypting frames. Throws a `RangeError` for any other length.
 */
export declare function importRawKey(raw: Uint8Array): Promise<CryptoKey>;
/** How {@link deriveKey} derives. */
export interface DeriveOptions {
    /** HKDF salt; default {@link DEFAULT_SALT}. */
    salt?: Uint8Array | string;
    /** HKDF info (e.g. the room name, to bind the key to it); default {@link DEFAULT_INFO}. */
    info?: Uint8Array | string;
    /** Key length: 128 (default) or 256 bits. */
    bits?: 128 | 256;
}
/**
 * Derives a frame key from key material the platform hands out (a shared secret of any
 * length, at least 16 bytes) with HKDF-SHA-256 (RFC 5869). Optional: a platform that hands
 * out 16 or 32 random bytes per key can use {@link importRawKey} directly. Deriving lets it
 * hand out one secret and bind the key to a context (`info`), and is the same in every SDK:
 * salt and info are UTF-8 strings or bytes, the output the first `bits` bits of HKDF's.
 */
export declare function deriveKey(material: Uint8Array, options?: DeriveOptions): Promise<CryptoKey>;
/** The raw bytes {@link deriveKey} would derive (for test vectors and other SDKs' checks). */
export declare function deriveKeyBytes(material: Uint8Array, options?: DeriveOptions): Promise<Uint8Array>;
/** The key a sender encrypts with now, and its index. */
export interface CurrentKey {
    /** The index written in every frame's trailer. */
    index: number;
    /** The key. */
    key: CryptoKey;
}
/**
 * Keys by index. Receivers decrypt with whichever key a frame names; senders encrypt with the
 * current one. Not shared between participants: each holds its own ring, filled by the
 * platform's key exchange.
 */
export declare class KeyRing {
    #private;
    /**
     * Puts `key` at `index` (replacing what was there). The first key set becomes current;
     * later ones become current only with `makeCurrent` (a sender switches once every receiver
     * has the new key).
     */
    setKey(index: number, key: CryptoKey, makeCurrent?: boolean): void;
    /** {@link importRawKey}, then {@link KeyRing.setKey}. */
    setRawKey(index: number, raw: Uint8Array, makeCurrent?: boolean): Promise<void>;
    /** {@link deriveKey}, then {@link KeyRing.setKey}. */
    setDerivedKey(index: number, material: Uint8Array, options?: DeriveOptions, makeCurrent?: boolean): Promise<void>;
    /** Makes the key at `index` the one senders use. Throws if there is none. */
    setCurrent(index: number): void;
    /**
     * Forgets the key at `index`: frames under it no longer decrypt. Removing the current key
     * leaves none current (a sender then encrypts nothing: `no_key`) until one is set.
     */
    removeKey(index: number): boolean;
    /** The key at `index`, if any. */
    get(index: number): CryptoKey | undefined;
    /** The key senders use now (`undefined` until one is set). */
    get current(): CurrentKey | undefined;
    /** Indexes holding a key, ascending. */
    get indexes(): number[];
}
