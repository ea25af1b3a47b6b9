/**
 * Adaptive stream's decisions (protocol `track_views`): from how each element shows the remote
 * video tracks, which views to send. A plain class fed with measurements, so it is tested
 * without a browser; `RtcdClient` finds the elements, measures them and sends what this says.
 */
/** The most views per `track_views` message (the protocol's limit). */
export const MAX_TRACK_VIEWS = 64;
/** What was last sent per section, so that only changes go out. */
export class TrackViews {
    sent = new Map();
    /** Everything is sent afresh (a new or resumed session knows no views). */
    reset() {
        this.sent.clear();
    }
    /** The track of `mid` ended: a later track on that section starts unknown. */
    forget(mid) {
        this.sent.delete(mid);
    }
    /**
     * The views that changed since the last call. A track is visible when an element showing it
     * intersects the viewport and has a size, at the largest size any such element draws it. A
     * track no element shows any more is sent hidden; one no element ever showed is left alone
     * (the media server sends it at any size).
     */
    changed(tracks, elements) {
        const views = [];
        for (const { mid, trackId, track } of tracks) {
            let shown = false;
            let visible = false;
            let width = 0;
            let height = 0;
            for (const el of elements) {
                if (!el.tracks.includes(track))
                    continue;
                shown = true;
                if (!el.intersecting || el.width === 0 || el.height === 0)
                    continue;
                visible = true;
                width = Math.max(width, el.width);
                height = Math.max(height, el.height);
            }
            if (!shown && !this.sent.has(mid))
                continue;
            const key = `${trackId} ${visible} ${width}x${height}`;
            if (this.sent.get(mid) === key)
                continue;
            this.sent.set(mid, key);
            views.push(visible ? { mid, track_id: trackId, visible, width, height } : { mid, track_id: trackId, visible });
        }
        return views;
    }
}
/** `views` in messages of at most [`MAX_TRACK_VIEWS`] each. */
export function viewMessages(views) {
    const out = [];
    for (let i = 0; i < views.length; i += MAX_TRACK_VIEWS)
        out.push(views.slice(i, i + MAX_TRACK_VIEWS));
    return out;
}
