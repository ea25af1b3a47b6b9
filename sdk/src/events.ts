// The client's events: one map from event name to its `detail`, and an EventTarget whose
// `addEventListener` / `on` know it. The events stay plain `CustomEvent`s with the names and
// `detail` shapes of docs/web-client.md, so untyped JavaScript code keeps working unchanged.

import type { Device, DeviceLists, DeviceSource } from './devices.js';
import type { RtcdError } from './errors.js';
import type { ConnectionQuality, QualityChange } from './quality.js';
import type { JoinedInfo, Permissions, TrackSource } from './protocol.js';

/** Signaling state (`client.state`). */
export type ClientState = 'idle' | 'connecting' | 'waiting' | 'connected' | 'reconnecting' | 'closed' | 'error';

/**
 * This client's media: `connecting` until its peer connection is connected, `connected`,
 * `reconnecting` while the peer connection is `disconnected` (ICE lost, may recover), `poor`
 * while connected but expected inbound media stalls or loss is heavy, `failed` (peer
 * connection failed, or no media server).
 */
export type MediaState = 'connecting' | 'connected' | 'reconnecting' | 'poor' | 'failed';

/**
 * A remote participant's media as received here: `connecting` (announced, none of their
 * media has arrived yet), `connected` (their media arrives; also a participant who publishes
 * nothing, once this client's own media is connected), `poor` (one of their unmuted tracks
 * stalled for more than 3 s, or more than 10 % loss).
 */
export type RemoteMediaState = 'connecting' | 'connected' | 'poor';

/** A remote participant (`client.participants`, event `participantjoined`). */
export interface Participant {
  identity: string;
  name?: string;
  role?: string;
  muted: Partial<Record<TrackSource, boolean>>;
  speaking: boolean;
  media: RemoteMediaState;
  /** Their connection as received here (event `connectionquality`); absent while nothing of
   * theirs is expected (a listener, all muted or paused) or before the first judgement. */
  quality?: ConnectionQuality;
}

/** A received track, by the mid of its section (`client.remoteTracks`, event `track`). */
export interface RemoteTrack {
  identity: string;
  source: TrackSource;
  trackId: string;
  mid: string;
  track: MediaStreamTrack;
  stream: MediaStream;
}

/**
 * How this client's media leaves it, from the selected ICE candidate pair's local candidate:
 * `relayed` when it is a TURN relay candidate (`relayProtocol`: how the browser reaches the
 * TURN server, `udp`, `tcp` or `tls`), else `direct`.
 */
export interface Route {
  path: 'direct' | 'relayed';
  candidateType: string;
  protocol: string;
  relayProtocol?: string;
  address?: string;
}

export interface Waiting {
  room: string;
  reason: 'host' | 'lobby';
  timeoutSeconds: number;
}

export interface LobbyEntry {
  identity: string;
  name?: string;
  role?: string;
  /** When it arrived here (`Date.now()`). */
  since: number;
}

export interface Recording {
  recordingId: string;
  startedAtMs: number;
  startedBy: string;
}

export interface TrackPauseDetail {
  identity: string;
  source: TrackSource;
  trackId: string;
  mid: string;
  reason?: string;
}

