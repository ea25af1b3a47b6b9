// The client's events: one map from event name to its `detail`, and an EventTarget whose
// `addEventListener` / `on` know it. The events stay plain `CustomEvent`s with the names and
// `detail` shapes of docs/web-client.md, so untyped JavaScript code keeps working unchanged.
/**
 * An EventTarget typed by `ClientEventMap`: `addEventListener('track', (e) => e.detail.mid)`
 * type-checks, and `on(type, detail => ...)` hands the detail over directly (and returns the
 * function that removes it). Other event names still work, untyped, as on any EventTarget.
 */
export class TypedEventTarget extends EventTarget {
    addEventListener(type, listener, options) {
        super.addEventListener(type, listener, options);
    }
    removeEventListener(type, listener, options) {
        super.removeEventListener(type, listener, options);
    }
    /** Calls `handler` with each `type` event's detail; returns what removes it. */
    on(type, handler) {
        const listener = (event) => handler(event.detail);
        super.addEventListener(type, listener);
        return () => super.removeEventListener(type, listener);
    }
    /** Dispatches a `CustomEvent` of `type` with `detail`. */
    emit(type, detail) {
        this.dispatchEvent(new CustomEvent(type, { detail }));
    }
}
