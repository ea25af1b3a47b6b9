import type { MediaState, RemoteMediaState } from './events.js';
/** One received section's counters in a getStats reading (`inbound-rtp`). */
export interface InboundReading {
    mid: string;
    video: boolean;
    packetsReceived: number;
    packetsLost: number;
    framesDecoded: number;
}
/** A received track as health sees it. */
export interface WatchedTrack {
    mid: string;
    identity: string;
    /** Muted by its publisher, or paused by the media server: nothing is expected from it, and
     * that is nobody's connection's fault. */
    excused: boolean;
}
/** The peer connection's side of the judgement. */
export interface TransportState {
    connectionState: RTCPeerConnectionState;
    /** No media section at all, negotiated (nothing to send or receive: nothing to connect). */
    nothingToConnect: boolean;
}
/** The counters of every received section of one peer connection. */
export declare class MediaHealth {
    private readonly flows;
    /** When the inbound counters were last read: health is judged as of then. A stall is
     * time without progress between readings; judging it at an event between readings (a
     * participant joining) against the clock called a flowing track stalled whenever the
     * browser was slow to give its statistics (a busy Firefox at a renegotiation). */
    private readAt;
    /** Outbound loss reported by the media server (RTCP), over the last interval. */
    private outboundLoss;
    /** A track started arriving on `mid` at `now`: it gets the start grace period. */
    watch(mid: string, now: number): void;
    forget(mid: string): void;
    clear(): void;
    /** The track on `mid` restarts at `now` (unmuted: the stall grace period again; resumed
     * after a pause, `fromKeyframe`: the start grace period, it begins at a keyframe). */
    restarted(mid: string, now: number, fromKeyframe: boolean): void;
    /** One getStats reading at `now`: the inbound sections, and the fraction lost of each
     * outbound stream the media server reported. */
    read(inbound: InboundReading[], outboundLoss: number[], now: number): void;
    /**
     * This client's media state and each listed participant's, as of the last reading.
     * `participants`: every remote identity (a participant with nothing expected follows this
     * client's own state).
     */
    judge(transport: TransportState, tracks: WatchedTrack[], participants: Iterable<string>): {
        state: MediaState;
        participants: Map<string, RemoteMediaState>;
    };
}
