import { type DeviceLists, type DeviceSource } from './devices.js';
import { type ReconnectOptions } from './connection.js';
import { TypedEventTarget, type ClientState, type LobbyEntry, type MediaState, type Participant, type Recording, type RemoteTrack, type Route, type Waiting } from './events.js';
import { type ConnectionQuality } from './quality.js';
import { type JoinedInfo, type ModerationActionName, type RoomPolicy, type TrackSource } from './protocol.js';
import { type E2eeOptions, type SetKeyOptions } from './e2ee/session.js';
import { type E2eeStats } from './e2ee/cryptor.js';
export { CAMERA_LAYERS, cameraLayers } from './layers.js';
export { audioOutputSupported, fallbackDevice, listDevices, openLocalStream, type Device, type DeviceKind, type DeviceLists, type DeviceSource, } from './devices.js';
export { QualityMonitor, qualityOf, QUALITY_UPGRADE_MS, type ConnectionQuality, type QualityChange, type QualityStats } from './quality.js';
export { closeLabel, CloseCode, ErrorCode, isTokenCloseCode, ModerationAction } from './protocol.js';
export type { CloseLabel, ClientMessage, ErrorCodeLabel, JoinedInfo, ModerationActionName, ParticipantInfo, Permissions, RoomPolicy, RtcdErrorCode, ServerMessage, TrackSource, } from './protocol.js';
export { RtcdError, type RtcdErrorDetails } from './errors.js';
export { closePolicy, Connection, type ClosePolicy, type CloseDecision, type ReconnectOptions } from './connection.js';
export { Negotiation } from './negotiation.js';
export { E2ee, KeyState, chooseApi, type E2eeApi, type E2eeKeyInit, type E2eeOptions, type SetKeyOptions } from './e2ee/session.js';
export { codecOf, decryptFailures, emptyStats, videoCodecOrder, type E2eeStats } from './e2ee/cryptor.js';
export { TypedEventTarget } from './events.js';
export type { ClientEvent, ClientEventMap, ClientEventName, ClientState, DeviceSwitch, LobbyEntry, MediaState, Participant, Recording, RemoteMediaState, RemoteTrack, Route, TrackPauseDetail, Waiting, } from './events.js';
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
export type ResolvedOptions = Required<Omit<ClientOptions, 'url' | 'getToken' | 'reconnect' | 'e2ee'>> & Pick<ClientOptions, 'url' | 'getToken' | 'e2ee'> & {
    reconnect: ReconnectOptions;
};
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
export declare class RtcdClient extends TypedEventTarget {
    readonly options: ResolvedOptions;
    readonly url: string;
    token: string;
    /** This client's media health (see `MediaState`). */
    mediaState: MediaState;
    /** The current session's `joined`. */
    session: JoinedInfo | null;
    /** Remote participants by identity. */
    readonly participants: Map<string, Participant>;
    /** The room's recording while it records (`recording_started`), else null. Show it: the
     * participants' consent depends on it. */
    recording: Recording | null;
    /** Moderators: who knocks at the lobby now, by identity (`lobbyrequest` / `lobbyleft`). */
    readonly lobby: Map<string, LobbyEntry>;
    /** Set while the room's policy holds this session (`waiting`), null once joined. */
    waiting: Waiting | null;
    /** Received tracks by the mid of their section. */
    readonly remoteTracks: Map<string, RemoteTrack>;
    /** Published (or previewed) local tracks. */
    readonly localTracks: Map<TrackSource, MediaStreamTrack>;
    /** Locally muted sources. */
    readonly muted: Set<TrackSource>;
    /** TURN servers with credentials from the proxy (current session). */
    proxyIceServers: RTCIceServer[];
    /** When `proxyIceServers`' credentials expire (Unix s; 0 = none). */
    iceServersExpiresAt: number;
    /** The current media path (null until a candidate pair is selected). */
    route: Route | null;
    /** Cameras, microphones and speakers as last listed (`listDevices()`; refreshed on the
     * browser's `devicechange`, event `deviceschanged`). */
    devices: DeviceLists;
    /** The speaker remote audio plays on (`setAudioOutput`), null for the browser's default. */
    audioOutput: string | null;
    /** This client's uplink quality (event `connectionquality` with `local: true`); null
     * before the first judgement. Remote participants': `participants.get(id).quality`. */
    connectionQuality: ConnectionQuality | null;
    /** Who speaks now, loudest first (the media server's `voice_activity`; event
     * `voiceactivity`). */
    activeSpeakers: string[];
    private readonly _conn;
    private _ws;
    private _pc;
    /** The current peer connection's offer / answer state (a new one per peer connection). */
    private _neg;
    /** Bumped by every teardown: work of an older session sees it changed and stops. */
    private _gen;
    /** Rejects the pending steps of the current peer connection when it is closed. */
    private _pcClosed;
    private _abandon;
    /** Sending sections by source. */
    private readonly _transceivers;
    private _answerTimer;
    /** Media server candidates that came before its first answer. */
    private _earlyCandidates;
    /** `track_published` by mid, until unpublished. */
    private readonly _published;
    /** Mids the media server paused (`track_paused`), with why (read by the calls tests). */
    private readonly _paused;
    /** Adaptive stream: `<video>` elements showing a remote video track, watched for their
     * size and visibility, with whether they intersect the viewport. */
    private readonly _viewed;
    /** What adaptive stream last sent (views.ts decides what changed). */
    private readonly _views;
    private _viewTimer;
    private _viewScanTimer;
    private _resizeObserver;
    private _intersectionObserver;
    /** The last layer change of each sender. */
    private readonly _layerChanges;
    /** Inbound counters of the current peer connection's received sections (health.ts). */
    private readonly _health;
    /** End-to-end encryption: keys, the worker, the transforms (e2ee/session.ts). */
    private readonly _e2ee;
    /** Connection quality per participant (quality.ts). */
    private readonly _quality;
    /** The browser's `devicechange` listener (removed by `leave()`). */
    private readonly _onDeviceChange;
    private _statsTimer;
    private _failedTimer;
    private _iceRestartTimer;
    /** ICE restarts of the current peer connection (event `icerestart`). */
    private _iceRestarts;
    /** Server messages are handled one at a time, in order (SDP steps are async); a new
     * chain per session, so a new session never waits behind an old one. */
    private _queue;
    private _leaving;
    private _retryTimer;
    private _pingTimer;
    private _pongTimer;
    private _pingId;
    /** The `error` that announced a close. */
    private _lastError;
    /** Set while a lost connection is being resumed: the peer connection is kept (media keeps
     * flowing) and the next `join` carries `resume`. */
    private _resuming;
    private _onFirstJoin;
    private _onFirstFail;
    constructor(options: ClientOptions);
    /**
     * Sets the end-to-end encryption key at `index` (0-255): raw bytes (16 or 32), or with
     * `derive` key material (at least 16 bytes; a string is UTF-8) from which HKDF derives it.
     * The first key set becomes current; set later ones on every participant first, then make
     * them current with `useE2eeKey` (docs/e2ee.md, "Rotation without a gap"). In an encrypted
     * room nothing is sent until a key is current; once it is, local tracks are sent.
     * Rejects with a `RangeError` / `TypeError` for a bad index or key.
     */
    setE2eeKey(index: number, key: Uint8Array | string, options?: SetKeyOptions): Promise<void>;
    /** Encrypts with the key at `index` from now on (rotation step 2). Rejects if none is there. */
    useE2eeKey(index: number): Promise<void>;
    /** Forgets the key at `index` (rotation step 3): frames under it no longer decrypt.
     * Removing the current key stops sending (frames are dropped, never sent in the clear)
     * until another is made current. Resolves to whether there was a key. */
    removeE2eeKey(index: number): Promise<boolean>;
    /** Frames encrypted, decrypted and dropped (by why) in encrypted rooms, updated about twice
     * a second. A growing `decryptFailed.unknown_key` means this page lacks the key others
     * send with: show "cannot decrypt". */
    get e2eeStats(): E2eeStats;
    /** How this browser transforms frames: `script` (RTCRtpScriptTransform in a worker),
     * `streams` (Chromium's encoded streams) or `none` (cannot encrypt: sends nothing). */
    get e2eeApi(): 'script' | 'streams' | 'none';
    /** A key became current (or not): send the local tracks held back until now. */
    private _e2eeKeyChanged;
    /** Waits (bounded, like a negotiation step) until frame transforms can be given. */
    private _e2eeReady;
    /** In an encrypted room, gives `transceiver`'s receiver (and sender) its transform and
     * leaves H.264 and AV1 out of its video codecs. */
    private _e2eeTransceiver;
    /** Signaling state (event `state`). */
    get state(): ClientState;
    /** Successful joins so far (1 + reconnects). */
    get joins(): number;
    /**
     * Opens the connection and joins. Resolves with the `joined` info of the first session;
     * rejects with an `RtcdError` if the client gives up before joining.
     */
    connect(): Promise<JoinedInfo>;
    /**
     * Captures and publishes the microphone and / or camera. Tracks are kept across reconnects.
     * Without a media server the tracks are still captured (local preview).
     * @returns the local stream (for a preview)
     */
    publish(what?: {
        audio?: boolean | MediaTrackConstraints;
        video?: boolean | MediaTrackConstraints;
    }): Promise<MediaStream>;
    /**
     * Stops publishing a source (camera off, microphone off): the track is stopped and its
     * section stops sending (kept for the next time), then the SDK offers again.
     */
    unpublish(source: TrackSource): void;
    /**
     * Shares a screen (getDisplayMedia) as source `screen`, and its sound (when the browser
     * gives audio) as `screen_audio`, each on its own section.
     */
    startScreenShare(): Promise<MediaStream>;
    /** Stops the screen share (no-op without one). */
    stopScreenShare(): void;
    /**
     * Publishes tracks the application already holds, e.g. the preview it opened before
     * joining (`openLocalStream()`): audio as `microphone`, video as `camera`. The devices are
     * not opened again. Before `connect()` they wait for the session, like `publish`.
     */
    publishTracks(tracks: MediaStream | MediaStreamTrack[]): void;
    /**
     * Lists cameras (`videoinput`), microphones (`audioinput`) and speakers (`audiooutput`),
     * keeps them in `devices` and emits `deviceschanged` when they differ from the last list.
     * Labels are empty until the page was allowed a camera or microphone.
     */
    listDevices(): Promise<DeviceLists>;
    /** `switchDevice('camera', deviceIdOrTrack)`. */
    switchCamera(to: string | MediaStreamTrack): Promise<MediaStreamTrack>;
    /** `switchDevice('microphone', deviceIdOrTrack)`. */
    switchMicrophone(to: string | MediaStreamTrack): Promise<MediaStreamTrack>;
    /**
     * Captures `source` from another device (its id: opened here, a camera at the size the
     * previous one had) or from a track the application made (e.g. a canvas's
     * `captureStream()`), mid-call and without renegotiation: the new track replaces the old
     * one on the same section (`RTCRtpSender.replaceTrack`; a camera keeps its simulcast
     * layers), the old track is stopped, the mute state carries over. Not published yet: the
     * track is published. Event `deviceswitched` (`reason: 'switched'`).
     * @returns the new track
     */
    switchDevice(source: DeviceSource, to: string | MediaStreamTrack): Promise<MediaStreamTrack>;
    /** Whether the browser can choose the speaker (`setAudioOutput`; `HTMLMediaElement.setSinkId`). */
    get audioOutputSupported(): boolean;
    /**
     * Plays remote media on the speaker `deviceId` (from `devices.audiooutput`; `''` is the
     * browser's default): every `<audio>` / `<video>` element of the document that shows a
     * received track now, and each one the application shows later from its `track` handler
     * (or hands to `attachAudioOutput`). Rejects with `audio_output_unsupported` where the
     * browser cannot choose (`audioOutputSupported` false: Firefox ESR 115, Safari before 18).
     */
    setAudioOutput(deviceId: string): Promise<void>;
    /** Plays `el` on the speaker chosen with `setAudioOutput` (nothing to do before, or
     * where the browser cannot choose). */
    attachAudioOutput(el: HTMLMediaElement): Promise<void>;
    /**
     * Mutes or unmutes a local source: the track stops producing media at once (`enabled`), and
     * the server is told so it stops forwarding and tells the others (`mute_changed`).
     */
    setMuted(source: TrackSource, muted: boolean): void;
    /**
     * A moderator's action on this room (moderators only; others get an `error` `forbidden`).
     * The outcome arrives as a `moderated` event, or an `error` event with `request: 'moderate'`.
     */
    moderate(action: ModerationActionName, target?: {
        identity?: string;
        source?: TrackSource;
        banSeconds?: number;
        reason?: string;
        policy?: RoomPolicy;
        reset?: boolean;
    }): void;
    /** Moderators: lets someone waiting in the lobby in (`lobbyrequest` names them). */
    admit(identity: string): void;
    /** Moderators: turns someone waiting in the lobby away (they are closed with 4015). */
    deny(identity: string): void;
    /**
     * Moderators: changes the room's entry policy (docs/protocol.md section 5b), e.g.
     * `setRoomPolicy({lobby: false})` lets everyone knocking in.
     */
    setRoomPolicy(policy: RoomPolicy, options?: {
        reset?: boolean;
    }): void;
    /** Moderators with the `record` permission: starts recording the room. */
    startRecording(): void;
    /** Moderators with the `record` permission: stops the room's recording. */
    stopRecording(): void;
    /** Leaves the room: tells the proxy, stops local tracks, closes everything. */
    leave(): void;
    /** The RTCPeerConnection of the current session (for getStats), if any. */
    get peerConnection(): RTCPeerConnection | null;
    /** ICE restarts of the current peer connection (network changes survived in place). */
    get iceRestarts(): number;
    /**
     * Restarts ICE (new candidates, new relay allocations with the current credentials) and
     * offers again. For a client whose network changed, or to test a path.
     */
    restartIce(): void;
    /** Runs a state change of the connection machine and emits `state` if it changed. */
    private _transition;
    private _open;
    private _onMessage;
    /** Runs `step` after everything queued before it, for this session only. */
    private _enqueue;
    /** A queued step threw: a browser refusal is reported; a step that did not settle in
     * time means this peer connection cannot be trusted any more, so the session restarts. */
    private _stepFailed;
    /**
     * Bounds a peer connection step: rejects with `negotiation_failed` (and a restart) after
     * `stepTimeoutMs`, and with `Abandoned` when the peer connection is closed meanwhile
     * (Chromium never settles promises of a closed peer connection).
     */
    private _bounded;
    private _onClose;
    /** Carries out a close decision that does not resume: stop, give up, or reconnect. */
    private _afterClose;
    /** Emits `state` when the connection machine moved since `previous`. */
    private _emitState;
    /** Reports `error`, then the state `reconnecting`, and reconnects after the delay. */
    private _scheduleReconnect;
    /**
     * Ends the current session from this side (a peer connection step hung, no answer came,
     * the media connection failed) and reconnects as after a retryable close.
     */
    private _restart;
    /**
     * Whether the session can be taken over through a new connection: the media server offered
     * it (`joined.resume_token`) and the peer connection is still alive.
     */
    private _resumable;
    private _reconnect;
    /** Gives up for good: `error` event, state `error`, and the pending `connect()` rejects.
     * `previous`: the state before the decision that led here (the machine may have moved). */
    private _fail;
    /** Reports an error of a public method to the listeners and returns it (to throw). */
    private _reported;
    /** Ends the current session's peer connection and timers; keeps local tracks. */
    private _teardown;
    private _send;
    /** A relayed message: only meaningful with a media server (else the proxy answers
     * `media_unavailable` to each, which the client already reported once at join). */
    private _sendRelayed;
    private _startPings;
    private _stopPings;
    private _handle;
    private _onJoined;
    /**
     * The session was taken over through a new connection: same peer connection, media never
     * stopped. Catch up on what was missed: the participants now, our mute states, and a fresh
     * offer (an offer or answer may have been lost with the old connection).
     */
    private _onResumed;
    /** Someone is in the room: added (event `participantjoined`), or a known one updated. */
    private _participantJoined;
    /** Someone left the room: their tracks end, then `participantleft`. */
    private _participantLeft;
    private _onError;
    /**
     * Fresh TURN credentials from the proxy: applied to the live peer connection, so every
     * relay allocation it makes from now on uses them. An existing allocation keeps the username
     * it was made with (TURN requires it), and its refreshes would carry the old, soon expired,
     * credentials: whether a TURN server still accepts those is its own policy. So while media
     * is relayed, ICE restarts at once: new allocations with the fresh credentials, media on the
     * old path until the new one is checked (protocol section 4b).
     */
    private _onIceServers;
    /** The application's ICE servers, then the proxy's (TURN with this session's credentials). */
    private _iceServers;
    private _onTokenExpiring;
    private _createPeerConnection;
    /** Section 4a, ICE restart: new ICE credentials in the next offer; the session, its tracks
     * and its subscriptions stay, and media resumes once the new checks succeed. */
    private _restartIce;
    /** Section 4a: asks for an offer, made once the peer connection is `stable` with no
     * answer pending; several requests before that make one offer (negotiation.ts). */
    private _wantOffer;
    /** Queues an offer attempt (after whatever is queued: it may find nothing to do). */
    private _offerSoon;
    private _offer;
    /** Adds `recvonly` transceivers until the media server's needs are covered. */
    private _ensureReceivers;
    private _onAnswer;
    /** Takes back an offer that will get no answer, and offers again if still needed. */
    private _rollback;
    private _onCandidate;
    private _addCandidate;
    /** The `tracks` field: mid -> source of every section this side sends on. */
    private _trackMap;
    private _addLocal;
    private _removeLocal;
    /** Sends `track` on the section of `source`, creating it on first use, then offers. */
    private _attach;
    /**
     * Dynacast (protocol `layers_wanted`): encodes only the simulcast layers of the section `mid`
     * someone receives, sparing this device's CPU and uplink; the others start again (from a
     * keyframe) when the media server names them. Changes to one sender are applied in order.
     */
    private _setLayers;
    /** Emits `track` once a section's `track_published` and its receiving transceiver are both
     * known; a section reused for another track first ends the previous one. */
    private _match;
    private _endRemote;
    /** Opens `source` on device `deviceId` (`''`: the browser's default); a camera asks for the previous camera's size, so
     * the simulcast layers negotiated for it still fit. */
    private _openDevice;
    /**
     * `track` now carries `source`: on the section already sending it, through
     * `replaceTrack` (no offer: same kind, same section), else published anew.
     */
    private _replaceLocal;
    /** Follows the device `track` captures `source` from: when it ends without the SDK
     * stopping it (unplugged, taken by the system), fall back to another device. */
    private _watchDevice;
    /** The device in use for `source` went away: capture from the default one (devices.ts
     * `fallbackDevice`) and keep publishing; none left: the source stops. */
    private _deviceEnded;
    /** The `<audio>` / `<video>` elements of the document showing a received track. */
    private _remoteMediaElements;
    /** Applies the chosen speaker to the elements showing received tracks now. */
    private _applyAudioOutput;
    /** Starts watching how remote video is shown (protocol `track_views`): every view is sent
     * afresh to a new or resumed session. */
    private _startViews;
    /** Finds the `<video>` elements whose `srcObject` holds a remote video track, and watches
     * them; forgets the ones that no longer do. */
    private _scanViews;
    private _scheduleViews;
    /** Measures the watched elements and sends the views that changed (`TrackViews.changed`
     * says which and how). */
    private _sendViews;
    private _participant;
    /** Reads inbound counters per received section and the media server's loss reports. */
    private _poll;
    /** Whether nothing is expected on `mid` now: its publisher muted it, or the media server
     * paused it. */
    private _excused;
    /** Judges connection quality from one reading (quality.ts) and emits what changed. */
    private _updateQuality;
    /** The local candidate id of the selected pair (Chromium's transport stats), if any. */
    /** The media path from the selected candidate pair (`selectedPair`). */
    private _updateRoute;
    /** Recomputes the local media state and every participant's (health.ts). */
    private _updateHealth;
    private _setMediaState;
}
