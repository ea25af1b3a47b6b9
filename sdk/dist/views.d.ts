/**
 * Adaptive stream's decisions (protocol `track_views`): from how each element shows the remote
 * video tracks, which views to send. A plain class fed with measurements, so it is tested
 * without a browser; `RtcdClient` finds the elements, measures them and sends what this says.
 */
import type { TrackView } from './protocol.js';
/** The most views per `track_views` message (the protocol's limit). */
export declare const MAX_TRACK_VIEWS = 64;
/** A remote video track the media server sends this client, by the section it arrives on. */
export interface ViewedTrack<T> {
    mid: string;
    trackId: string;
    track: T;
}
/** One element showing remote media, as measured: the tracks it holds, whether it intersects
 * the viewport, and the size it is drawn at (device pixels; 0 when not laid out). */
export interface ElementView<T> {
    tracks: readonly T[];
    intersecting: boolean;
    width: number;
    height: number;
}
/** What was last sent per section, so that only changes go out. */
export declare class TrackViews {
    private readonly sent;
    /** Everything is sent afresh (a new or resumed session knows no views). */
    reset(): void;
    /** The track of `mid` ended: a later track on that section starts unknown. */
    forget(mid: string): void;
    /**
     * The views that changed since the last call. A track is visible when an element showing it
     * intersects the viewport and has a size, at the largest size any such element draws it. A
     * track no element shows any more is sent hidden; one no element ever showed is left alone
     * (the media server sends it at any size).
     */
    changed<T>(tracks: Iterable<ViewedTrack<T>>, elements: readonly ElementView<T>[]): TrackView[];
}
/** `views` in messages of at most [`MAX_TRACK_VIEWS`] each. */
export declare function viewMessages(views: readonly TrackView[]): TrackView[][];
