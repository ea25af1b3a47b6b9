// Offer / answer bookkeeping of docs/protocol.md section 4a, without an RTCPeerConnection:
// the client makes every offer and the media server only answers, so the state is small
// (an offer wanted, an offer in flight and its deadline, the receiving sections asked for).
// The browser client asks it what to do at each step and performs the step on its peer
// connection.
import { ErrorCode } from './protocol.js';
/** Media server errors that refuse the offer in flight (its SDP, or a limit it hit). */
const REFUSES_OFFER = new Set([ErrorCode.bad_sdp, ErrorCode.bad_track, ErrorCode.media_limit]);
/**
 * One peer connection's negotiation. Requests for an offer (`want`) while an offer awaits
 * its answer collapse into one follow-up offer, made once the answer (or a rollback) settles.
 */
export class Negotiation {
    answerTimeoutMs;
    /** An offer should be made once the peer connection is stable with no answer pending. */
    wanted = false;
    /** An offer was sent and its answer has not been applied yet. */
    inFlight = false;
    /** When the offer in flight is given up on (ms, the clock the caller passes). */
    deadline = null;
    /** Receiving sections the media server asked for (`negotiation_needed`), at least. */
    need = { audio: 0, video: 0 };
    /** @param answerTimeoutMs how long an offer may wait for its answer */
    constructor(answerTimeoutMs) {
        this.answerTimeoutMs = answerTimeoutMs;
    }
    /** An offer was sent and awaits its answer. */
    get awaitingAnswer() {
        return this.inFlight;
    }
    /** When the offer in flight times out, if one is in flight. */
    get answerDeadline() {
        return this.deadline;
    }
    /** Something changed that the media server must hear about in an offer. */
    want() {
        this.wanted = true;
    }
    /** `negotiation_needed {audio, video}`: the latest counts win; an offer follows. */
    negotiationNeeded(counts) {
        this.need = { audio: Math.max(0, counts.audio), video: Math.max(0, counts.video) };
        this.want();
    }
    /** The receiving sections a new peer connection starts with (a subscriber receives one
     * audio section from its first offer, so its transport connects before anyone speaks). */
    startWith(counts) {
        this.need = { ...counts };
    }
    /**
     * Whether to make an offer now, given whether the peer connection's signaling state is
     * `stable`. Consumes the request: the caller then creates and sends it and calls `offerSent`.
     */
    takeOffer(stable) {
        if (!this.wanted || this.inFlight || !stable)
            return false;
        this.wanted = false;
        return true;
    }
    /** How many receiving sections of each kind to add, given how many there are. */
    receiversToAdd(have) {
        return {
            audio: Math.max(0, this.need.audio - have.audio),
            video: Math.max(0, this.need.video - have.video),
        };
    }
    /** The offer went out at `now`: its answer is due by `now + answerTimeoutMs`. */
    offerSent(now) {
        this.inFlight = true;
        this.deadline = now + this.answerTimeoutMs;
    }
    /** An `answer` arrived; `haveLocalOffer`: the peer connection holds our offer. */
    answerReceived(haveLocalOffer) {
        if (!haveLocalOffer) {
            this.want();
            return 'reoffer';
        }
        this.deadline = null;
        return 'apply';
    }
    /** The answer was applied; returns whether a (coalesced) offer is wanted next. */
    answerApplied() {
        this.inFlight = false;
        this.deadline = null;
        return this.wanted;
    }
    /**
     * A proxy `error`: whether it refuses the offer in flight (by the proxy's policy,
     * `request: "offer"`, or by the media server for its SDP or a limit: those carry no
     * `request`), in which case no answer will come and the offer must be rolled back.
     */
    refusesOffer(code, request) {
        return this.inFlight && (request === 'offer' || (request === undefined && REFUSES_OFFER.has(code)));
    }
    /** The offer was taken back (or the peer connection was already stable); returns whether
     * an offer is wanted next. */
    rolledBack() {
        return this.answerApplied();
    }
    /**
     * The session was resumed through a new connection: an offer or its answer may have been
     * lost with the old one. Returns `rollback` when an offer was in flight (take it back,
     * then offer afresh) else `offer`; either way an offer is wanted.
     */
    resumed() {
        this.wanted = true;
        return this.inFlight ? 'rollback' : 'offer';
    }
    /** Whether the offer in flight has had no answer by `now`: the session must restart. */
    answerOverdue(now) {
        return this.inFlight && this.deadline !== null && now >= this.deadline;
    }
}
