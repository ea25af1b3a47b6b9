/** A participant's connection as the user should see it: `excellent`, `good`, `poor`, or
 * `lost` (nothing of theirs arrived in the last interval although something was expected;
 * for this client: the media server hears nothing from it). */
export type ConnectionQuality = 'excellent' | 'good' | 'poor' | 'lost';
/** The numbers behind a level, over the last stats interval. */
export interface QualityStats {
    /** Fraction of packets lost (0..1). */
    loss: number;
    /** Interarrival jitter, ms (the worst of the streams). */
    jitterMs: number;
    /** Round trip to the media server, ms (this client only; null when unknown). */
    rttMs: number | null;
    /** Video frames decoded per second (remote participants with video; null without). */
    framesPerSecond: number | null;
    /** Packets received in the interval (remote participants), or reported received by the
     * media server (this client); 0 is `lost`. */
    packets: number;
}
/** A better level must hold this long before it is shown (worse levels show at once): a
 * flickering badge is worse than a late one. */
export declare const QUALITY_UPGRADE_MS = 5000;
/** The level of one interval's numbers, without hysteresis. */
export declare function qualityOf(s: QualityStats): ConnectionQuality;
/** One inbound stream's cumulative counters in a getStats reading (`inbound-rtp`). */
export interface InboundCounters {
    /** Who sends it (the identity of the remote track on that section). */
    identity: string;
    /** The section, the key of the stream across readings. */
    mid: string;
    video: boolean;
    packetsReceived: number;
    packetsLost: number;
    /** Seconds (as getStats gives it). */
    jitter: number;
    framesDecoded: number;
}
/** What the media server reports about one of this client's outbound streams
 * (`remote-inbound-rtp`): loss fraction, jitter and round trip in seconds. */
export interface UplinkReport {
    fractionLost: number;
    jitter: number;
    roundTripTime: number | null;
    /** Cumulative packets the media server received (`packetsReceived` is absent in some
     * browsers: null, then the uplink is judged alive). */
    packetsReceived: number | null;
}
/** A level change, for the event `connectionquality`. */
export interface QualityChange {
    /** The participant's identity; this client's own for its uplink. */
    identity: string;
    local: boolean;
    quality: ConnectionQuality;
    previous: ConnectionQuality | null;
    stats: QualityStats;
}
/**
 * Turns getStats readings into per-participant levels, with hysteresis: a worse level is
 * shown at once, a better one once it has held for `QUALITY_UPGRADE_MS`. Participants with no
 * stream received here (a listener, everything muted or paused) have no level: nothing to
 * judge them by; `forget` them.
 */
export declare class QualityMonitor {
    private readonly counters;
    private readonly levels;
    private uplinkPackets;
    private readAt;
    /** The current level of `identity` (null: not judged). */
    level(identity: string): ConnectionQuality | null;
    /** The numbers behind the current level of `identity`. */
    stats(identity: string): QualityStats | null;
    /** Stops judging `identity` (left, or nothing of theirs is expected any more). */
    forget(identity: string): void;
    /** Forgets everything (a new peer connection: its counters start from zero). */
    clear(): void;
    /**
     * One reading at `now`: the inbound streams of the participants expected to send (muted or
     * paused ones left out by the caller), this client's uplink reports, and the selected
     * candidate pair's round trip (s, or null). Returns the levels that changed.
     */
    read(self: string, inbound: InboundCounters[], uplink: UplinkReport[], pairRtt: number | null, now: number): QualityChange[];
    /** Applies the hysteresis to one subject's new numbers; returns the change, if any. */
    judge(identity: string, local: boolean, stats: QualityStats, now: number): QualityChange | null;
}
