export type MediaKind = 'audio' | 'video';
/** Receiving sections per kind. */
export type SectionCounts = Record<MediaKind, number>;
/** What to do with an `answer`. */
export type AnswerAction = 
/** Apply it (`setRemoteDescription`), then call `answerApplied`. */
'apply'
/** No offer of ours awaits it (it arrived after a rollback): ignore it and offer again so
 * both sides agree on the sections. */
 | 'reoffer';
/**
 * One peer connection's negotiation. Requests for an offer (`want`) while an offer awaits
 * its answer collapse into one follow-up offer, made once the answer (or a rollback) settles.
 */
export declare class Negotiation {
    private readonly answerTimeoutMs;
    /** An offer should be made once the peer connection is stable with no answer pending. */
    private wanted;
    /** An offer was sent and its answer has not been applied yet. */
    private inFlight;
    /** When the offer in flight is given up on (ms, the clock the caller passes). */
    private deadline;
    /** Receiving sections the media server asked for (`negotiation_needed`), at least. */
    private need;
    /** @param answerTimeoutMs how long an offer may wait for its answer */
    constructor(answerTimeoutMs: number);
    /** An offer was sent and awaits its answer. */
    get awaitingAnswer(): boolean;
    /** When the offer in flight times out, if one is in flight. */
    get answerDeadline(): number | null;
    /** Something changed that the media server must hear about in an offer. */
    want(): void;
    /** `negotiation_needed {audio, video}`: the latest counts win; an offer follows. */
    negotiationNeeded(counts: SectionCounts): void;
    /** The receiving sections a new peer connection starts with (a subscriber receives one
     * audio section from its first offer, so its transport connects before anyone speaks). */
    startWith(counts: SectionCounts): void;
    /**
     * Whether to make an offer now, given whether the peer connection's signaling state is
     * `stable`. Consumes the request: the caller then creates and sends it and calls `offerSent`.
     */
    takeOffer(stable: boolean): boolean;
    /** How many receiving sections of each kind to add, given how many there are. */
    receiversToAdd(have: SectionCounts): SectionCounts;
    /** The offer went out at `now`: its answer is due by `now + answerTimeoutMs`. */
    offerSent(now: number): void;
    /** An `answer` arrived; `haveLocalOffer`: the peer connection holds our offer. */
    answerReceived(haveLocalOffer: boolean): AnswerAction;
    /** The answer was applied; returns whether a (coalesced) offer is wanted next. */
    answerApplied(): boolean;
    /**
     * A proxy `error`: whether it refuses the offer in flight (by the proxy's policy,
     * `request: "offer"`, or by the media server for its SDP or a limit: those carry no
     * `request`), in which case no answer will come and the offer must be rolled back.
     */
    refusesOffer(code: string, request: string | undefined): boolean;
    /** The offer was taken back (or the peer connection was already stable); returns whether
     * an offer is wanted next. */
    rolledBack(): boolean;
    /**
     * The session was resumed through a new connection: an offer or its answer may have been
     * lost with the old one. Returns `rollback` when an offer was in flight (take it back,
     * then offer afresh) else `offer`; either way an offer is wanted.
     */
    resumed(): 'rollback' | 'offer';
    /** Whether the offer in flight has had no answer by `now`: the session must restart. */
    answerOverdue(now: number): boolean;
}
