/**
 * The dedicated worker behind `RTCRtpScriptTransform` (docs/e2ee.md): the client starts one
 * per session as a module worker (`new Worker(new URL('./e2ee/worker.js', import.meta.url),
 * { type: 'module' })`, served by the proxy at `/sdk/e2ee/worker.js`) and gives every sender
 * and receiver of the peer connection a transform on it once it said `{ type: 'ready' }`.
 * Keys come as {@link KeyMessage}s; the counters go back to the page
 * (`{ type: 'stats', stats }`) at most twice a second when they changed.
 *
 * The worker globals are typed here by hand (the SDK compiles against the DOM library, which
 * does not have them).
 */
import { E2eeCryptor } from './cryptor.js';
/** How often changed counters go to the page. */
const STATS_MS = 500;
const scope = globalThis;
const cryptor = new E2eeCryptor();
let reported = -1;
scope.onmessage = (event) => {
    void cryptor.handle(event.data);
};
scope.onrtctransform = (event) => {
    const t = event.transformer;
    void cryptor.pipe(t.readable, t.writable, t.options);
};
// Transforms are given to this worker only once it runs: Firefox 140 ESR, handed an
// RTCRtpScriptTransform while the module was still loading, at times never settled getStats
// again and sent nothing.
scope.postMessage({ type: 'ready' });
scope.setInterval(() => {
    if (cryptor.version === reported)
        return;
    reported = cryptor.version;
    scope.postMessage({ type: 'stats', stats: cryptor.stats });
}, STATS_MS);
