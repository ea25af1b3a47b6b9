// rtcd browser SDK: one call (room) over the rtcd-proxy WebSocket protocol (docs/protocol.md).
//
// `import { RtcdClient } from '/sdk/client.js'` (served by the proxy) or
// `import { RtcdClient } from '@rtcd/client'` (the package in sdk/ of the repository).
//
// This module is the browser side: WebSocket, timers, RTCPeerConnection, getStats, the DOM
// (adaptive stream). Its decisions live in plain classes it feeds and obeys, unit-tested in
// Node without a browser: `Connection` (connection.ts: close codes, resume, reconnect and
// backoff, the signaling state), `Negotiation` (negotiation.ts: when to offer, coalescing,
// rollback, the answer deadline) and `MediaHealth` (health.ts: stalls and loss). Server messages are parsed and checked in protocol.ts.
//
// What it does:
//  * connects to the proxy, joins a room with a JWT, keeps the session alive (app-level pings
//    on top of the browser's WebSocket pongs), refreshes the token on `token_expiring` through
//    a callback the application provides;
//  * makes every offer (protocol section 4a): right after `joined`, whenever it publishes or
//    stops publishing, and after each `negotiation_needed`, for which it first adds `recvonly`
//    transceivers until it has as many receiving audio / video sections as the media server
//    asked for. The media server only answers, so there is no glare and one ICE role
//    assignment (browsers switch roles when they answer a renegotiation offer);
//  * publishes microphone / camera / screen / screen audio, declaring each sending section's
//    source in `tracks` (mid -> source) as the proxy's permission policy expects;
//  * maps received tracks by the transceiver's mid (`track_published.mid`), never by
//    `MediaStreamTrack.id` (Firefox gives received tracks random ids, and sections are reused
//    for later tracks: a reused section ends the old publisher's track and starts the new one's);
//  * trickles ICE both ways;
//  * relays through TURN when the proxy hands out servers (`joined.ice_servers`);
//  * watches media health (getStats every 2 s): a local media state and one per remote
//    participant (see `MediaState`);
//  * never wedges on the browser: each (re)connection gets a fresh message queue, every await
//    on the peer connection is bounded (10 s) and abandoned when the peer connection closes;
//  * resumes its session when only the signaling connection was lost, and reconnects with
//    backoff after the close codes the protocol says to retry (connection.ts).

import {
  audioOutputSupported,
  constraintsFor,
  deviceChanges,
  deviceSource,
  fallbackDevice,
  kindOf,
  listDevices,
  trackDeviceId,
  type DeviceLists,
  type DeviceSource,
} from './devices.js';
import { Connection, DEFAULT_RECONNECT, needsNewToken, type CloseDecision, type ReconnectOptions } from './connection.js';
import { describe, RtcdError } from './errors.js';
import {
  TypedEventTarget,
  type ClientState,
  type LobbyEntry,
  type MediaState,
  type Participant,
  type Recording,
  type RemoteMediaState,
  type RemoteTrack,
  type Route,
  type Waiting,
} from './events.js';
import { MediaHealth, type InboundReading } from './health.js';
import { QualityMonitor, type ConnectionQuality, type InboundCounters, type QualityChange, type UplinkReport } from './quality.js';
import { cameraLayers, fullLayer } from './layers.js';
import { Negotiation, type MediaKind } from './negotiation.js';
import { TrackViews, viewMessages, type ElementView } from './views.js';
import {
  closeLabel,
  CloseCode,
  ErrorCode,
  MalformedMessage,
  parseServerMessage,
  type ClientMessage,
  type JoinedInfo,
  type ModerationActionName,
  type ModerationFields,
  type ParticipantInfo,
  type RoomPolicy,
  type ServerMessage,
  type TrackSource,
} from './protocol.js';

import { E2ee, type E2eeOptions, type SetKeyOptions } from './e2ee/session.js';
import { videoCodecOrder, type E2eeStats } from './e2ee/cryptor.js';
export { CAMERA_LAYERS, cameraLayers } from './layers.js';
export {
  audioOutputSupported,
  fallbackDevice,
  listDevices,
  openLocalStream,
  type Device,
  type DeviceKind,
  type DeviceLists,
  type DeviceSource,
} from './devices.js';
export { QualityMonitor, qualityOf, QUALITY_UPGRADE_MS, type ConnectionQuality, type QualityChange, type QualityStats } from './quality.js';
export { closeLabel, CloseCode, ErrorCode, isTokenCloseCode, ModerationAction } from './protocol.js';
export type {
  CloseLabel,
  ClientMessage,
  ErrorCodeLabel,
  JoinedInfo,
  ModerationActionName,
  ParticipantInfo,
  Permissions,
  RoomPolicy,
  RtcdErrorCode,
  ServerMessage,
  TrackSource,
} from './protocol.js';
export { RtcdError, type RtcdErrorDetails } from './errors.js';
export { closePolicy, Connection, type ClosePolicy, type CloseDecision, type ReconnectOptions } from './connection.js';
export { Negotiation } from './negotiation.js';
export { E2ee, KeyState, chooseApi, type E2eeApi, type E2eeKeyInit, type E2eeOptions, type SetKeyOptions } from './e2ee/session.js';
export { codecOf, decryptFailures, emptyStats, videoCodecOrder, type E2eeStats } from './e2ee/cryptor.js';
export { TypedEventTarget } from './events.js';
export type {
  ClientEvent,
  ClientEventMap,
  ClientEventName,
  ClientState,
  DeviceSwitch,
  LobbyEntry,
  MediaState,
  Participant,
  Recording,
  RemoteMediaState,
  RemoteTrack,
  Route,
  TrackPauseDetail,
  Waiting,
} from './events.js';

/** Why the SDK asks the application for a token. */
export interface TokenRequest {
  reason: 'refresh' | 'reconnect';
  room: string;
}

/** `new RtcdClient(options)`: docs/web-client.md lists each with its default. */
export interface ClientOptions {
  room: string;
  token: string;
  url?: string;
  getToken?: (request: TokenRequest) => Promise<string>;
  iceServers?: RTCIceServer[];
  iceTransportPolicy?: RTCIceTransportPolicy;
  reconnect?: Partial<ReconnectOptions>;
  pingIntervalMs?: number;
  pongTimeoutMs?: number;
  stepTimeoutMs?: number;
  statsIntervalMs?: number;
  simulcast?: boolean;
  adaptiveStream?: boolean;
  /** End-to-end encryption (docs/web-client.md): keys to start with, the worker's URL. Only
   * used in a room whose `joined.e2ee` is true. */
  e2ee?: E2eeOptions;
}

/** The options with every default filled in. */
export type ResolvedOptions = Required<Omit<ClientOptions, 'url' | 'getToken' | 'reconnect' | 'e2ee'>>
  & Pick<ClientOptions, 'url' | 'getToken' | 'e2ee'> & { reconnect: ReconnectOptions };

/** Adaptive stream: how often the SDK looks for `<video>` elements showing remote tracks (an
 * element that starts showing one is watched from then on). */
const VIEW_SCAN_MS = 1000;
/** Adaptive stream: views go out at most this often (a window being resized changes sizes
 * many times a second, and the proxy limits messages per second). */
const VIEW_SEND_MS = 300;

/** How long a device fallback waits for the browser's device list before it chooses from
 * the last one. */
const DEVICE_LIST_WAIT_MS = 3000;

/** How long the peer connection may stay `failed` before the SDK gives up on the session
 * itself (the media server normally closes it first, with 4010 and a clearer message). */
const FAILED_GRACE_MS = 5000;
/** How long ICE may stay `disconnected` before the SDK restarts it (protocol section 4a): a
 * moved device (new Wi-Fi, VPN up, cable to Wi-Fi) keeps nothing of its old address, and
 * only new credentials make the browser gather on the network it has now. Short blips recover
 * by themselves inside this time; `failed` restarts at once. */
const ICE_RESTART_AFTER_MS = 2000;

/** The fields of the getStats entries the SDK reads (the DOM typings lack some, e.g.
 * Firefox's `selected` on a candidate pair). */
interface StatsEntry {
  type: string;
  kind?: string;
  mid?: string;
  trackIdentifier?: string;
  packetsReceived?: number;
  packetsLost?: number;
  framesDecoded?: number;
  fractionLost?: number;
  selectedCandidatePairId?: string;
  selected?: boolean;
  localCandidateId?: string;
  candidateType?: string;
  protocol?: string;
  relayProtocol?: string;
  address?: string;
  ip?: string;
  jitter?: number;
  roundTripTime?: number;
  currentRoundTripTime?: number;
}

/**
 * The size (device pixels) at which `el` draws its video: its box, or with `object-fit: cover`
 * the picture scaled to cover it (larger than the box on one side). With the default
 * `contain`, the box: the media server takes the lowest layer that reaches either side.
 */
function drawnSize(el: HTMLVideoElement, dpr: number): [number, number] {
  let w = el.clientWidth * dpr;
  let h = el.clientHeight * dpr;
  const vw = el.videoWidth;
  const vh = el.videoHeight;
  if (w > 0 && h > 0 && vw > 0 && vh > 0 && getComputedStyle(el).objectFit === 'cover') {
    const scale = Math.max(w / vw, h / vh);
    w = vw * scale;
    h = vh * scale;
  }
  return [Math.round(w), Math.round(h)];
}

/** Thrown into pending steps of a peer connection that was closed: not an error to report. */
class Abandoned extends Error {}

/** A peer connection step that did not settle in time: the session restarts. */
class StepTimedOut extends RtcdError {}

/**
 * One participant's connection to one room.
 *
 * Lifecycle: `new RtcdClient(options)` -> `connect()` (resolves on the first `joined`) ->
 * `publish(...)` / `unpublish(...)` / `startScreenShare()` / `setMuted(...)` -> `leave()`. Each
 * (re)connection is a new proxy session with a new RTCPeerConnection; local tracks survive
 * reconnects and are published again.
 *
 * For automation, `remoteTracks` (mid -> RemoteTrack), `participants`, `mediaState` and
 * `peerConnection` reflect the current session.
 */
