import type { TrackSource } from './protocol.js';
/** The kinds of `MediaDeviceInfo.kind`. */
export type DeviceKind = 'audioinput' | 'videoinput' | 'audiooutput';
/** One device (a plain copy of `MediaDeviceInfo`). Labels are empty until the page has
 * been granted camera / microphone access once. */
export interface Device {
    deviceId: string;
    groupId: string;
    kind: DeviceKind;
    label: string;
}
/** The devices by kind (`client.devices`, event `deviceschanged`). */
export interface DeviceLists {
    audioinput: Device[];
    videoinput: Device[];
    audiooutput: Device[];
}
/** A local source captured from a device: the camera or the microphone. */
export type DeviceSource = 'camera' | 'microphone';
/** The device kind a source captures from. */
export declare function kindOf(source: DeviceSource): 'audioinput' | 'videoinput';
/** The source a captured track of `kind` is published as (`audio`: microphone). */
export declare function deviceSource(source: TrackSource): DeviceSource | null;
/** Groups `devices` by kind (other kinds are left out), in the browser's order. */
export declare function byKind(devices: Iterable<{
    deviceId: string;
    groupId: string;
    kind: string;
    label: string;
}>): DeviceLists;
/** What changed from `before` to `after` (by kind and id): for the event `deviceschanged`. */
export declare function deviceChanges(before: DeviceLists, after: DeviceLists): {
    added: Device[];
    removed: Device[];
};
/**
 * The device to capture `source` from when the track of the one in use (`lost`, its id, or
 * null when not known) ended (unplugged, taken away): the browser's default (id `default`,
 * Chromium: an alias that follows the system's default device, so it stays valid after the
 * device behind it went) when listed, else the first listed device of that kind other than
 * the lost one (the browser lists its default first), else null (none left: the source stops).
 */
export declare function fallbackDevice(source: DeviceSource, devices: DeviceLists, lost: string | null): string | null;
/** The device id a live track captures from (its settings), or null. */
export declare function trackDeviceId(track: MediaStreamTrack): string | null;
/** The browser's devices now (empty lists without `mediaDevices`, e.g. an insecure page). */
export declare function listDevices(): Promise<DeviceLists>;
/**
 * Opens the camera and / or microphone without a session (a preview before joining):
 * `client.publishTracks(stream)` later publishes exactly these tracks, without opening the
 * devices again. A string picks a device by id (`{deviceId: {exact: id}}`).
 */
export declare function openLocalStream(what?: {
    audio?: boolean | string | MediaTrackConstraints;
    video?: boolean | string | MediaTrackConstraints;
}): Promise<MediaStream>;
/** getUserMedia constraints for one kind: a device id, constraints, or on / off. */
export declare function constraintsFor(c: boolean | string | MediaTrackConstraints | undefined): boolean | MediaTrackConstraints;
/** Whether this browser can choose where media elements play (`HTMLMediaElement.setSinkId`:
 * Chromium; Firefox from 116 — ESR 115 lacks it). */
export declare function audioOutputSupported(): boolean;
