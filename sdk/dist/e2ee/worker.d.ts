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
export {};