export class RtcdClient extends TypedEventTarget {
  readonly options: ResolvedOptions;
  readonly url: string;
  token: string;
  /** This client's media health (see `MediaState`). */
  mediaState: MediaState = 'connecting';
  /** The current session's `joined`. */
  session: JoinedInfo | null = null;
  /** Remote participants by identity. */
  readonly participants = new Map<string, Participant>();
  /** The room's recording while it records (`recording_started`), else null. Show it: the
   * participants' consent depends on it. */
  recording: Recording | null = null;
  /** Moderators: who knocks at the lobby now, by identity (`lobbyrequest` / `lobbyleft`). */
  readonly lobby = new Map<string, LobbyEntry>();
  /** Set while the room's policy holds this session (`waiting`), null once joined. */
  waiting: Waiting | null = null;
  /** Received tracks by the mid of their section. */
  readonly remoteTracks = new Map<string, RemoteTrack>();
  /** Published (or previewed) local tracks. */
  readonly localTracks = new Map<TrackSource, MediaStreamTrack>();
  /** Locally muted sources. */
  readonly muted = new Set<TrackSource>();
  /** TURN servers with credentials from the proxy (current session). */
  proxyIceServers: RTCIceServer[] = [];
  /** When `proxyIceServers`' credentials expire (Unix s; 0 = none). */
  iceServersExpiresAt = 0;
  /** The current media path (null until a candidate pair is selected). */
  route: Route | null = null;
  /** Cameras, microphones and speakers as last listed (`listDevices()`; refreshed on the
   * browser's `devicechange`, event `deviceschanged`). */
  devices: DeviceLists = { audioinput: [], videoinput: [], audiooutput: [] };
  /** The speaker remote audio plays on (`setAudioOutput`), null for the browser's default. */
  audioOutput: string | null = null;
  /** This client's uplink quality (event `connectionquality` with `local: true`); null
   * before the first judgement. Remote participants': `participants.get(id).quality`. */
  connectionQuality: ConnectionQuality | null = null;
  /** Who speaks now, loudest first (the media server's `voice_activity`; event
   * `voiceactivity`). */
  activeSpeakers: string[] = [];

  private readonly _conn: Connection;
  private _ws: WebSocket | null = null;
  private _pc: RTCPeerConnection | null = null;
  /** The current peer connection's offer / answer state (a new one per peer connection). */
  private _neg: Negotiation;
  /** Bumped by every teardown: work of an older session sees it changed and stops. */
  private _gen = 0;
  /** Rejects the pending steps of the current peer connection when it is closed. */
  private _pcClosed: Promise<never> = new Promise(() => {});
  private _abandon: (e: Error) => void = () => {};
  /** Sending sections by source. */
  private readonly _transceivers = new Map<TrackSource, RTCRtpTransceiver>();
  private _answerTimer = 0;
  /** Media server candidates that came before its first answer. */
  private _earlyCandidates: RTCIceCandidateInit[] = [];
  /** `track_published` by mid, until unpublished. */
  private readonly _published = new Map<string, { identity: string; source: TrackSource; trackId: string }>();
  /** Mids the media server paused (`track_paused`), with why (read by the calls tests). */
  private readonly _paused = new Map<string, string>();
  /** Adaptive stream: `<video>` elements showing a remote video track, watched for their
   * size and visibility, with whether they intersect the viewport. */
  private readonly _viewed = new Map<HTMLVideoElement, { intersecting: boolean }>();
  /** What adaptive stream last sent (views.ts decides what changed). */
  private readonly _views = new TrackViews();
  private _viewTimer = 0;
  private _viewScanTimer = 0;
  private _resizeObserver: ResizeObserver | null = null;
  private _intersectionObserver: IntersectionObserver | null = null;
  /** The last layer change of each sender. */
  private readonly _layerChanges = new WeakMap<RTCRtpSender, Promise<void>>();
  /** Inbound counters of the current peer connection's received sections (health.ts). */
  private readonly _health = new MediaHealth();
  /** End-to-end encryption: keys, the worker, the transforms (e2ee/session.ts). */
  private readonly _e2ee: E2ee;
  /** Connection quality per participant (quality.ts). */
  private readonly _quality = new QualityMonitor();
  /** The browser's `devicechange` listener (removed by `leave()`). */
  private readonly _onDeviceChange = (): void => {
    this.listDevices().catch((cause: unknown) => console.warn(`rtcd: cannot list devices: ${describe(cause)}`));
  };
  private _statsTimer = 0;
  private _failedTimer = 0;
  private _iceRestartTimer = 0;
  /** ICE restarts of the current peer connection (event `icerestart`). */
  private _iceRestarts = 0;
  /** Server messages are handled one at a time, in order (SDP steps are async); a new
   * chain per session, so a new session never waits behind an old one. */
  private _queue: Promise<unknown> = Promise.resolve();
  private _leaving = false;
  private _retryTimer = 0;
  private _pingTimer = 0;
  private _pongTimer = 0;
  private _pingId = 0;
  /** The `error` that announced a close. */
  private _lastError: { code: string; message: string } | null = null;
  /** Set while a lost connection is being resumed: the peer connection is kept (media keeps
   * flowing) and the next `join` carries `resume`. */
  private _resuming = false;
  private _onFirstJoin: ((info: JoinedInfo) => void) | null = null;
  private _onFirstFail: ((e: RtcdError) => void) | null = null;

  constructor(options: ClientOptions) {
    super();
    if (!options || !options.room) throw new TypeError('RtcdClient: `room` is required');
    this.options = {
      iceServers: [],
      iceTransportPolicy: 'all',
      pingIntervalMs: 25000,
      pongTimeoutMs: 10000,
      stepTimeoutMs: 10000,
      statsIntervalMs: 2000,
      simulcast: true,
      adaptiveStream: true,
      ...options,
      reconnect: { ...DEFAULT_RECONNECT, ...(options.reconnect || {}) },
    };
    this.url = options.url || defaultUrl();
    this.token = options.token;
    this._conn = new Connection(this.options.reconnect);
    this._neg = new Negotiation(this.options.stepTimeoutMs);
    this._e2ee = new E2ee(options.e2ee ?? {}, new URL('./e2ee/worker.js', import.meta.url));
    for (const k of options.e2ee?.keys ?? []) {
      this.setE2eeKey(k.index, k.key, k).catch((cause: unknown) => this._reported(
        new RtcdError(ErrorCode.e2ee_unsupported, `end-to-end encryption key ${k.index} refused: ${describe(cause)}`, { cause })));
    }
    if (typeof navigator !== 'undefined' && navigator.mediaDevices?.addEventListener) {
      navigator.mediaDevices.addEventListener('devicechange', this._onDeviceChange);
    }
  }

  // ---- End-to-end encryption (docs/e2ee.md) ------------------------------------------------

  /**
   * Sets the end-to-end encryption key at `index` (0-255): raw bytes (16 or 32), or with
   * `derive` key material (at least 16 bytes; a string is UTF-8) from which HKDF derives it.
   * The first key set becomes current; set later ones on every participant first, then make
   * them current with `useE2eeKey` (docs/e2ee.md, "Rotation without a gap"). In an encrypted
   * room nothing is sent until a key is current; once it is, local tracks are sent.
   * Rejects with a `RangeError` / `TypeError` for a bad index or key.
   */
  async setE2eeKey(index: number, key: Uint8Array | string, options: SetKeyOptions = {}): Promise<void> {
    await this._e2ee.setKey(index, key, options);
    this._e2eeKeyChanged();
  }

  /** Encrypts with the key at `index` from now on (rotation step 2). Rejects if none is there. */
  async useE2eeKey(index: number): Promise<void> {
    await this._e2ee.useKey(index);
    this._e2eeKeyChanged();
  }

  /** Forgets the key at `index` (rotation step 3): frames under it no longer decrypt.
   * Removing the current key stops sending (frames are dropped, never sent in the clear)
   * until another is made current. Resolves to whether there was a key. */
  removeE2eeKey(index: number): Promise<boolean> {
    return this._e2ee.removeKey(index);
  }

  /** Frames encrypted, decrypted and dropped (by why) in encrypted rooms, updated about twice
   * a second. A growing `decryptFailed.unknown_key` means this page lacks the key others
   * send with: show "cannot decrypt". */
  get e2eeStats(): E2eeStats {
    return this._e2ee.stats;
  }

  /** How this browser transforms frames: `script` (RTCRtpScriptTransform in a worker),
   * `streams` (Chromium's encoded streams) or `none` (cannot encrypt: sends nothing). */
  get e2eeApi(): 'script' | 'streams' | 'none' {
    return this._e2ee.api;
  }

  /** A key became current (or not): send the local tracks held back until now. */
  private _e2eeKeyChanged(): void {
    if (!this.session?.e2ee || !this._e2ee.canSend) return;
    for (const [source, track] of this.localTracks) {
      if (!this._transceivers.has(source) || this._transceivers.get(source)?.direction !== 'sendonly') this._attach(source, track);
    }
  }

  /** Waits (bounded, like a negotiation step) until frame transforms can be given. */
  private _e2eeReady(): Promise<void> {
    return this._bounded(this._e2ee.ready(), 'starting the end-to-end encryption worker');
  }

  /** In an encrypted room, gives `transceiver`'s receiver (and sender) its transform and
   * leaves H.264 and AV1 out of its video codecs. */
  private _e2eeTransceiver(transceiver: RTCRtpTransceiver, kind: 'audio' | 'video', sending: boolean): void {
    if (!this.session?.e2ee) return;
    if (kind === 'video' && typeof RTCRtpReceiver.getCapabilities === 'function') {
      const caps = RTCRtpReceiver.getCapabilities('video');
      const order = caps ? videoCodecOrder(caps.codecs) : [];
      if (order.length > 0) {
        try {
          transceiver.setCodecPreferences(order);
        } catch (cause) {
          console.warn(`rtcd: could not prefer VP8 for end-to-end encryption: ${describe(cause)}`);
        }
      }
    }
    this._e2ee.attach(transceiver.receiver, { side: 'receive', kind });
    if (sending) this._e2ee.attach(transceiver.sender, { side: 'send', kind });
  }

  /** Signaling state (event `state`). */
  get state(): ClientState {
    return this._conn.state;
  }

  /** Successful joins so far (1 + reconnects). */
  get joins(): number {
    return this._conn.joins;
  }

  // ---- public API -------------------------------------------------------------------------

  /**
   * Opens the connection and joins. Resolves with the `joined` info of the first session;
   * rejects with an `RtcdError` if the client gives up before joining.
   */
  connect(): Promise<JoinedInfo> {
    if (this.state !== 'idle') return Promise.reject(new RtcdError('bad_message', 'connect() called twice'));
    const joined = new Promise<JoinedInfo>((resolve, reject) => {
      this._onFirstJoin = resolve;
      this._onFirstFail = reject;
    });
    this._open();
    return joined;
  }