/** Every event of `RtcdClient`, by name, with its `detail`. */
export interface ClientEventMap {
  state: { state: ClientState; previous: ClientState };
  joined: JoinedInfo;
  error: { error: RtcdError };
  participantjoined: Participant;
  participantleft: { identity: string };
  /** Someone's role changed (`participant_updated`): `participant.role` holds the new one. */
  participantupdated: { participant: Participant; previousRole?: string };
  participantmedia: { identity: string; state: RemoteMediaState; previous: RemoteMediaState };
  track: RemoteTrack;
  trackended: RemoteTrack;
  mutechanged: { identity: string; source: TrackSource; muted: boolean };
  trackpaused: TrackPauseDetail;
  trackresumed: TrackPauseDetail;
  voiceactivity: { speakers: string[] };
  localtrack: { source: TrackSource; track: MediaStreamTrack };
  localtrackended: { source: TrackSource; track: MediaStreamTrack };
  mediastate: { state: MediaState; previous: MediaState };
  tokenexpiring: { expiresAt: number };
  refreshed: { expiresAt: number; permissions: Permissions };
  iceservers: { expiresAt: number; urls: string[] };
  route: { route: Route | null; previous: Route | null };
  reconnecting: { attempt: number; delayMs: number; error: RtcdError; resuming?: boolean };
  resumed: JoinedInfo;
  icerestart: { attempt: number; state: RTCIceConnectionState };
  closed: { code: number; label: string; byClient: boolean; error?: RtcdError };
  permissionschanged: { role: string; permissions: Permissions };
  mutedbymoderator: { source: TrackSource };
  unmuterequested: { source: TrackSource };
  moderated: { action: string; identity?: string; sessions: number; recordingId?: string };
  waiting: Waiting;
  lobbyrequest: LobbyEntry;
  lobbyleft: { identity: string; outcome: string };
  recordingstarted: Recording;
  recordingstopped: { recordingId: string; reason: string };
  connectionquality: QualityChange;
  deviceschanged: { devices: DeviceLists; added: Device[]; removed: Device[] };
  deviceswitched: DeviceSwitch;
  devicelost: { source: DeviceSource; deviceId: string | null; fallback: string | null };
  audiooutput: { deviceId: string };
}

/** A local source now captures from another device or track (event `deviceswitched`):
 * `switched` by the application, `fallback` after the device in use went away. */
export interface DeviceSwitch {
  source: DeviceSource;
  track: MediaStreamTrack;
  previous: MediaStreamTrack | null;
  /** The device the new track captures from (null: not a device, e.g. a canvas track). */
  deviceId: string | null;
  reason: 'switched' | 'fallback';
}

export type ClientEventName = keyof ClientEventMap;

/** The event a listener of `type` receives. */
export type ClientEvent<K extends ClientEventName> = CustomEvent<ClientEventMap[K]>;

/** Any listener the overloads accept: a typed one (whose event parameter is narrower than
 * `Event`, hence `never` here) or a plain DOM one. */
type TypedListener = EventListenerOrEventListenerObject | ((event: never) => void);

/**
 * An EventTarget typed by `ClientEventMap`: `addEventListener('track', (e) => e.detail.mid)`
 * type-checks, and `on(type, detail => ...)` hands the detail over directly (and returns the
 * function that removes it). Other event names still work, untyped, as on any EventTarget.
 */
export class TypedEventTarget extends EventTarget {
  override addEventListener<K extends ClientEventName>(
    type: K, listener: ((event: ClientEvent<K>) => void) | null, options?: boolean | AddEventListenerOptions): void;
  override addEventListener(
    type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  override addEventListener(
    type: string, listener: TypedListener | null, options?: boolean | AddEventListenerOptions): void {
    super.addEventListener(type, listener as EventListenerOrEventListenerObject | null, options);
  }

  override removeEventListener<K extends ClientEventName>(
    type: K, listener: ((event: ClientEvent<K>) => void) | null, options?: boolean | EventListenerOptions): void;
  override removeEventListener(
    type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
  override removeEventListener(
    type: string, listener: TypedListener | null, options?: boolean | EventListenerOptions): void {
    super.removeEventListener(type, listener as EventListenerOrEventListenerObject | null, options);
  }

  /** Calls `handler` with each `type` event's detail; returns what removes it. */
  on<K extends ClientEventName>(type: K, handler: (detail: ClientEventMap[K]) => void): () => void {
    const listener = (event: Event): void => handler((event as ClientEvent<K>).detail);
    super.addEventListener(type, listener);
    return () => super.removeEventListener(type, listener);
  }

  /** Dispatches a `CustomEvent` of `type` with `detail`. */
  protected emit<K extends ClientEventName>(type: K, detail: ClientEventMap[K]): void {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
