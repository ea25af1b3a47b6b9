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

import type { E2eeStats, KeyMessage, TransformOptions } from './cryptor.js';
import { E2eeCryptor, emptyStats } from './cryptor.js';
import type { DeriveOptions } from './keys.js';
import { deriveKeyBytes, isKeyIndex, KEY_SLOTS } from './keys.js';

/** Which API transforms frames: see the module doc; `none` when the browser has neither. */
export type E2eeApi = 'script' | 'streams' | 'none';

/** The API to use: `auto` takes `script` when there, else `streams`. */
export function chooseApi(
  has: { scriptTransform: boolean; encodedStreams: boolean },
  wanted: 'auto' | 'script' | 'streams' = 'auto',
): E2eeApi {
  if (wanted !== 'streams' && has.scriptTransform) return 'script';
  if (wanted !== 'script' && has.encodedStreams) return 'streams';
  return 'none';
}

/** What the browser has. */
export function browserApis(): { scriptTransform: boolean; encodedStreams: boolean } {
  return {
    scriptTransform: typeof RTCRtpScriptTransform !== 'undefined',
    encodedStreams: typeof RTCRtpSender !== 'undefined' && 'createEncodedStreams' in RTCRtpSender.prototype,
  };
}

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
export class KeyState {
  readonly #indexes = new Set<number>();
  #current: number | undefined;

