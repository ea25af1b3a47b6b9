// The signaling connection's decisions, without a socket or a timer: what a close code means
// (docs/protocol.md section 6), whether to resume, reconnect or give up, how long to wait,
// whether a reconnect needs a fresh token, and the signaling state that follows. The browser
// client (client.ts) feeds it closes, joins and waits, and carries out what it returns.
import { CloseCode } from './protocol.js';
/** WebSocket's code for a connection that dropped without a close frame. */
export const ABNORMAL_CLOSURE = 1006;
const POLICIES = new Map([
    [CloseCode.normal, 'closed'],
    [CloseCode.going_away, 'resume'],
    [ABNORMAL_CLOSURE, 'resume'],
    [CloseCode.idle_timeout, 'resume'],
    [CloseCode.join_timeout, 'reconnect'],
    [CloseCode.slow_client, 'reconnect'],
    [CloseCode.media_server_lost, 'reconnect'],
    [CloseCode.media_connection_failed, 'reconnect'],
    [CloseCode.rate_limited, 'back_off'],
    [CloseCode.too_many_connections, 'back_off'],
    [CloseCode.too_many_auth_failures, 'back_off'],
    [CloseCode.keys_unavailable, 'back_off'],
    [CloseCode.affiliation_unavailable, 'back_off'],
]);
/** The policy of a close code; every code not listed (the token codes, refusals by a
 * moderator or the room's policy, client bugs, unknown codes) gives up. */
export function closePolicy(code) {
    return POLICIES.get(code) ?? 'give_up';
}
export const DEFAULT_RECONNECT = Object.freeze({ maxAttempts: 8, baseDelayMs: 500, maxDelayMs: 15000 });
/** First delay before resuming (jittered): the media is still flowing, so be quick. */
export const RESUME_DELAY_MS = 150;
/** `back_off` starts the backoff this many times higher. */
const SLOW_DOWN_FACTOR = 8;
/** Seconds of token validity a reconnect needs, else it asks for a new token (or gives up). */
export const TOKEN_MARGIN_S = 5;
/**
 * The connection's lifecycle: signaling state, reconnect attempts and backoff. One per
 * client; `random` is injectable for deterministic tests (jitter).
 */
export class Connection {
    options;
    random;
    state = 'idle';
    /** Reconnects since the last successful join. */
    attempt = 0;
    /** Successful joins so far (1 + reconnects; a resume is not a join). */
    joins = 0;
    constructor(options = DEFAULT_RECONNECT, random = Math.random) {
        this.options = options;
        this.random = random;
    }
    /** A socket is being opened: the first one connects, any later one reconnects. */
    opening() {
        this.state = this.joins === 0 ? 'connecting' : 'reconnecting';
    }
    /** The room's policy holds the session (section 5b): no media, keep pinging; `joined`
     * follows once it is let in, or a close (4014-4017) if it is not. */
    waiting() {
        this.state = 'waiting';
    }
    /** `joined` arrived: resumed or new, the backoff starts over. */
    joined(resumed) {
        this.attempt = 0;
        if (!resumed)
            this.joins += 1;
        this.state = 'connected';
    }
    /** The application left, or the proxy ended the session normally. */
    ended() {
        this.state = 'closed';
    }
    /** The client gave up (a fatal error). */
    failed() {
        this.state = 'error';
    }
    /** The socket closed with `code`: what follows. */
    closed(code, context) {
        const policy = closePolicy(code);
        if (context.leaving || policy === 'closed') {
            this.ended();
            return { action: 'closed' };
        }
        if (policy === 'give_up' || this.attempt >= this.options.maxAttempts) {
            this.failed();
            return { action: 'give_up' };
        }
        this.state = 'reconnecting';
        if (policy === 'resume' && context.resumable) {
            const delayMs = this.attempt === 0 ? this.jitter(RESUME_DELAY_MS) : this.backoff(this.options.baseDelayMs);
            this.attempt += 1;
            return { action: 'resume', delayMs, attempt: this.attempt };
        }
        const base = policy === 'back_off' ? this.options.baseDelayMs * SLOW_DOWN_FACTOR : this.options.baseDelayMs;
        const delayMs = this.backoff(base);
        this.attempt += 1;
        return { action: 'reconnect', delayMs, attempt: this.attempt };
    }
    /**
     * The client ends the session itself (a peer connection step hung, no answer came, the
     * media connection failed): reconnect as after a dropped connection, but never resume (the
     * peer connection is what failed).
     */
    restarted() {
        return this.closed(ABNORMAL_CLOSURE, { leaving: false, resumable: false });
    }
    /** Exponential from `base` per attempt, capped, with ±25 % jitter (rounded to ms). */
    backoff(base) {
        return this.jitter(Math.min(this.options.maxDelayMs, base * 2 ** this.attempt));
    }
    jitter(ms) {
        return Math.round(ms * (0.75 + this.random() * 0.5));
    }
}
/**
 * Whether a reconnect at `nowMs` must first get a new token: the current one (valid until
 * `expiresAtS`, Unix seconds) has less than `TOKEN_MARGIN_S` left. Before any join the
 * expiry is unknown (`undefined`): the application's token is used as given.
 */
export function needsNewToken(expiresAtS, nowMs) {
    return expiresAtS !== undefined && expiresAtS - TOKEN_MARGIN_S <= nowMs / 1000;
}