  /**
   * Captures and publishes the microphone and / or camera. Tracks are kept across reconnects.
   * Without a media server the tracks are still captured (local preview).
   * @returns the local stream (for a preview)
   */
  async publish(what: { audio?: boolean | MediaTrackConstraints; video?: boolean | MediaTrackConstraints } = { audio: true, video: true }): Promise<MediaStream> {
    let stream: MediaStream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: what.audio ?? false, video: what.video ?? false });
    } catch (cause) {
      throw this._reported(new RtcdError(ErrorCode.media_failed, `cannot open camera / microphone: ${describe(cause)}`, { cause }));
    }
    for (const track of stream.getTracks()) {
      this._addLocal(track.kind === 'audio' ? 'microphone' : 'camera', track);
    }
    return stream;
  }

  /**
   * Stops publishing a source (camera off, microphone off): the track is stopped and its
   * section stops sending (kept for the next time), then the SDK offers again.
   */
  unpublish(source: TrackSource): void {
    if (source === 'screen' || source === 'screen_audio') {
      this.stopScreenShare();
      return;
    }
    this._removeLocal(source);
  }

  /**
   * Shares a screen (getDisplayMedia) as source `screen`, and its sound (when the browser
   * gives audio) as `screen_audio`, each on its own section.
   */
  async startScreenShare(): Promise<MediaStream> {
    if (this.session && !this.session.permissions.publish_screen) {
      throw this._reported(new RtcdError(ErrorCode.forbidden, 'this token does not allow screen sharing', { request: 'screen_share_start' }));
    }
    let stream: MediaStream;
    try {
      stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: true });
    } catch (cause) {
      throw this._reported(new RtcdError(ErrorCode.media_failed, `screen share refused: ${describe(cause)}`, { cause }));
    }
    this._sendRelayed({ type: 'screen_share_start' });
    for (const track of stream.getTracks()) {
      const source = track.kind === 'audio' ? 'screen_audio' : 'screen';
      // The browser's own "stop sharing" button ends the track.
      track.addEventListener('ended', () => this.stopScreenShare());
      this._addLocal(source, track);
    }
    return stream;
  }

  /** Stops the screen share (no-op without one). */
  stopScreenShare(): void {
    const had = this.localTracks.has('screen') || this.localTracks.has('screen_audio');
    this._removeLocal('screen');
    this._removeLocal('screen_audio');
    if (had) this._sendRelayed({ type: 'screen_share_stop' });
  }

  // ---- devices (devices.ts) -----------------------------------------------------------------

  /**
   * Publishes tracks the application already holds, e.g. the preview it opened before
   * joining (`openLocalStream()`): audio as `microphone`, video as `camera`. The devices are
   * not opened again. Before `connect()` they wait for the session, like `publish`.
   */
  publishTracks(tracks: MediaStream | MediaStreamTrack[]): void {
    const list = Array.isArray(tracks) ? tracks : tracks.getTracks();
    for (const track of list) this._addLocal(track.kind === 'audio' ? 'microphone' : 'camera', track);
  }

  /**
   * Lists cameras (`videoinput`), microphones (`audioinput`) and speakers (`audiooutput`),
   * keeps them in `devices` and emits `deviceschanged` when they differ from the last list.
   * Labels are empty until the page was allowed a camera or microphone.
   */
  async listDevices(): Promise<DeviceLists> {
    const devices = await listDevices();
    const { added, removed } = deviceChanges(this.devices, devices);
    this.devices = devices;
    if (added.length > 0 || removed.length > 0) this.emit('deviceschanged', { devices, added, removed });
    return devices;
  }

  /** `switchDevice('camera', deviceIdOrTrack)`. */
  switchCamera(to: string | MediaStreamTrack): Promise<MediaStreamTrack> {
    return this.switchDevice('camera', to);
  }

  /** `switchDevice('microphone', deviceIdOrTrack)`. */
  switchMicrophone(to: string | MediaStreamTrack): Promise<MediaStreamTrack> {
    return this.switchDevice('microphone', to);
  }

  /**
   * Captures `source` from another device (its id: opened here, a camera at the size the
   * previous one had) or from a track the application made (e.g. a canvas's
   * `captureStream()`), mid-call and without renegotiation: the new track replaces the old
   * one on the same section (`RTCRtpSender.replaceTrack`; a camera keeps its simulcast
   * layers), the old track is stopped, the mute state carries over. Not published yet: the
   * track is published. Event `deviceswitched` (`reason: 'switched'`).
   * @returns the new track
   */
  async switchDevice(source: DeviceSource, to: string | MediaStreamTrack): Promise<MediaStreamTrack> {
    const track = typeof to === 'string' ? await this._openDevice(source, to) : to;
    try {
      await this._replaceLocal(source, track, 'switched');
    } catch (cause) {
      if (typeof to === 'string') track.stop();
      throw this._reported(new RtcdError(ErrorCode.media_failed, `cannot switch the ${source}: ${describe(cause)}`, { cause }));
    }
    return track;
  }

  /** Whether the browser can choose the speaker (`setAudioOutput`; `HTMLMediaElement.setSinkId`). */
  get audioOutputSupported(): boolean {
    return audioOutputSupported();
  }

  /**
   * Plays remote media on the speaker `deviceId` (from `devices.audiooutput`; `''` is the
   * browser's default): every `<audio>` / `<video>` element of the document that shows a
   * received track now, and each one the application shows later from its `track` handler
   * (or hands to `attachAudioOutput`). Rejects with `audio_output_unsupported` where the
   * browser cannot choose (`audioOutputSupported` false: Firefox ESR 115, Safari before 18).
   */
  async setAudioOutput(deviceId: string): Promise<void> {
    if (!audioOutputSupported()) {
      throw this._reported(new RtcdError(ErrorCode.audio_output_unsupported, 'this browser cannot choose the audio output (no HTMLMediaElement.setSinkId)'));
    }
    this.audioOutput = deviceId;
    try {
      await Promise.all(this._remoteMediaElements().map((el) => this.attachAudioOutput(el)));
    } catch (cause) {
      throw this._reported(new RtcdError(ErrorCode.media_failed, `cannot play on audio output ${deviceId}: ${describe(cause)}`, { cause }));
    }
    this.emit('audiooutput', { deviceId });
  }

  /** Plays `el` on the speaker chosen with `setAudioOutput` (nothing to do before, or
   * where the browser cannot choose). */
  async attachAudioOutput(el: HTMLMediaElement): Promise<void> {
    if (this.audioOutput === null || !audioOutputSupported() || el.sinkId === this.audioOutput) return;
    await el.setSinkId(this.audioOutput);
  }

  /**
   * Mutes or unmutes a local source: the track stops producing media at once (`enabled`), and
   * the server is told so it stops forwarding and tells the others (`mute_changed`).
   */
  setMuted(source: TrackSource, muted: boolean): void {
    const track = this.localTracks.get(source);
    if (track) track.enabled = !muted;
    if (muted) this.muted.add(source); else this.muted.delete(source);
    this._sendRelayed({ type: muted ? 'mute' : 'unmute', source });
  }

  /**
   * A moderator's action on this room (moderators only; others get an `error` `forbidden`).
   * The outcome arrives as a `moderated` event, or an `error` event with `request: 'moderate'`.
   */
  moderate(action: ModerationActionName, target: { identity?: string; source?: TrackSource; banSeconds?: number; reason?: string; policy?: RoomPolicy; reset?: boolean } = {}): void {
    const fields: ModerationFields = {};
    if (target.identity !== undefined) fields.identity = target.identity;
    if (target.source !== undefined) fields.source = target.source;
    if (target.banSeconds !== undefined) fields.ban_seconds = target.banSeconds;
    if (target.reason !== undefined) fields.reason = target.reason;
    if (target.policy !== undefined) fields.policy = target.policy;
    if (target.reset !== undefined) fields.reset = target.reset;
    this._send({ type: 'moderate', action, ...fields });
  }

  /** Moderators: lets someone waiting in the lobby in (`lobbyrequest` names them). */
  admit(identity: string): void {
    this.moderate('admit', { identity });
  }

  /** Moderators: turns someone waiting in the lobby away (they are closed with 4015). */
  deny(identity: string): void {
    this.moderate('deny', { identity });
  }

  /**
   * Moderators: changes the room's entry policy (docs/protocol.md section 5b), e.g.
   * `setRoomPolicy({lobby: false})` lets everyone knocking in.
   */
  setRoomPolicy(policy: RoomPolicy, options: { reset?: boolean } = {}): void {
    this.moderate('set_policy', options.reset === undefined ? { policy } : { policy, reset: options.reset });
  }

  /** Moderators with the `record` permission: starts recording the room. */
  startRecording(): void {
    this.moderate('start_recording');
  }

  /** Moderators with the `record` permission: stops the room's recording. */
  stopRecording(): void {
    this.moderate('stop_recording');
  }

  /** Leaves the room: tells the proxy, stops local tracks, closes everything. */
  leave(): void {
    this._leaving = true;
    this._e2ee.close();
    clearTimeout(this._retryTimer);
    if (typeof navigator !== 'undefined' && navigator.mediaDevices?.removeEventListener) {
      navigator.mediaDevices.removeEventListener('devicechange', this._onDeviceChange);
    }
    if (this._ws && this._ws.readyState === WebSocket.OPEN) this._send({ type: 'leave' });
    for (const source of [...this.localTracks.keys()]) this._removeLocal(source);
    this._teardown();
    if (this._ws && this._ws.readyState !== WebSocket.OPEN) this._ws.close(1000);
    this._transition(() => this._conn.ended());
    this.emit('closed', { code: CloseCode.normal, label: 'normal', byClient: true });
  }

  /** The RTCPeerConnection of the current session (for getStats), if any. */
  get peerConnection(): RTCPeerConnection | null {
    return this._pc;
  }

  /** ICE restarts of the current peer connection (network changes survived in place). */
  get iceRestarts(): number {
    return this._iceRestarts;
  }

  /**
   * Restarts ICE (new candidates, new relay allocations with the current credentials) and
   * offers again. For a client whose network changed, or to test a path.
   */
  restartIce(): void {
    if (this._pc) this._restartIce(this._pc);
  }

  // ---- connection -------------------------------------------------------------------------

  /** Runs a state change of the connection machine and emits `state` if it changed. */
  private _transition(change: () => void): void {
    const previous = this._conn.state;
    change();
    const state = this._conn.state;
    if (state !== previous) this.emit('state', { state, previous });
  }

  private _open(): void {
    this._transition(() => this._conn.opening());
    this._lastError = null;
    // A new session starts with a fresh chain: nothing of the previous one can hold it up.
    // A resumed one keeps its peer connection, and the steps queued for it.
    if (!this._resuming) this._queue = Promise.resolve();
    let ws: WebSocket;
    try {
      ws = new WebSocket(this.url);
    } catch (cause) {
      this._fail(new RtcdError(ErrorCode.connection_failed, `bad signaling URL ${this.url}`, { cause, fatal: true }));
      return;
    }
    this._ws = ws;
    ws.addEventListener('open', () => {
      const resume = this._resuming ? this.session?.resume_token : undefined;
      this._send({ type: 'join', room: this.options.room, token: this.token, ...(resume !== undefined && { resume }) });
    });
    ws.addEventListener('message', (event) => this._onMessage(ws, event));
    ws.addEventListener('close', (event) => this._onClose(ws, event.code, event.reason));
  }

  private _onMessage(ws: WebSocket, event: MessageEvent): void {
    if (ws !== this._ws) return;
    let message: ReturnType<typeof parseServerMessage>;
    try {
      message = parseServerMessage(String(event.data));
    } catch (e) {
      console.warn(`rtcd: ignoring a malformed message: ${e instanceof MalformedMessage ? e.message : describe(e)}`);
      return;
    }
    if ('unknownType' in message) {
      console.warn(`rtcd: ignoring unknown message type \`${message.unknownType}\``);
      return;
    }
    if (this._resuming && message.type === 'joined') {
      // Decided on arrival, before anything queued after it: whatever follows belongs to the
      // session this `joined` opens.
      this._resuming = false;
      if (!message.resumed) {
        // The media server no longer had the session (its grace period ended, its host is
        // gone): start over with a new peer connection.
        this._teardown();
        this._queue = Promise.resolve();
      }
    }
    this._enqueue(() => this._handle(message), `handling \`${message.type}\``);
  }

  /** Runs `step` after everything queued before it, for this session only. */
  private _enqueue(step: () => unknown, what: string): void {
    const gen = this._gen;
    this._queue = this._queue
      .then(() => (gen === this._gen ? step() : undefined))
      .catch((cause: unknown) => this._stepFailed(cause, gen, what));
  }

  /** A queued step threw: a browser refusal is reported; a step that did not settle in
   * time means this peer connection cannot be trusted any more, so the session restarts. */
  private _stepFailed(cause: unknown, gen: number, what: string): void {
    if (gen !== this._gen || cause instanceof Abandoned) return;
    if (cause instanceof StepTimedOut) {
      this._restart(cause);
      return;
    }
    const error = cause instanceof RtcdError ? cause
      : new RtcdError(ErrorCode.negotiation_failed, `${what}: ${describe(cause)}`, { cause });
    this.emit('error', { error });
  }

  /**
   * Bounds a peer connection step: rejects with `negotiation_failed` (and a restart) after
   * `stepTimeoutMs`, and with `Abandoned` when the peer connection is closed meanwhile
   * (Chromium never settles promises of a closed peer connection).
   */
  private _bounded<T>(promise: Promise<T>, what: string): Promise<T> {
    let timer = 0;
    const limit = this.options.stepTimeoutMs;
    const timeout = new Promise<never>((_, reject) => {
      timer = window.setTimeout(() => {
        reject(new StepTimedOut(ErrorCode.negotiation_failed, `${what} did not complete within ${limit / 1000} s`));
      }, limit);
    });
    return Promise.race([promise, timeout, this._pcClosed]).finally(() => clearTimeout(timer));
  }

  private _onClose(ws: WebSocket, code: number, reason: string): void {
    if (ws !== this._ws) return;
    this._ws = null;
    const label = reason || closeLabel(code);
    const previous = this._conn.state;
    const decision = this._conn.closed(code, { leaving: this._leaving, resumable: this._resumable() });
    if (decision.action === 'resume') {
      // Signaling is gone, media is not: stop what needs the socket, keep the peer connection.
      this._stopPings();
      this._resuming = true;
      const error = new RtcdError(label, code === 1006
        ? `lost the signaling connection to ${this.url}; resuming` : `${label}; resuming`, { closeCode: code });
      this._scheduleReconnect(decision, previous, error, true);
      return;
    }
    this._teardown();
    if (this._leaving) return;
    const announced = this._lastError && this._lastError.code === label ? this._lastError.message : '';
    const message = announced || (code === 1006 ? `cannot reach the signaling server at ${this.url}` : label);
    this._afterClose(decision, previous, new RtcdError(label, message, { closeCode: code }));
  }

  /** Carries out a close decision that does not resume: stop, give up, or reconnect. */
  private _afterClose(decision: CloseDecision, previous: ClientState, error: RtcdError): void {
    switch (decision.action) {
      case 'closed':
        this._emitState(previous);
        this.emit('closed', { code: error.closeCode ?? CloseCode.normal, label: error.code, byClient: false });
        return;
      case 'give_up':
        this._fail(error, previous);
        return;
      case 'reconnect':
      case 'resume':
        this._scheduleReconnect(decision, previous, error, false);
    }
  }

  /** Emits `state` when the connection machine moved since `previous`. */
  private _emitState(previous: ClientState): void {
    const state = this._conn.state;
    if (state !== previous) this.emit('state', { state, previous });
  }

  /** Reports `error`, then the state `reconnecting`, and reconnects after the delay. */
  private _scheduleReconnect(decision: { delayMs: number; attempt: number }, previous: ClientState, error: RtcdError, resuming: boolean): void {
    this.emit('error', { error });
    this._emitState(previous);
    this.emit('reconnecting', { attempt: decision.attempt, delayMs: decision.delayMs, error, ...(resuming && { resuming }) });
    this._retryTimer = window.setTimeout(() => void this._reconnect(), decision.delayMs);
  }

  /**
   * Ends the current session from this side (a peer connection step hung, no answer came,
   * the media connection failed) and reconnects as after a retryable close.
   */
  private _restart(error: RtcdError): void {
    const ws = this._ws;
    if (!ws || this._leaving) return;
    this._ws = null;
    // The proxy ends the session at the media server: a new one follows.
    try { ws.close(1000); } catch { /* already closing */ }
    this._teardown();
    const previous = this._conn.state;
    this._afterClose(this._conn.restarted(), previous, error);
  }

  /**
   * Whether the session can be taken over through a new connection: the media server offered
   * it (`joined.resume_token`) and the peer connection is still alive.
   */
  private _resumable(): boolean {
    const pc = this._pc;
    return !!(this.session?.resume_token && this.session.media)
      && !!pc && pc.connectionState !== 'failed' && pc.connectionState !== 'closed';
  }

  private async _reconnect(): Promise<void> {
    if (this._leaving) return;
    if (needsNewToken(this.session?.expires_at, Date.now())) {
      if (!this.options.getToken) {
        this._fail(new RtcdError('token_expired', 'the token has expired; cannot reconnect without a new one', { fatal: true }));
        return;
      }
      try {
        this.token = await this.options.getToken({ reason: 'reconnect', room: this.options.room });
      } catch (cause) {
        this._fail(new RtcdError('token_expired', `no new token to reconnect with: ${describe(cause)}`, { cause, fatal: true }));
        return;
      }
    }
    this._open();
  }

  /** Gives up for good: `error` event, state `error`, and the pending `connect()` rejects.
   * `previous`: the state before the decision that led here (the machine may have moved). */
  private _fail(error: RtcdError, previous: ClientState = this._conn.state): void {
    error.fatal = true;
    this._teardown();
    this.emit('error', { error });
    this._conn.failed();
    this._emitState(previous);
    this._setMediaState('failed');
    this.emit('closed', { code: error.closeCode ?? 0, label: error.code, byClient: false, error });
    if (this._onFirstFail) {
      this._onFirstFail(error);
      this._onFirstJoin = this._onFirstFail = null;
    }
  }

  /** Reports an error of a public method to the listeners and returns it (to throw). */
  private _reported(error: RtcdError): RtcdError {
    this.emit('error', { error });
    return error;
  }

  /** Ends the current session's peer connection and timers; keeps local tracks. */
  private _teardown(): void {
    this._resuming = false;
    this._gen += 1;
    this._stopPings();
    clearInterval(this._statsTimer);
    clearTimeout(this._answerTimer);
    clearTimeout(this._failedTimer);
    clearTimeout(this._iceRestartTimer);
    clearInterval(this._viewScanTimer);
    clearTimeout(this._viewTimer);
    this._viewTimer = 0;
    this._views.reset();
    if (this._pc) {
      this._pc.close();
      this._pc = null;
      this._abandon(new Abandoned('the peer connection was closed'));
    }
    this._transceivers.clear();
    // A moderator's new session is sent the lobby as it is then.
    for (const identity of [...this.lobby.keys()]) {
      this.lobby.delete(identity);
      this.emit('lobbyleft', { identity, outcome: 'reconnecting' });
    }
    for (const [mid, remote] of [...this.remoteTracks]) this._endRemote(mid, remote);
    this._published.clear();
    this._paused.clear();
    this._health.clear();
    this._quality.clear();
    this.connectionQuality = null;
    if (this.route) {
      const previous = this.route;
      this.route = null;
      this.emit('route', { route: null, previous });
    }
    for (const identity of [...this.participants.keys()]) {
      this.participants.delete(identity);
      this.emit('participantleft', { identity });
    }
    this._neg = new Negotiation(this.options.stepTimeoutMs);
    this._earlyCandidates = [];
    if (!this._leaving && this.mediaState !== 'failed') this._setMediaState('connecting');
  }

  private _send(message: ClientMessage): void {
    if (this._ws && this._ws.readyState === WebSocket.OPEN) this._ws.send(JSON.stringify(message));
  }

  /** A relayed message: only meaningful with a media server (else the proxy answers
   * `media_unavailable` to each, which the client already reported once at join). */
  private _sendRelayed(message: ClientMessage): void {
    if (this.session && this.session.media) this._send(message);
  }

  private _startPings(): void {
    this._stopPings();
    const every = this.options.pingIntervalMs;
    if (!every) return;
    this._pingTimer = window.setInterval(() => {
      const id = ++this._pingId;
      this._send({ type: 'ping', id });
      clearTimeout(this._pongTimer);
      // A socket that stopped answering is dead even if the browser has not noticed yet.
      this._pongTimer = window.setTimeout(() => {
        const ws = this._ws;
        if (!ws) return;
        ws.close(CloseCode.idle_timeout, 'idle_timeout');
        this._onClose(ws, CloseCode.idle_timeout, 'idle_timeout');
      }, this.options.pongTimeoutMs);
    }, every);
  }

  private _stopPings(): void {
    clearInterval(this._pingTimer);
    clearTimeout(this._pongTimer);
  }

  // ---- server messages --------------------------------------------------------------------

  private async _handle(m: ServerMessage): Promise<void> {
    switch (m.type) {
      case 'joined': return this._onJoined(m);
      case 'waiting':
        // Held by the room's policy: no media yet, but the socket must stay alive.
        this.waiting = { room: m.room, reason: m.reason, timeoutSeconds: m.timeout_seconds };
        this._startPings();
        this._transition(() => this._conn.waiting());
        this.emit('waiting', this.waiting);
        return;
      case 'lobby_request': {
        const entry: LobbyEntry = { identity: m.identity, name: m.name, role: m.role, since: Date.now() };
        this.lobby.set(m.identity, entry);
        this.emit('lobbyrequest', entry);
        return;
      }
      case 'lobby_left':
        this.lobby.delete(m.identity);
        this.emit('lobbyleft', { identity: m.identity, outcome: m.outcome });
        return;
      case 'error': return this._onError(m);
      case 'pong': clearTimeout(this._pongTimer); return;
      case 'token_expiring': return this._onTokenExpiring(m.expires_at);
      case 'refreshed':
        if (this.session) Object.assign(this.session, { expires_at: m.expires_at, permissions: m.permissions });
        this.emit('refreshed', { expiresAt: m.expires_at, permissions: m.permissions });
        return;
      case 'ice_servers': return this._onIceServers(m.ice_servers, m.expires_at);
      case 'permissions_changed': {
        if (this.session) Object.assign(this.session, { role: m.role, permissions: m.permissions });
        // Sources no longer allowed are stopped here too: the media server already drops them.
        const caps: [TrackSource, keyof typeof m.permissions][] = [
          ['microphone', 'publish_audio'], ['camera', 'publish_video'], ['screen', 'publish_screen'], ['screen_audio', 'publish_screen'],
        ];
        for (const [source, cap] of caps) {
          if (m.permissions[cap] === false && this.localTracks.has(source)) this._removeLocal(source);
        }
        this.emit('permissionschanged', { role: m.role, permissions: m.permissions });
        return;
      }
      case 'muted_by_moderator': {
        const track = this.localTracks.get(m.source);
        if (track) track.enabled = false;
        this.muted.add(m.source);
        this.emit('mutedbymoderator', { source: m.source });
        return;
      }
      case 'unmute_requested':
        this.emit('unmuterequested', { source: m.source });
        return;
      case 'moderated':
        this.emit('moderated', { action: m.action, identity: m.identity, sessions: m.sessions, recordingId: m.recording_id });
        return;
      case 'recording_started':
        this.recording = { recordingId: m.recording_id, startedAtMs: m.started_at_ms, startedBy: m.started_by };
        this.emit('recordingstarted', this.recording);
        return;
      case 'recording_stopped':
        this.recording = null;
        this.emit('recordingstopped', { recordingId: m.recording_id, reason: m.reason });
        return;
      case 'answer': return this._onAnswer(m.sdp);
      case 'negotiation_needed':
        this._neg.negotiationNeeded({ audio: m.audio, video: m.video });
        this._offerSoon();
        return;
      case 'candidate': return this._onCandidate(m);
      case 'participant_joined':
        this._participantJoined(m.participant);
        this._updateHealth();
        return;
      case 'participant_left':
        this._participantLeft(m.identity);
        return;
      case 'participant_updated': {
        const known = this.participants.get(m.participant.identity);
        if (!known || m.participant.role === undefined || known.role === m.participant.role) return;
        const previousRole = known.role;
        known.role = m.participant.role;
        if (m.participant.name !== undefined) known.name = m.participant.name;
        this.emit('participantupdated', { participant: known, previousRole });
        return;
      }
      case 'track_published':
        // A section carrying a new track is not paused (whatever it carried before was).
        this._paused.delete(m.mid);
        this._published.set(m.mid, { identity: m.identity, source: m.source, trackId: m.track_id });
        this._match(m.mid);
        return;
      case 'layers_wanted':
        this._setLayers(m.mid, new Set(m.rids));
        return;
      case 'track_paused':
      case 'track_resumed': {
        const mid = m.mid;
        const paused = m.type === 'track_paused';
        if (paused) this._paused.set(mid, m.reason);
        else this._paused.delete(mid);
        const remote = this.remoteTracks.get(mid);
        // A resumed track starts again from a keyframe: give it the start grace period.
        if (!paused) this._health.restarted(mid, performance.now(), true);
        if (remote) {
          const detail = { identity: remote.identity, source: remote.source, trackId: remote.trackId, mid };
          if (paused) this.emit('trackpaused', { ...detail, reason: m.reason });
          else this.emit('trackresumed', detail);
        }
        this._updateHealth();
        return;
      }
      case 'track_unpublished':
        for (const [mid, info] of [...this._published]) {
          if (info.trackId === m.track_id && info.identity === m.identity) this._published.delete(mid);
        }
        for (const [mid, remote] of [...this.remoteTracks]) {
          if (remote.trackId === m.track_id && remote.identity === m.identity) this._endRemote(mid, remote);
        }
        this._updateHealth();
        return;
      case 'mute_changed': {
        const p = this._participant(m.identity);
        p.muted[m.source] = m.muted;
        // An unmuted track restarts: give it the stall grace period again.
        for (const [mid, remote] of this.remoteTracks) {
          if (remote.identity === m.identity && remote.source === m.source) this._health.restarted(mid, performance.now(), false);
        }
        this.emit('mutechanged', { identity: m.identity, source: m.source, muted: m.muted });
        return;
      }
      case 'voice_activity': {
        const speakers = new Set(m.speakers);
        for (const p of this.participants.values()) p.speaking = speakers.has(p.identity);
        this.activeSpeakers = [...speakers];
        this.emit('voiceactivity', { speakers: [...speakers] });
        return;
      }
      case 'media_server_lost':
        // The close (4008) follows; remember the message for the error it produces.
        this._lastError = { code: 'media_server_lost', message: m.message };
        return;
      case 'offer':
        // Proxies from before section 4a; this SDK never answers.
        console.warn('rtcd: ignoring a server offer (this proxy predates client-only offers)');
        return;
    }
  }

  private _onJoined(m: ServerMessage & { type: 'joined' }): void {
    const { type: _type, ...info } = m;
    if (m.resumed && this._pc) {
      this._onResumed(info);
      return;
    }
    this.session = info;
    // The media server says again, right after, if the room records.
    this.recording = null;
    this.waiting = null;
    // Before the peer connection exists: it is created with them.
    this.proxyIceServers = info.ice_servers ?? [];
    this.iceServersExpiresAt = info.ice_servers_expires_at ?? 0;
    this._startPings();
    if (info.media) {
      this._createPeerConnection();
      // In an encrypted room, no section gets a transform before the worker runs (e2ee/session.ts).
      if (info.e2ee && !this._e2ee.isReady) this._enqueue(() => this._e2eeReady(), 'starting end-to-end encryption');
      this._startViews();
      for (const source of this.muted) this._send({ type: 'mute', source });
      // Section 4a step 1: the client's first offer, even with nothing to send.
      this._wantOffer();
    } else {
      this._setMediaState('failed');
    }
    this._transition(() => this._conn.joined(false));
    this.emit('joined', info);
    if (this._onFirstJoin) {
      this._onFirstJoin(info);
      this._onFirstJoin = this._onFirstFail = null;
    }
  }

  /**
   * The session was taken over through a new connection: same peer connection, media never
   * stopped. Catch up on what was missed: the participants now, our mute states, and a fresh
   * offer (an offer or answer may have been lost with the old connection).
   */
  private _onResumed(info: JoinedInfo): void {
    this.session = info;
    this.recording = null;
    this.waiting = null;
    this.proxyIceServers = info.ice_servers ?? this.proxyIceServers;
    this.iceServersExpiresAt = info.ice_servers_expires_at || this.iceServersExpiresAt;
    this._startPings();
    const now = new Set<string>();
    for (const p of info.participants ?? []) {
      now.add(p.identity);
      this._participantJoined(p);
    }
    for (const identity of [...this.participants.keys()]) {
      if (!now.has(identity)) this._participantLeft(identity);
    }
    for (const source of this.muted) this._send({ type: 'mute', source });
    this._startViews();
    if (this._neg.resumed() === 'rollback') {
      this._enqueue(() => this._rollback(), 'taking back an offer lost with the connection');
    } else {
      this._offerSoon();
    }
    this._transition(() => this._conn.joined(true));
    this.emit('resumed', info);
    this._updateHealth();
  }

  /** Someone is in the room: added (event `participantjoined`), or a known one updated. */
  private _participantJoined(p: ParticipantInfo): void {
    const known = this.participants.get(p.identity);
    if (known) {
      Object.assign(known, { name: p.name ?? known.name, role: p.role ?? known.role });
      return;
    }
    const participant: Participant = { identity: p.identity, name: p.name, role: p.role, muted: {}, speaking: false, media: 'connecting' };
    this.participants.set(p.identity, participant);
    this.emit('participantjoined', participant);
  }

  /** Someone left the room: their tracks end, then `participantleft`. */
  private _participantLeft(identity: string): void {
    for (const [mid, remote] of [...this.remoteTracks]) {
      if (remote.identity === identity) {
        this._published.delete(mid);
        this._endRemote(mid, remote);
      }
    }
    this._quality.forget(identity);
    if (this.participants.delete(identity)) this.emit('participantleft', { identity });
  }

  private _onError(m: ServerMessage & { type: 'error' }): void {
    this._lastError = { code: m.code, message: m.message };
    // An error without `request` carrying a close label announces the close that follows:
    // it is reported once, with the close code, when the socket closes.
    if (m.code in CloseCode && !m.request) return;
    // The offer in flight was refused: no answer will come, so take it back. Any other
    // missing answer ends in the answer timeout.
    if (this._neg.refusesOffer(m.code, m.request)) this._enqueue(() => this._rollback(), 'rolling back a refused offer');
    this.emit('error', { error: new RtcdError(m.code, m.message, { request: m.request }) });
  }

  /**
   * Fresh TURN credentials from the proxy: applied to the live peer connection, so every
   * relay allocation it makes from now on uses them. An existing allocation keeps the username
   * it was made with (TURN requires it), and its refreshes would carry the old, soon expired,
   * credentials: whether a TURN server still accepts those is its own policy. So while media
   * is relayed, ICE restarts at once: new allocations with the fresh credentials, media on the
   * old path until the new one is checked (protocol section 4b).
   */
  private _onIceServers(servers: RTCIceServer[], expiresAt: number): void {
    this.proxyIceServers = servers;
    this.iceServersExpiresAt = expiresAt;
    const pc = this._pc;
    if (pc && pc.connectionState !== 'closed') {
      try {
        pc.setConfiguration({ ...pc.getConfiguration(), iceServers: this._iceServers() });
      } catch (cause) {
        this.emit('error', { error: new RtcdError(ErrorCode.ice_servers_rejected, `the browser refused the TURN servers: ${describe(cause)}`, { cause }) });
        return;
      }
    }
    this.emit('iceservers', { expiresAt: this.iceServersExpiresAt, urls: servers.flatMap((s) => ([] as string[]).concat(s.urls)) });
    if (pc && this.route && this.route.path === 'relayed') this._restartIce(pc);
  }

  /** The application's ICE servers, then the proxy's (TURN with this session's credentials). */
  private _iceServers(): RTCIceServer[] {
    return [...this.options.iceServers, ...this.proxyIceServers];
  }

  private async _onTokenExpiring(expiresAt: number): Promise<void> {
    this.emit('tokenexpiring', { expiresAt });
    if (!this.options.getToken) return;
    try {
      const token = await this.options.getToken({ reason: 'refresh', room: this.options.room });
      this.token = token;
      this._send({ type: 'refresh', token });
    } catch (cause) {
      this.emit('error', { error: new RtcdError('token_expired', `token refresh failed: ${describe(cause)}`, { cause, request: 'refresh' }) });
    }
  }

  // ---- WebRTC -----------------------------------------------------------------------------

  private _createPeerConnection(): void {
    const pc = new RTCPeerConnection({
      iceServers: this._iceServers(),
      iceTransportPolicy: this.options.iceTransportPolicy,
      bundlePolicy: 'max-bundle',
      // Chromium's older encoded-streams API needs it at creation (e2ee/session.ts).
      ...(this.session?.e2ee ? this._e2ee.peerConnectionConfig : {}),
    } as RTCConfiguration);
    this._pc = pc;
    this._pcClosed = new Promise<never>((_, reject) => { this._abandon = reject; });
    this._pcClosed.catch(() => {});
    pc.addEventListener('icecandidate', ({ candidate }) => {
      if (pc !== this._pc) return;
      // null = gathering finished: the protocol's end-of-candidates is an empty candidate.
      const c = candidate ? candidate.toJSON() : { candidate: '' } as RTCIceCandidateInit;
      this._send({
        type: 'candidate',
        candidate: c.candidate || '',
        ...(c.sdpMid != null && { sdpMid: c.sdpMid }),
        ...(c.sdpMLineIndex != null && { sdpMLineIndex: c.sdpMLineIndex }),
        ...(c.usernameFragment != null && { usernameFragment: c.usernameFragment }),
      });
    });
    pc.addEventListener('track', ({ transceiver }) => {
      // Matched by the section, never by the track's id (random in Firefox).
      if (pc === this._pc && transceiver) {
        // Normally given when the section was made; a section the browser made is covered here.
        this._e2eeTransceiver(transceiver, transceiver.receiver.track.kind === 'audio' ? 'audio' : 'video', false);
        if (transceiver.mid != null) this._match(transceiver.mid);
      }
    });
    pc.addEventListener('connectionstatechange', () => {
      if (pc !== this._pc) return;
      clearTimeout(this._failedTimer);
      if (pc.connectionState === 'failed') {
        // The media server closes the session with 4010 after its own timeout; if that does
        // not come, start over from here.
        this._failedTimer = window.setTimeout(() => {
          if (pc === this._pc && pc.connectionState === 'failed') {
            this._restart(new RtcdError('media_connection_failed', 'the media connection failed (no ICE or DTLS traffic); rejoining'));
          }
        }, FAILED_GRACE_MS);
      }
      this._updateHealth();
    });
    this._iceRestarts = 0;
    pc.addEventListener('iceconnectionstatechange', () => {
      if (pc !== this._pc) return;
      clearTimeout(this._iceRestartTimer);
      if (pc.iceConnectionState === 'failed') this._restartIce(pc);
      else if (pc.iceConnectionState === 'disconnected') {
        this._iceRestartTimer = window.setTimeout(() => this._restartIce(pc), ICE_RESTART_AFTER_MS);
      }
    });
    // A subscriber always receives: one receiving audio section from the first offer gives
    // the transport something to connect on, so media health is known before anyone speaks.
    if (this.session && this.session.permissions.subscribe) this._neg.startWith({ audio: 1, video: 0 });
    for (const [source, track] of this.localTracks) this._attach(source, track);
    this._statsTimer = window.setInterval(() => void this._poll(pc), this.options.statsIntervalMs);
  }

  /** Section 4a, ICE restart: new ICE credentials in the next offer; the session, its tracks
   * and its subscriptions stay, and media resumes once the new checks succeed. */
  private _restartIce(pc: RTCPeerConnection): void {
    if (pc !== this._pc || pc.connectionState === 'closed') return;
    this._iceRestarts += 1;
    this.emit('icerestart', { attempt: this._iceRestarts, state: pc.iceConnectionState });
    pc.restartIce();
    this._wantOffer();
  }

  /** Section 4a: asks for an offer, made once the peer connection is `stable` with no
   * answer pending; several requests before that make one offer (negotiation.ts). */
  private _wantOffer(): void {
    if (!this._pc) return;
    this._neg.want();
    this._offerSoon();
  }

  /** Queues an offer attempt (after whatever is queued: it may find nothing to do). */
  private _offerSoon(): void {
    if (this._pc) this._enqueue(() => this._offer(), 'making an offer');
  }

  private async _offer(): Promise<void> {
    const pc = this._pc;
    if (!pc || !this._neg.takeOffer(pc.signalingState === 'stable')) return;
    this._ensureReceivers(pc);
    await this._bounded(pc.setLocalDescription(), 'setLocalDescription(offer)');
    if (pc !== this._pc || !pc.localDescription) return;
    this._neg.offerSent(performance.now());
    this._send({ type: 'offer', sdp: pc.localDescription.sdp, tracks: this._trackMap() });
    clearTimeout(this._answerTimer);
    const neg = this._neg;
    // One millisecond past the deadline: a timer is not held to the clock `now` came from.
    this._answerTimer = window.setTimeout(() => {
      if (pc === this._pc && neg === this._neg && neg.answerOverdue(performance.now())) {
        this._restart(new RtcdError(ErrorCode.negotiation_failed, `no answer to the offer within ${this.options.stepTimeoutMs / 1000} s`));
      }
    }, this.options.stepTimeoutMs + 1);
  }

  /** Adds `recvonly` transceivers until the media server's needs are covered. */
  private _ensureReceivers(pc: RTCPeerConnection): void {
    // A stopped transceiver's direction is `stopped`: it is not counted.
    const count = (kind: MediaKind): number => pc.getTransceivers().filter((t) => t.receiver.track.kind === kind
      && (t.direction === 'recvonly' || t.direction === 'sendrecv')).length;
    const add = this._neg.receiversToAdd({ audio: count('audio'), video: count('video') });
    for (const kind of ['audio', 'video'] as const) {
      for (let i = 0; i < add[kind]; i++) this._e2eeTransceiver(pc.addTransceiver(kind, { direction: 'recvonly' }), kind, false);
    }
  }

  private async _onAnswer(sdp: string): Promise<void> {
    const pc = this._pc;
    if (!pc) return;
    if (this._neg.answerReceived(pc.signalingState === 'have-local-offer') === 'reoffer') {
      // After a rollback on an ambiguous refusal the answer may still come: offer again so
      // both sides agree on the sections.
      console.warn(`rtcd: ignoring an answer in signaling state ${pc.signalingState}; offering again`);
      this._offerSoon();
      return;
    }
    clearTimeout(this._answerTimer);
    await this._bounded(pc.setRemoteDescription({ type: 'answer', sdp }), 'setRemoteDescription(answer)');
    if (pc !== this._pc) return;
    const again = this._neg.answerApplied();
    for (const init of this._earlyCandidates.splice(0)) await this._addCandidate(pc, init);
    // Sections may have been reassigned: recheck every announced track.
    for (const mid of this._published.keys()) this._match(mid);
    if (again) this._offerSoon();
  }

  /** Takes back an offer that will get no answer, and offers again if still needed. */
  private async _rollback(): Promise<void> {
    const pc = this._pc;
    if (!pc || !this._neg.awaitingAnswer) return;
    clearTimeout(this._answerTimer);
    if (pc.signalingState === 'have-local-offer') {
      await this._bounded(pc.setLocalDescription({ type: 'rollback' }), 'rollback');
    }
    if (this._neg.rolledBack()) this._offerSoon();
  }

  private async _onCandidate(m: ServerMessage & { type: 'candidate' }): Promise<void> {
    const pc = this._pc;
    if (!pc) return;
    const init: RTCIceCandidateInit = { candidate: m.candidate, sdpMid: m.sdpMid ?? null, sdpMLineIndex: m.sdpMLineIndex ?? null };
    if (m.usernameFragment != null) init.usernameFragment = m.usernameFragment;
    // A candidate before the first answer waits for it (the browser needs a remote description).
    if (!pc.remoteDescription) {
      this._earlyCandidates.push(init);
      return;
    }
    await this._addCandidate(pc, init);
  }

  private async _addCandidate(pc: RTCPeerConnection, init: RTCIceCandidateInit): Promise<void> {
    try {
      await this._bounded(pc.addIceCandidate(init), 'addIceCandidate');
    } catch (cause) {
      // A hung step restarts the session; a refused candidate (e.g. for a section that was
      // renegotiated away) costs nothing but that candidate.
      if (cause instanceof Abandoned || cause instanceof StepTimedOut) throw cause;
      console.warn(`rtcd: candidate refused: ${describe(cause)}`);
    }
  }

  /** The `tracks` field: mid -> source of every section this side sends on. */
  private _trackMap(): Record<string, TrackSource> {
    const tracks: Record<string, TrackSource> = {};
    for (const [source, transceiver] of this._transceivers) {
      if (transceiver.mid != null && transceiver.direction !== 'inactive') tracks[transceiver.mid] = source;
    }
    return tracks;
  }

  private _addLocal(source: TrackSource, track: MediaStreamTrack): void {
    const old = this.localTracks.get(source);
    if (old && old !== track) old.stop();
    this.localTracks.set(source, track);
    if (this.muted.has(source)) track.enabled = false;
    if (old !== track) this._watchDevice(source, track);
    this._attach(source, track);
    this.emit('localtrack', { source, track });
  }

  private _removeLocal(source: TrackSource): void {
    const track = this.localTracks.get(source);
    if (!track) return;
    this.localTracks.delete(source);
    track.stop();
    const transceiver = this._transceivers.get(source);
    if (transceiver && this._pc && this._pc.signalingState !== 'closed') {
      // Keep the section (and its mid -> source) for the next time; stop sending on it.
      transceiver.sender.replaceTrack(null).catch(() => {});
      transceiver.direction = 'inactive';
      this._wantOffer();
    }
    this.emit('localtrackended', { source, track });
  }

  /** Sends `track` on the section of `source`, creating it on first use, then offers. */
  private _attach(source: TrackSource, track: MediaStreamTrack): void {
    const pc = this._pc;
    if (!pc) return;
    if (this.session?.e2ee && !this._e2ee.canSend) {
      // Plaintext media in a room the platform marked end-to-end encrypted would break what
      // the platform promised its users: nothing is sent until a key is current (then
      // `setE2eeKey` / `useE2eeKey` send it), and never by a browser that cannot encrypt.
      this._reported(new RtcdError(ErrorCode.e2ee_unsupported, this._e2ee.api === 'none'
        ? `the room is end-to-end encrypted and this browser cannot transform media frames: ${source} not sent`
        : `the room is end-to-end encrypted and no key is set (setE2eeKey): ${source} not sent yet`));
      return;
    }
    if (this.session?.e2ee && !this._e2ee.isReady) {
      // Once the worker runs, if the track is still the one to send.
      this._enqueue(async () => {
        await this._e2eeReady();
        if (this.localTracks.get(source) === track) this._attach(source, track);
      }, `sending the ${source}`);
      return;
    }
    const existing = this._transceivers.get(source);
    if (existing) {
      existing.sender.replaceTrack(track).catch(() => {});
      if (existing.direction !== 'sendonly') {
        existing.direction = 'sendonly';
        this._wantOffer();
      }
      return;
    }
    const init: RTCRtpTransceiverInit = { direction: 'sendonly', streams: [new MediaStream([track])] };
    if (source === 'camera') {
      const { width, height } = track.getSettings ? track.getSettings() : { width: undefined, height: undefined };
      init.sendEncodings = this.options.simulcast ? cameraLayers(width, height) : fullLayer();
    } else if (source === 'screen') {
      init.sendEncodings = fullLayer();
      if ('contentHint' in track) track.contentHint = 'detail';
    }
    const transceiver = pc.addTransceiver(track, init);
    this._e2eeTransceiver(transceiver, track.kind === 'audio' ? 'audio' : 'video', true);
    this._transceivers.set(source, transceiver);
    this._wantOffer();
  }

  /**
   * Dynacast (protocol `layers_wanted`): encodes only the simulcast layers of the section `mid`
   * someone receives, sparing this device's CPU and uplink; the others start again (from a
   * keyframe) when the media server names them. Changes to one sender are applied in order.
   */
  private _setLayers(mid: string, rids: Set<string>): void {
    const transceiver = [...this._transceivers.values()].find((t) => t.mid === mid);
    if (!transceiver) return;
    const sender = transceiver.sender;
    const previous = this._layerChanges.get(sender) || Promise.resolve();
    const next = previous.then(async () => {
      const params = sender.getParameters();
      if (!params.encodings || params.encodings.length < 2) return;
      let changed = false;
      for (const encoding of params.encodings) {
        if (encoding.rid == null) continue;
        const active = rids.has(encoding.rid);
        if (encoding.active !== active) {
          encoding.active = active;
          changed = true;
        }
      }
      if (changed) await sender.setParameters(params);
    }).catch((cause: unknown) => console.warn(`rtcd: could not change the layers sent on ${mid}: ${describe(cause)}`));
    this._layerChanges.set(sender, next);
  }

  /** Emits `track` once a section's `track_published` and its receiving transceiver are both
   * known; a section reused for another track first ends the previous one. */
  private _match(mid: string): void {
    const pc = this._pc;
    const info = this._published.get(mid);
    if (!pc || !info) return;
    const transceiver = pc.getTransceivers().find((t) => t.mid === mid);
    if (!transceiver) return;
    const current = this.remoteTracks.get(mid);
    if (current && current.trackId === info.trackId && current.identity === info.identity) return;
    if (current) this._endRemote(mid, current);
    const track = transceiver.receiver.track;
    const remote: RemoteTrack = { identity: info.identity, source: info.source, trackId: info.trackId, mid, track, stream: new MediaStream([track]) };
    this.remoteTracks.set(mid, remote);
    this._health.watch(mid, performance.now());
    this._participant(info.identity);
    this.emit('track', remote);
    // The application usually shows it from its `track` handler: watch that element now,
    // and play it on the chosen speaker.
    this._scanViews();
    this._applyAudioOutput();
    this._updateHealth();
  }

  private _endRemote(mid: string, remote: RemoteTrack): void {
    if (this.remoteTracks.get(mid) !== remote) return;
    this.remoteTracks.delete(mid);
    this._health.forget(mid);
    this._views.forget(mid);
    this.emit('trackended', remote);
  }

  // ---- devices ------------------------------------------------------------------------------

  /** Opens `source` on device `deviceId` (`''`: the browser's default); a camera asks for the previous camera's size, so
   * the simulcast layers negotiated for it still fit. */
  private async _openDevice(source: DeviceSource, deviceId: string): Promise<MediaStreamTrack> {
    const constraints = (deviceId === '' ? {} : constraintsFor(deviceId)) as MediaTrackConstraints;
    const previous = this.localTracks.get(source);
    if (source === 'camera' && previous && typeof previous.getSettings === 'function') {
      const { width, height } = previous.getSettings();
      if (width && height) Object.assign(constraints, { width: { ideal: width }, height: { ideal: height } });
    }
    try {
      const stream = await navigator.mediaDevices.getUserMedia(source === 'camera' ? { video: constraints } : { audio: constraints });
      const track = stream.getTracks()[0];
      if (!track) throw new Error('no track');
      return track;
    } catch (cause) {
      throw this._reported(new RtcdError(ErrorCode.media_failed, `cannot open ${kindOf(source)} ${deviceId}: ${describe(cause)}`, { cause }));
    }
  }

  /**
   * `track` now carries `source`: on the section already sending it, through
   * `replaceTrack` (no offer: same kind, same section), else published anew.
   */
  private async _replaceLocal(source: DeviceSource, track: MediaStreamTrack, reason: 'switched' | 'fallback'): Promise<void> {
    const previous = this.localTracks.get(source) ?? null;
    if (previous === track) return;
    if (!previous) {
      this._addLocal(source, track);
    } else {
      const transceiver = this._transceivers.get(source);
      if (this.muted.has(source)) track.enabled = false;
      if (transceiver && this._pc && this._pc.signalingState !== 'closed' && transceiver.direction !== 'inactive') {
        await transceiver.sender.replaceTrack(track);
      }
      this.localTracks.set(source, track);
      this._watchDevice(source, track);
      previous.stop();
      this.emit('localtrack', { source, track });
    }
    this.emit('deviceswitched', { source, track, previous, deviceId: trackDeviceId(track), reason });
  }

  /** Follows the device `track` captures `source` from: when it ends without the SDK
   * stopping it (unplugged, taken by the system), fall back to another device. */
  private _watchDevice(source: TrackSource, track: MediaStreamTrack): void {
    const device = deviceSource(source);
    if (device) track.addEventListener('ended', () => void this._deviceEnded(device, track));
  }

  /** The device in use for `source` went away: capture from the default one (devices.ts
   * `fallbackDevice`) and keep publishing; none left: the source stops. */
  private async _deviceEnded(source: DeviceSource, track: MediaStreamTrack): Promise<void> {
    if (this.localTracks.get(source) !== track || this._leaving) return;
    const lost = trackDeviceId(track);
    // The devices now; a browser that does not list them in time (or fails) leaves the last
    // list to choose from: the fallback must not wait on it.
    let devices = this.devices;
    let timer = 0;
    try {
      devices = await Promise.race([
        this.listDevices(),
        new Promise<DeviceLists>((resolve) => { timer = window.setTimeout(() => resolve(this.devices), DEVICE_LIST_WAIT_MS); }),
      ]);
    } catch (cause) {
      console.warn(`rtcd: cannot list devices: ${describe(cause)}`);
    } finally {
      clearTimeout(timer);
    }
    // Never listed: the browser's default device of that kind.
    const fallback = devices[kindOf(source)].length === 0 ? '' : fallbackDevice(source, devices, lost);
    this.emit('devicelost', { source, deviceId: lost, fallback });
    if (this.localTracks.get(source) !== track) return;
    if (fallback === null) {
      this._removeLocal(source);
      this._reported(new RtcdError(ErrorCode.media_failed, `the ${source} went away and no other ${kindOf(source)} is left`));
      return;
    }
    let next: MediaStreamTrack;
    try {
      next = await this._openDevice(source, fallback);
    } catch {
      // Reported by _openDevice.
      this._removeLocal(source);
      return;
    }
    if (this.localTracks.get(source) !== track) {
      next.stop();
      return;
    }
    try {
      await this._replaceLocal(source, next, 'fallback');
    } catch (cause) {
      next.stop();
      this._reported(new RtcdError(ErrorCode.media_failed, `cannot fall back to ${kindOf(source)} ${fallback}: ${describe(cause)}`, { cause }));
    }
  }

  /** The `<audio>` / `<video>` elements of the document showing a received track. */
  private _remoteMediaElements(): HTMLMediaElement[] {
    if (typeof document === 'undefined') return [];
    const remote = new Set<MediaStreamTrack>();
    for (const r of this.remoteTracks.values()) remote.add(r.track);
    return [...document.querySelectorAll<HTMLMediaElement>('audio, video')].filter((el) => {
      const src = el.srcObject;
      return src instanceof MediaStream && src.getTracks().some((t) => remote.has(t));
    });
  }

  /** Applies the chosen speaker to the elements showing received tracks now. */
  private _applyAudioOutput(): void {
    if (this.audioOutput === null) return;
    for (const el of this._remoteMediaElements()) {
      this.attachAudioOutput(el).catch((cause: unknown) => console.warn(`rtcd: cannot set the audio output: ${describe(cause)}`));
    }
  }

  // ---- adaptive stream ----------------------------------------------------------------------

  /** Starts watching how remote video is shown (protocol `track_views`): every view is sent
   * afresh to a new or resumed session. */
  private _startViews(): void {
    clearInterval(this._viewScanTimer);
    this._views.reset();
    if (!this.options.adaptiveStream || typeof document === 'undefined') return;
    if (!this._resizeObserver && typeof ResizeObserver !== 'undefined') {
      this._resizeObserver = new ResizeObserver(() => this._scheduleViews());
    }
    if (!this._intersectionObserver && typeof IntersectionObserver !== 'undefined') {
      this._intersectionObserver = new IntersectionObserver((entries) => {
        for (const entry of entries) {
          const state = this._viewed.get(entry.target as HTMLVideoElement);
          if (state) state.intersecting = entry.isIntersecting;
        }
        this._scheduleViews();
      });
    }
    this._viewScanTimer = window.setInterval(() => this._scanViews(), VIEW_SCAN_MS);
    this._scanViews();
  }

  /** Finds the `<video>` elements whose `srcObject` holds a remote video track, and watches
   * them; forgets the ones that no longer do. */
  private _scanViews(): void {
    if (!this.options.adaptiveStream || typeof document === 'undefined') return;
    const remote = new Set<MediaStreamTrack>();
    for (const r of this.remoteTracks.values()) if (r.track.kind === 'video') remote.add(r.track);
    const showing = new Set<HTMLVideoElement>();
    for (const el of document.querySelectorAll('video')) {
      const src = el.srcObject;
      if (!(src instanceof MediaStream) || !src.getVideoTracks().some((t) => remote.has(t))) continue;
      showing.add(el);
      if (this._viewed.has(el)) continue;
      // Intersecting until the observer says otherwise (a background tab may never say).
      this._viewed.set(el, { intersecting: true });
      this._resizeObserver?.observe(el);
      this._intersectionObserver?.observe(el);
    }
    for (const el of [...this._viewed.keys()]) {
      if (showing.has(el)) continue;
      this._viewed.delete(el);
      this._resizeObserver?.unobserve(el);
      this._intersectionObserver?.unobserve(el);
    }
    this._scheduleViews();
  }

  private _scheduleViews(): void {
    if (this._viewTimer) return;
    this._viewTimer = window.setTimeout(() => {
      this._viewTimer = 0;
      this._sendViews();
    }, VIEW_SEND_MS);
  }

  /** Measures the watched elements and sends the views that changed (`TrackViews.changed`
   * says which and how). */
  private _sendViews(): void {
    if (!this.session || !this.session.media) return;
    const dpr = (typeof window !== 'undefined' && window.devicePixelRatio) || 1;
    const elements: ElementView<MediaStreamTrack>[] = [];
    for (const [el, state] of this._viewed) {
      const src = el.srcObject;
      if (!(src instanceof MediaStream)) continue;
      const [width, height] = drawnSize(el, dpr);
      elements.push({ tracks: src.getVideoTracks(), intersecting: state.intersecting, width, height });
    }
    const video = [...this.remoteTracks.values()].filter((r) => r.track.kind === 'video');
    for (const views of viewMessages(this._views.changed(video, elements))) {
      this._sendRelayed({ type: 'track_views', views });
    }
  }

  private _participant(identity: string): Participant {
    let p = this.participants.get(identity);
    if (!p) {
      p = { identity, muted: {}, speaking: false, media: 'connecting' };
      this.participants.set(identity, p);
      this.emit('participantjoined', p);
    }
    return p;
  }

  // ---- media health -----------------------------------------------------------------------

  /** Reads inbound counters per received section and the media server's loss reports. */
  private async _poll(pc: RTCPeerConnection): Promise<void> {
    if (pc !== this._pc || pc.connectionState === 'closed') return;
    const gen = this._gen;
    let report: RTCStatsReport;
    try {
      report = await this._bounded(pc.getStats(), 'getStats');
    } catch (cause) {
      this._stepFailed(cause, gen, 'reading statistics');
      return;
    }
    if (pc !== this._pc) return;
    const midByTrack = new Map<string, string>();
    for (const t of pc.getTransceivers()) if (t.mid != null) midByTrack.set(t.receiver.track.id, t.mid);
    const inbound: InboundReading[] = [];
    const outboundLoss: number[] = [];
    const counters: InboundCounters[] = [];
    const uplink: UplinkReport[] = [];
    const pair = selectedPair(report);
    this._updateRoute(report, pair);
    report.forEach((s: StatsEntry) => {
      if (s.type === 'inbound-rtp') {
        const mid = s.mid ?? (s.trackIdentifier === undefined ? undefined : midByTrack.get(s.trackIdentifier));
        if (mid == null) return;
        const reading = {
          mid: String(mid),
          video: s.kind === 'video',
          packetsReceived: s.packetsReceived || 0,
          packetsLost: s.packetsLost || 0,
          framesDecoded: s.framesDecoded || 0,
        };
        inbound.push(reading);
        const remote = this.remoteTracks.get(reading.mid);
        if (remote && !this._excused(reading.mid, remote)) counters.push({ ...reading, identity: remote.identity, jitter: s.jitter || 0 });
      } else if (s.type === 'remote-inbound-rtp') {
        outboundLoss.push(s.fractionLost || 0);
        uplink.push({
          fractionLost: s.fractionLost || 0,
          jitter: s.jitter || 0,
          roundTripTime: s.roundTripTime ?? null,
          packetsReceived: s.packetsReceived ?? null,
        });
      }
    });
    const now = performance.now();
    this._health.read(inbound, outboundLoss, now);
    this._updateHealth();
    this._updateQuality(pc, pair?.currentRoundTripTime ?? null, counters, uplink, now);
  }

  /** Whether nothing is expected on `mid` now: its publisher muted it, or the media server
   * paused it. */
  private _excused(mid: string, remote: RemoteTrack): boolean {
    return Boolean(this.participants.get(remote.identity)?.muted[remote.source]) || this._paused.has(mid);
  }

  /** Judges connection quality from one reading (quality.ts) and emits what changed. */
  private _updateQuality(pc: RTCPeerConnection, pairRtt: number | null, counters: InboundCounters[], uplink: UplinkReport[], now: number): void {
    const self = this.session?.identity ?? '';
    // Connected: judged from the reading. Disconnected or failed: this client is `lost`.
    // Not connected yet: nothing to judge.
    const down = pc.connectionState === 'disconnected' || pc.connectionState === 'failed';
    let changes: QualityChange[] = [];
    if (pc.connectionState === 'connected') {
      changes = this._quality.read(self, counters, uplink, pairRtt, now);
    } else if (down) {
      const change = this._quality.judge(self, true, { loss: 0, jitterMs: 0, rttMs: null, framesPerSecond: null, packets: 0 }, now);
      if (change) changes = [change];
    }
    // Participants with nothing expected any more have no level.
    const expected = new Set(counters.map((c) => c.identity));
    for (const p of this.participants.values()) {
      if (!expected.has(p.identity) && p.quality !== undefined) {
        this._quality.forget(p.identity);
        delete p.quality;
      }
    }
    for (const change of changes) {
      if (change.local) {
        this.connectionQuality = change.quality;
      } else {
        const participant = this.participants.get(change.identity);
        if (!participant) continue;
        participant.quality = change.quality;
      }
      this.emit('connectionquality', change);
    }
  }

  /** The local candidate id of the selected pair (Chromium's transport stats), if any. */
  /** The media path from the selected candidate pair (`selectedPair`). */
  private _updateRoute(report: RTCStatsReport, pair: StatsEntry | undefined): void {
    const local = pair?.localCandidateId === undefined ? undefined : report.get(pair.localCandidateId) as StatsEntry | undefined;
    const address = local?.address || local?.ip;
    const route: Route | null = local ? {
      path: local.candidateType === 'relay' ? 'relayed' : 'direct',
      candidateType: local.candidateType ?? '',
      protocol: local.protocol ?? '',
      ...(local.relayProtocol && { relayProtocol: local.relayProtocol }),
      ...(address && { address }),
    } : null;
    const was = this.route;
    if (JSON.stringify(was) === JSON.stringify(route)) return;
    this.route = route;
    this.emit('route', { route, previous: was });
  }

  /** Recomputes the local media state and every participant's (health.ts). */
  private _updateHealth(): void {
    const pc = this._pc;
    if (!pc) return;
    const tracks = [...this.remoteTracks].map(([mid, remote]) => ({
      mid,
      identity: remote.identity,
      excused: Boolean(this.participants.get(remote.identity)?.muted[remote.source]) || this._paused.has(mid),
    }));
    const { state, participants } = this._health.judge({
      connectionState: pc.connectionState,
      nothingToConnect: pc.getTransceivers().length === 0 && pc.signalingState === 'stable' && !!pc.remoteDescription,
    }, tracks, this.participants.keys());
    this._setMediaState(state);
    for (const participant of this.participants.values()) {
      const media = participants.get(participant.identity);
      if (media && participant.media !== media) {
        const previous = participant.media;
        participant.media = media;
        this.emit('participantmedia', { identity: participant.identity, state: media, previous });
      }
    }
  }

  private _setMediaState(state: MediaState): void {
    if (state === this.mediaState) return;
    const previous = this.mediaState;
    this.mediaState = state;
    this.emit('mediastate', { state, previous });
  }
}

/** `ws(s)://<this page's host>/ws`. */
/** The candidate pair the media goes over, read once per stats reading for the route and the
 * round trip (Chromium: the transport's `selectedCandidatePairId`; Firefox: the pair marked
 * `selected`). */
function selectedPair(report: RTCStatsReport): StatsEntry | undefined {
  let pair: StatsEntry | undefined;
  report.forEach((s: StatsEntry) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = (report.get(s.selectedCandidatePairId) as StatsEntry | undefined) ?? pair;
  });
  if (!pair) {
    report.forEach((s: StatsEntry) => {
      if (s.type === 'candidate-pair' && s.selected) pair = s;
    });
  }
  return pair;
}

function defaultUrl(): string {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/ws`;
}