  /** Records a key set at `index`. */
  set(index: number, current: boolean): void {
    this.#indexes.add(index);
    if (current || this.#current === undefined) this.#current = index;
  }

  /** Records a switch to `index`; throws a `RangeError` if no key is there. */
  use(index: number): void {
    if (!this.#indexes.has(index)) throw new RangeError(`no end-to-end encryption key at index ${index}`);
    this.#current = index;
  }

  /** Records a removal; whether there was a key. */
  remove(index: number): boolean {
    if (index === this.#current) this.#current = undefined;
    return this.#indexes.delete(index);
  }

  /** The index senders encrypt with, if any. */
  get current(): number | undefined {
    return this.#current;
  }

  /** Indexes holding a key, ascending. */
  get indexes(): number[] {
    return [...this.#indexes].sort((a, b) => a - b);
  }
}

function checkIndex(index: number): void {
  if (!isKeyIndex(index)) throw new RangeError(`key index must be an integer 0-${KEY_SLOTS - 1}, got ${index}`);
}

/** Raw bytes of a frame key from what the application gave. */
export async function keyBytes(key: Uint8Array | string, derive: SetKeyOptions['derive']): Promise<Uint8Array> {
  const bytes = typeof key === 'string' ? new TextEncoder().encode(key) : key;
  if (!derive) {
    if (typeof key === 'string') throw new TypeError('a raw end-to-end encryption key is bytes; give key material as a string only with `derive`');
    if (bytes.length !== 16 && bytes.length !== 32) throw new RangeError(`a frame key is 16 or 32 bytes, got ${bytes.length}`);
    return new Uint8Array(bytes);
  }
  if (bytes.length < 16) throw new RangeError(`key material must be at least 16 bytes, got ${bytes.length}`);
  return deriveKeyBytes(bytes, derive === true ? {} : derive);
}

/** The legacy API's method (Chromium), absent from the DOM typings. */
interface EncodedStreams {
  createEncodedStreams(): { readable: ReadableStream; writable: WritableStream };
}

/** The page's side of end-to-end encryption for one client (all its sessions). */
export class E2ee {
  readonly keys = new KeyState();
  readonly api: E2eeApi;
  readonly #workerUrl: string | URL;
  #worker: Worker | null = null;
  /** Settles when the worker said it runs (or failed to load). */
  #started: Promise<void> = Promise.resolve();
  #running = false;
  #local: E2eeCryptor | null = null;
  #workerStats: E2eeStats = emptyStats();
  readonly #attached = new WeakSet<RTCRtpSender | RTCRtpReceiver>();
  /** Key operations run in order (deriving is async). */
  #ops: Promise<unknown> = Promise.resolve();

  constructor(options: E2eeOptions, defaultWorkerUrl: URL) {
    this.api = chooseApi(browserApis(), options.api ?? 'auto');
    this.#workerUrl = options.workerUrl ?? defaultWorkerUrl;
  }

  /** The peer connection configuration this API needs (the legacy API's flag). */
  get peerConnectionConfig(): Record<string, unknown> {
    return this.api === 'streams' ? { encodedInsertableStreams: true } : {};
  }

  /** Whether senders may be given tracks: a current key, and a way to encrypt. */
  get canSend(): boolean {
    return this.api !== 'none' && this.keys.current !== undefined;
  }

  /** The counters (a copy). */
  get stats(): E2eeStats {
    return structuredClone(this.#local ? this.#local.stats : this.#workerStats);
  }

  #post(message: KeyMessage): void {
    if (this.api === 'script') this.#ensureWorker().postMessage(message);
    else if (this.api === 'streams') void this.#ensureLocal().handle(message);
  }

  #ensureWorker(): Worker {
    if (!this.#worker) {
      const worker = new Worker(this.#workerUrl, { type: 'module', name: 'rtcd-e2ee' });
      let started!: () => void;
      let failed!: (cause: Error) => void;
      this.#started = new Promise<void>((resolve, reject) => { started = resolve; failed = reject; });
      this.#started.catch(() => {});
      worker.addEventListener('message', (event: MessageEvent<{ type: string; stats?: E2eeStats }>) => {
        if (!event.data) return;
        if (event.data.type === 'ready') {
          this.#running = true;
          started();
        } else if (event.data.type === 'stats' && event.data.stats) {
          this.#workerStats = event.data.stats;
        }
      });
      worker.addEventListener('error', (event) => {
        console.warn(`rtcd: the end-to-end encryption worker failed: ${event.message}`);
        failed(new Error(`the end-to-end encryption worker failed: ${event.message}`));
      });
      this.#worker = worker;
    }
    return this.#worker;
  }

  /**
   * Whether transforms can be given now: always, except with `script` before the worker ran
   * (see {@link ready}).
   */
  get isReady(): boolean {
    return this.api !== 'script' || this.#running;
  }

  /**
   * Resolves once transforms can be given (starting the worker if needed); rejects if the
   * worker fails to load. The client waits for it before its first offer and before sending
   * in an encrypted room: Firefox 140 ESR, given an RTCRtpScriptTransform on a worker whose
   * module was still loading, at times never settled getStats again and sent nothing.
   */
  ready(): Promise<void> {
    if (this.api !== 'script') return Promise.resolve();
    this.#ensureWorker();
    return this.#started;
  }

  #ensureLocal(): E2eeCryptor {
    if (!this.#local) this.#local = new E2eeCryptor();
    return this.#local;
  }

  /** Sets a key (see {@link SetKeyOptions}); resolves once it is on its way to the frames. */
  setKey(index: number, key: Uint8Array | string, options: SetKeyOptions = {}): Promise<void> {
    checkIndex(index);
    const op = this.#ops.then(async () => {
      const raw = await keyBytes(key, options.derive);
      const current = options.current === true;
      this.keys.set(index, current);
      this.#post({ type: 'setKey', index, raw, current });
    });
    this.#ops = op.catch(() => {});
    return op;
  }

  /** Makes the key at `index` current (rotation step 2). */
  useKey(index: number): Promise<void> {
    checkIndex(index);
    const op = this.#ops.then(() => {
      this.keys.use(index);
      this.#post({ type: 'useKey', index });
    });
    this.#ops = op.catch(() => {});
    return op;
  }

  /** Forgets the key at `index` (rotation step 3). */
  removeKey(index: number): Promise<boolean> {
    checkIndex(index);
    const op = this.#ops.then(() => {
      const had = this.keys.remove(index);
      this.#post({ type: 'removeKey', index });
      return had;
    });
    this.#ops = op.catch(() => {});
    return op;
  }

  /** Gives a sender or receiver its transform (once; later calls do nothing). False when the
   * browser cannot transform frames. */
  attach(endpoint: RTCRtpSender | RTCRtpReceiver, options: TransformOptions): boolean {
    if (this.#attached.has(endpoint)) return true;
    if (this.api === 'script') {
      endpoint.transform = new RTCRtpScriptTransform(this.#ensureWorker(), options);
    } else if (this.api === 'streams') {
      const streams = (endpoint as unknown as EncodedStreams).createEncodedStreams();
      void this.#ensureLocal().pipe(streams.readable, streams.writable, options);
    } else {
      return false;
    }
    this.#attached.add(endpoint);
    return true;
  }

  /** Stops the worker (the client is done). */
  close(): void {
    this.#worker?.terminate();
    this.#worker = null;
    this.#running = false;
  }
}
