import type { ClientState } from './events.js';
/**
 * What a close code calls for, from the "retry?" column of docs/protocol.md section 6:
 * `closed` (a normal end), `resume` (only the signaling connection was lost: take the session
 * over with `join.resume`, section 5c), `reconnect` (a new session at once, with backoff),
 * `back_off` (reconnect, but start the backoff higher: the proxy asked to slow down or a
 * dependency is temporarily out), `give_up` (retrying cannot help, or a person must decide).
 */
export type ClosePolicy = 'closed' | 'resume' | 'reconnect' | 'back_off' | 'give_up';
/** WebSocket's code for a connection that dropped without a close frame. */
export declare const ABNORMAL_CLOSURE = 1006;
/** The policy of a close code; every code not listed (the token codes, refusals by a
 * moderator or the room's policy, client bugs, unknown codes) gives up. */
export declare function closePolicy(code: number): ClosePolicy;
export interface ReconnectOptions {
    maxAttempts: number;
    baseDelayMs: number;
    maxDelayMs: number;
}
export declare const DEFAULT_RECONNECT: ReconnectOptions;
/** First delay before resuming (jittered): the media is still flowing, so be quick. */
export declare const RESUME_DELAY_MS = 150;
/** Seconds of token validity a reconnect needs, else it asks for a new token (or gives up). */
export declare const TOKEN_MARGIN_S = 5;
/** What to do after the signaling connection closed (or the client ended a session). */
export type CloseDecision = 
/** Stop: state `closed`, event `closed`. */
{
    action: 'closed';
}
/** Keep the peer connection, open a new socket after `delayMs` with `join.resume`. */
 | {
    action: 'resume';
    delayMs: number;
    attempt: number;
}
/** Tear the session down, open a new socket after `delayMs` for a new session. */
 | {
    action: 'reconnect';
    delayMs: number;
    attempt: number;
}
/** Tear down and stop: state `error`, the error is fatal. */
 | {
    action: 'give_up';
};
/** Facts about the session at the moment of a close, which only the browser side knows. */
export interface CloseContext {
    /** The application called `leave()`. */
    leaving: boolean;
    /** The session can be taken over: it had a `resume_token`, a media server, and its peer
     * connection is neither failed nor closed. */
    resumable: boolean;
}
/**
 * The connection's lifecycle: signaling state, reconnect attempts and backoff. One per
 * client; `random` is injectable for deterministic tests (jitter).
 */
export declare class Connection {
    private readonly options;
    private readonly random;
    state: ClientState;
    /** Reconnects since the last successful join. */
    attempt: number;
    /** Successful joins so far (1 + reconnects; a resume is not a join). */
    joins: number;
    constructor(options?: ReconnectOptions, random?: () => number);
    /** A socket is being opened: the first one connects, any later one reconnects. */
    opening(): void;
    /** The room's policy holds the session (section 5b): no media, keep pinging; `joined`
     * follows once it is let in, or a close (4014-4017) if it is not. */
    waiting(): void;
    /** `joined` arrived: resumed or new, the backoff starts over. */
    joined(resumed: boolean): void;
    /** The application left, or the proxy ended the session normally. */
    ended(): void;
    /** The client gave up (a fatal error). */
    failed(): void;
    /** The socket closed with `code`: what follows. */
    closed(code: number, context: CloseContext): CloseDecision;
    /**
     * The client ends the session itself (a peer connection step hung, no answer came, the
     * media connection failed): reconnect as after a dropped connection, but never resume (the
     * peer connection is what failed).
     */
    restarted(): CloseDecision;
    /** Exponential from `base` per attempt, capped, with ±25 % jitter (rounded to ms). */
    private backoff;
    private jitter;
}
/**
 * Whether a reconnect at `nowMs` must first get a new token: the current one (valid until
 * `expiresAtS`, Unix seconds) has less than `TOKEN_MARGIN_S` left. Before any join the
 * expiry is unknown (`undefined`): the application's token is used as given.
 */
export declare function needsNewToken(expiresAtS: number | undefined, nowMs: number): boolean;
