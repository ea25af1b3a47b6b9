// Media devices (docs/web-client.md, "Devices"): the lists of cameras, microphones and
// speakers, what changed between two lists, and which device to fall back to when the one in
// use goes away. The decisions are plain functions of the lists (unit-tested in Node); the
// browser calls (enumerateDevices, getUserMedia) are the few functions at the end.
/** The device kind a source captures from. */
export function kindOf(source) {
    return source === 'camera' ? 'videoinput' : 'audioinput';
}
/** The source a captured track of `kind` is published as (`audio`: microphone). */
export function deviceSource(source) {
    return source === 'camera' || source === 'microphone' ? source : null;
}
/** Groups `devices` by kind (other kinds are left out), in the browser's order. */
export function byKind(devices) {
    const lists = { audioinput: [], videoinput: [], audiooutput: [] };
    for (const d of devices) {
        if (d.kind === 'audioinput' || d.kind === 'videoinput' || d.kind === 'audiooutput') {
            lists[d.kind].push({ deviceId: d.deviceId, groupId: d.groupId, kind: d.kind, label: d.label });
        }
    }
    return lists;
}
/** What changed from `before` to `after` (by kind and id): for the event `deviceschanged`. */
export function deviceChanges(before, after) {
    const key = (d) => `${d.kind}\u0000${d.deviceId}`;
    const all = (l) => [...l.audioinput, ...l.videoinput, ...l.audiooutput];
    const had = new Set(all(before).map(key));
    const has = new Set(all(after).map(key));
    return {
        added: all(after).filter((d) => !had.has(key(d))),
        removed: all(before).filter((d) => !has.has(key(d))),
    };
}
/**
 * The device to capture `source` from when the track of the one in use (`lost`, its id, or
 * null when not known) ended (unplugged, taken away): the browser's default (id `default`,
 * Chromium: an alias that follows the system's default device, so it stays valid after the
 * device behind it went) when listed, else the first listed device of that kind other than
 * the lost one (the browser lists its default first), else null (none left: the source stops).
 */
export function fallbackDevice(source, devices, lost) {
    const listed = devices[kindOf(source)].filter((d) => d.deviceId !== '');
    const preferred = listed.find((d) => d.deviceId === 'default') ?? listed.find((d) => d.deviceId !== lost);
    return preferred ? preferred.deviceId : null;
}
/** The device id a live track captures from (its settings), or null. */
export function trackDeviceId(track) {
    const settings = typeof track.getSettings === 'function' ? track.getSettings() : {};
    return settings.deviceId ?? null;
}
/** The browser's devices now (empty lists without `mediaDevices`, e.g. an insecure page). */
export async function listDevices() {
    if (typeof navigator === 'undefined' || !navigator.mediaDevices?.enumerateDevices)
        return byKind([]);
    return byKind(await navigator.mediaDevices.enumerateDevices());
}
/**
 * Opens the camera and / or microphone without a session (a preview before joining):
 * `client.publishTracks(stream)` later publishes exactly these tracks, without opening the
 * devices again. A string picks a device by id (`{deviceId: {exact: id}}`).
 */
export async function openLocalStream(what = { audio: true, video: true }) {
    return navigator.mediaDevices.getUserMedia({ audio: constraintsFor(what.audio), video: constraintsFor(what.video) });
}
/** getUserMedia constraints for one kind: a device id, constraints, or on / off. */
export function constraintsFor(c) {
    if (typeof c === 'string')
        return { deviceId: { exact: c } };
    return c ?? false;
}
/** Whether this browser can choose where media elements play (`HTMLMediaElement.setSinkId`:
 * Chromium; Firefox from 116 — ESR 115 lacks it). */
export function audioOutputSupported() {
    return typeof HTMLMediaElement !== 'undefined' && 'setSinkId' in HTMLMediaElement.prototype;
}
