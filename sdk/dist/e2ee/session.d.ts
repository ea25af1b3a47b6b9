/**
 * End-to-end encryption on the page (docs/e2ee.md, docs/web-client.md "End-to-end
 * encryption"): the keys the application sets, which browser API transforms the frames, and
 * the transforms given to every sender and receiver of an encrypted room.
 *
 * Two APIs, the same frame code (`cryptor.ts`):
 * * `script`: `RTCRtpScriptTransform` (the standard: Firefox, Safari, recent Chromium), with
 *   the frames in a dedicated module worker (`worker.ts`);
 * * `streams`: Chromium's older `createEncodedStreams()` (the peer connection needs
 *   `encodedInsertableStreams: true`), with the frames on the page's thread.
 *
 * Keys go to the frames as raw bytes (a derived key is derived here first) and are not kept
 * on the page: the ring lives in the worker (or the page's cryptor) only.
 */
import type { E2eeStats, TransformOptions } from './cryptor.js';
import type { DeriveOptions } from './keys.js';
/** Which API transforms frames: see the module doc; `none` when the browser has neither. */
export type E2eeApi = 'script' | 'streams' | 'none';
/** The API to use: `auto` takes `script` when there, else `streams`. */
export declare function chooseApi(has: {
    scriptTransform: boolean;
    encodedStreams: boolean;
}, wanted?: 'auto' | 'script' | 'streams'): E2eeApi;
/** What the browser has. */
export declare function browserApis(): {
    scriptTransform: boolean;
    encodedStreams: boolean;
};
/** How {@link E2eeKeyInit.key} becomes a frame key. */
export interface SetKeyOptions {
    /** Derive the key from key material with HKDF (docs/e2ee.md "Derived keys"): `true` for
     * the default salt and info, or the options. Without it the key is raw: 16 or 32 bytes. */
    derive?: boolean | DeriveOptions;
    /** Make it the key this client encrypts with now. The first key set always becomes
     * current; later ones only with this (or `useE2eeKey`), once every participant has them. */
    current?: boolean;
}
/** A key given at construction (`ClientOptions.e2ee.keys`). */
export interface E2eeKeyInit extends SetKeyOptions {
    /** The key index, 0-255: the byte every frame under this key carries. */
    index: number;
    /** Raw key bytes, or with `derive` key material (bytes, or a string as UTF-8). */
    key: Uint8Array | string;
}
/** `ClientOptions.e2ee`. */
export interface E2eeOptions {
    /** Keys to set before connecting (as `setE2eeKey`, in order). */
    keys?: E2eeKeyInit[];
    /** Where the worker module is (default: `e2ee/worker.js` beside the SDK's `client.js`). */
    workerUrl?: string | URL;
    /** Force an API (tests; a page working around a browser bug). Default `auto`. */
    api?: 'auto' | 'script' | 'streams';
}
/**
 * Which key indexes are set and which is current, as the ring in the worker has them after
 * the same operations (the ring's rules: the first key set becomes current; removing the
 * current one leaves none). Lets the page know without asking the worker whether it may send.
 */
export declare class KeyState {
    #private;
    /** Records a key set at `index`. */
    set(index: number, current: boolean): void;
    /** Records a switch to `index`; throws a `RangeError` if no key is there. */
    use(index: number): void;
    /** Records a removal; whether there was a key. */
    remove(index: number): boolean;
    /** The index senders encrypt with, if any. */
    get current(): number | undefined;
    /** Indexes holding a key, ascending. */
    get indexes(): number[];
}
/** Raw bytes of a frame key from what the application gave. */
export declare function keyBytes(key: Uint8Array | string, derive: SetKeyOptions['derive']): Promise<Uint8Array>;
/** The page's side of end-to-end encryption for one client (all its sessions). */
export declare class E2ee {
    #private;
    readonly keys: KeyState;
    readonly api: E2eeApi;
    constructor(options: E2eeOptions, defaultWorkerUrl: URL);
    /** The peer connection configuration this API needs (the legacy API's flag). */
    get peerConnectionConfig(): Record<string, unknown>;
    /** Whether senders may be given tracks: a current key, and a way to encrypt. */
    get canSend(): boolean;
    /** The counters (a copy). */
    get stats(): E2eeStats;
    /**
     * Whether transforms can be given now: always, except with `script` before the worker ran
     * (see {@link ready}).
     */
    get isReady(): boolean;
    /**
     * Resolves once transforms can be given (starting the worker if needed); rejects if the
     * worker fails to load. The client waits for it before its first offer and before sending
     * in an encrypted room: Firefox 140 ESR, given an RTCRtpScriptTransform on a worker whose
     * module was still loading, at times never settled getStats again and sent nothing.
     */
    ready(): Promise<void>;
    /** Sets a key (see {@link SetKeyOptions}); resolves once it is on its way to the frames. */
    setKey(index: number, key: Uint8Array | string, options?: SetKeyOptions): Promise<void>;
    /** Makes the key at `index` current (rotation step 2). */
    useKey(index: number): Promise<void>;
    /** Forgets the key at `index` (rotation step 3). */
    removeKey(index: number): Promise<boolean>;
    /** Gives a sender or receiver its transform (once; later calls do nothing). False when the
     * browser cannot transform frames. */
    attach(endpoint: RTCRtpSender | RTCRtpReceiver, options: TransformOptions): boolean;
    /** Stops the worker (the client is done). */
    close(): void;
}
