// rtcd browser SDK: one call (room) over the rtcd-proxy WebSocket protocol (docs/protocol.md).
//
// Plain ES module, no dependencies, no build step: `import { RtcdClient } from '/sdk/client.js'`.
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
//  * relays through TURN when the proxy hands out servers (`joined.ice_servers`): they are
//    merged with `options.iceServers`, and re-applied with `setConfiguration` when the proxy
//    sends fresh credentials (`ice_servers`); `iceTransportPolicy: 'relay'` forces the relay
//    (diagnosis); `client.route` says whether media goes direct or through a relay;
//  * watches media health (getStats every 2 s): a local media state and one per remote
//    participant (see `MediaState`);
//  * never wedges on the browser: each (re)connection gets a fresh message queue, every await
//    on the peer connection is bounded (10 s) and abandoned when the peer connection closes;
//    a step that does not settle, or an offer that gets no answer, reports
//    `negotiation_failed` and reconnects;
//  * surfaces every `error` code and close code of the protocol as an `RtcdError` with the
//    protocol's label;
//  * resumes its session when only the signaling connection was lost (a proxy replica died or
//    restarts, `going_away`, a dropped or silent socket): it keeps the peer connection, so media
//    never stops, and reconnects (to any replica) with `join.resume`; if the media server no
//    longer has the session (`joined.resumed` false) it starts over with a new one;
//  * reconnects with exponential backoff after `media_server_lost` (the media server died or
//    drains) or `media_connection_failed`, or a failed resume, as long as the token is still
//    valid (or `getToken` gives a new one), and never after a token close code (41xx).
//
// Events (all `CustomEvent`s, payload in `detail`; see the typedefs below):
//   state, joined, error, participantjoined, participantleft, participantmedia, track,
//   trackended, mutechanged, voiceactivity, localtrack, localtrackended, mediastate,
//   tokenexpiring, refreshed, iceservers, route, reconnecting, resumed, icerestart, closed,
//   waiting (the room's policy holds this session: `reason` host / lobby, `timeoutSeconds`;
//   `joined` follows once let in), lobbyrequest / lobbyleft (moderators: someone knocks /
//   left the lobby; the current list is `client.lobby`).

/** Close codes of the protocol (docs/protocol.md section 6), by label. */
export const CloseCode = Object.freeze({
  normal: 1000,
  going_away: 1001,
  bad_message: 4000,
  join_timeout: 4001,
  idle_timeout: 4002,
  message_too_large: 4003,
  rate_limited: 4004,
  too_many_connections: 4005,
  too_many_auth_failures: 4006,
  too_many_sessions: 4007,
  media_server_lost: 4008,
  slow_client: 4009,
  media_connection_failed: 4010,
  removed: 4011,
  banned: 4012,
  room_ended: 4013,
  guests_not_allowed: 4014,
  lobby_denied: 4015,
  host_timeout: 4016,
  lobby_timeout: 4017,
  lobby_full: 4018,
  token_missing: 4100,
  token_malformed: 4101,
  token_too_large: 4102,
  token_algorithm_rejected: 4103,
  token_unknown_key: 4104,
  token_bad_signature: 4105,
  token_expired: 4106,
  token_not_yet_valid: 4107,
  token_too_long_lived: 4108,
  token_wrong_issuer: 4109,
  token_wrong_audience: 4110,
  token_wrong_room: 4111,
  token_wildcard_room: 4112,
  token_missing_claim: 4113,
  token_identity_mismatch: 4114,
  keys_unavailable: 4115,
  token_role_unmapped: 4116,
  token_is_server_token: 4117,
  token_revoked: 4118,
  affiliation_denied: 4119,
  affiliation_unavailable: 4120,
});

/**
 * Every `error.code` the proxy sends that is not also a close label (section 4), plus the
 * codes this SDK raises itself (`connection_failed`, `media_failed`, `negotiation_failed`,
 * `dev_token_unavailable` is the demo page's own).
 */
export const ErrorCode = Object.freeze({
  media_unavailable: 'media_unavailable',
  media_refused: 'media_refused',
  forbidden: 'forbidden',
  bad_sdp: 'bad_sdp',
  bad_track: 'bad_track',
  bad_message: 'bad_message',
  /** The media server hit a limit (sessions per call, tracks per session...). */
  media_limit: 'media_limit',
  /** The media server failed to process a message. */
  media_error: 'media_error',
  /** The WebSocket could not be opened, or dropped without a close frame (1006). */
  connection_failed: 'connection_failed',
  /** getUserMedia / getDisplayMedia failed (permission denied, no device). */
  media_failed: 'media_failed',
  /** The browser refused an SDP or candidate, a peer connection step did not settle in
   * time, or no answer came: the SDK reconnects (a new session, a new peer connection). */
  negotiation_failed: 'negotiation_failed',
  /** The browser refused the TURN servers of an `ice_servers` message (setConfiguration). */
  ice_servers_rejected: 'ice_servers_rejected',
  /** (`moderate`) the identity has no session in the room. */
  not_found: 'not_found',
  /** (`moderate`) a malformed request, e.g. a ban longer than a year. */
  bad_request: 'bad_request',
  /** A message other than ping / refresh / leave while the room's policy holds the session. */
  not_admitted: 'not_admitted',
  /** (`moderate` `start_recording`) the room is already being recorded. */
  already_recording: 'already_recording',
  /** (`moderate` `stop_recording`) the room is not being recorded. */
  not_recording: 'not_recording',
  /** (`moderate` `start_recording`) recording is off at the media server. */
  recording_disabled: 'recording_disabled',
  /** (`moderate` `start_recording`) the media server's recording disk is full. */
  disk_full: 'disk_full',
  /** (`moderate` `start_recording`) the room is end-to-end encrypted: it cannot be recorded. */
  encrypted: 'encrypted',
});

/** What a moderator can do from inside the call (`moderate`, docs/protocol.md section 5a). */
export const ModerationAction = Object.freeze({
  kick: 'kick',
  ban: 'ban',
  mute: 'mute',
  request_unmute: 'request_unmute',
  end_room: 'end_room',
  grant_moderator: 'grant_moderator',
  revoke_moderator: 'revoke_moderator',
  admit: 'admit',
  deny: 'deny',
  set_policy: 'set_policy',
  start_recording: 'start_recording',
  stop_recording: 'stop_recording',
});

/** The label of a close code, e.g. 4106 -> `token_expired` (unknown codes: `close_<code>`). */
export function closeLabel(code) {
  for (const [label, c] of Object.entries(CloseCode)) {
    if (c === code) return label;
  }
  return code === 1006 ? ErrorCode.connection_failed : `close_${code}`;
}

/**
 * Token problems (4100-4199) except the temporary `keys_unavailable` and
 * `affiliation_unavailable`: never retried.
 */
export function isTokenCloseCode(code) {
  return code >= 4100 && code <= 4199 && code !== CloseCode.keys_unavailable
    && code !== CloseCode.affiliation_unavailable;
}

/** Close codes after which reconnecting can help (section 6, column "retry?"). */
const RETRYABLE = new Set([
  1001, 1006, CloseCode.join_timeout, CloseCode.idle_timeout, CloseCode.rate_limited,
  CloseCode.too_many_connections, CloseCode.too_many_auth_failures,
  CloseCode.media_server_lost, CloseCode.keys_unavailable, CloseCode.media_connection_failed,
  CloseCode.affiliation_unavailable,
]);
/**
 * Closes that lost only the signaling connection (the proxy went away or restarts, the
 * network dropped, the socket went silent): the media server keeps the session, media
 * flowing, for a grace period, and `join.resume` takes it over with the same peer connection.
 */
const RESUMABLE = new Set([1001, 1006, CloseCode.idle_timeout]);
/** First delay before resuming (jittered): the media is still flowing, so be quick. */
const RESUME_DELAY_MS = 150;
/** Codes that mean "slow down": the backoff starts higher. */
const SLOW_DOWN = new Set([
  CloseCode.rate_limited, CloseCode.too_many_connections, CloseCode.too_many_auth_failures,
  CloseCode.keys_unavailable, CloseCode.affiliation_unavailable,
]);

/**
 * An error of the protocol or of the SDK. `code` is the protocol label (an `ErrorCode` or a
 * `CloseCode` key); `closeCode` is set when the connection closed because of it; `fatal` means
 * the client gave up (no reconnect follows).
 */
export class RtcdError extends Error {
  /**
   * @param {string} code protocol label
   * @param {string} message human-readable detail (from the proxy when it sent one)
   * @param {{closeCode?: number, request?: string, fatal?: boolean, cause?: unknown}} [more]
   */
  constructor(code, message, more = {}) {
    super(message || code, { cause: more.cause });
    this.name = 'RtcdError';
    /** @type {string} */
    this.code = code;
    /** @type {number|undefined} */
    this.closeCode = more.closeCode;
    /** @type {string|undefined} the client message type the proxy answered */
    this.request = more.request;
    /** @type {boolean} */
    this.fatal = Boolean(more.fatal);
  }
}

/**
 * @typedef {'microphone'|'camera'|'screen'|'screen_audio'} TrackSource
 * @typedef {{wait_for_host?: boolean, lobby?: boolean, guests_allowed?: boolean,
 *   wait_timeout_seconds?: number, opened_by?: 'moderator'|'member'}} RoomPolicy
 * @typedef {'idle'|'connecting'|'waiting'|'connected'|'reconnecting'|'closed'|'error'} ClientState
 * @typedef {'connecting'|'connected'|'reconnecting'|'poor'|'failed'} MediaState
 *   This client's media: `connecting` until its peer connection is connected, `connected`,
 *   `reconnecting` while the peer connection is `disconnected` (ICE lost, may recover),
 *   `poor` while connected but expected inbound media stalls or loss is heavy, `failed` (peer
 *   connection failed, or no media server).
 * @typedef {'connecting'|'connected'|'poor'} RemoteMediaState
 *   A remote participant's media as received here: `connecting` (announced, none of their
 *   media has arrived yet), `connected` (their media arrives; also a participant who
 *   publishes nothing, once this client's own media is connected), `poor` (one of their
 *   unmuted tracks stalled for more than 3 s, or more than 10 % loss).
 * @typedef {{publish_audio: boolean, publish_video: boolean, publish_screen: boolean,
 *   subscribe: boolean}} Permissions
 * @typedef {{session_id: number, room: string, identity: string, name?: string,
 *   tenant?: string, role: string, permissions: Permissions, expires_at: number,
 *   media: boolean, ice_servers?: RTCIceServer[], ice_servers_expires_at?: number,
 *   resume_token?: string, resumed?: boolean,
 *   participants?: {identity: string, name?: string}[]}} JoinedInfo
 * @typedef {{path: 'direct'|'relayed', candidateType: string, protocol: string,
 *   relayProtocol?: string, address?: string}} Route
 *   How this client's media leaves it, from the selected ICE candidate pair's local
 *   candidate: `relayed` when it is a TURN relay candidate (`relayProtocol`: how the browser
 *   reaches the TURN server, `udp`, `tcp` or `tls`), else `direct`.
 * @typedef {{identity: string, name?: string, role?: string,
 *   muted: Partial<Record<TrackSource, boolean>>, speaking: boolean,
 *   media: RemoteMediaState}} Participant
 * @typedef {{identity: string, source: TrackSource, trackId: string, mid: string,
 *   track: MediaStreamTrack, stream: MediaStream}} RemoteTrack
 * @typedef {{reason: 'refresh'|'reconnect', room: string}} TokenRequest
 * @typedef {{
 *   room: string,
 *   token: string,
 *   url?: string,
 *   getToken?: (request: TokenRequest) => Promise<string>,
 *   iceServers?: RTCIceServer[],
 *   iceTransportPolicy?: RTCIceTransportPolicy,
 *   reconnect?: {maxAttempts?: number, baseDelayMs?: number, maxDelayMs?: number},
 *   pingIntervalMs?: number,
 *   pongTimeoutMs?: number,
 *   stepTimeoutMs?: number,
 *   statsIntervalMs?: number,
 *   simulcast?: boolean,
 *   adaptiveStream?: boolean,
 * }} ClientOptions
 */

/**
 * The camera's simulcast layers, lowest first (the order the media server expects, protocol
 * section 4a): a quarter (at 15 frames a second), half and full of the captured resolution,
 * each capped so the three together stay under about 2.1 Mbit/s. A subscriber gets one of
 * them, the best its link and its display need (docs/adaptive-video.md). Sent unless
 * `simulcast: false` (then the camera is the full layer alone, `cameraLayer()`).
 * @type {RTCRtpEncodingParameters[]}
 */
export const CAMERA_LAYERS = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 50000, maxFramerate: 15 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1500000 },
];

/**
 * The simulcast layers of a camera whose frames are `width` x `height`: all of
 * `CAMERA_LAYERS` from 960 x 540 pixels up; `q` and `f` from 480 x 270; below, one layer
 * (no simulcast). Chromium (libwebrtc's simulcast table, by the count of pixels) encodes at
 * most that many layers and drops the ones above: a 640 x 480 camera (what `video: true`
 * gives) sent as `q;h;f` never sent `f` while `q` was on, and every subscriber got half the
 * resolution. Unknown size: all three.
 * @param {number | undefined} width @param {number | undefined} height
 * @returns {RTCRtpEncodingParameters[]}
 */
export function cameraLayers(width, height) {
  const [q, , f] = CAMERA_LAYERS;
  const pixels = (width || 0) * (height || 0);
  if (pixels && pixels < 480 * 270) return cameraLayer();
  const layers = !pixels || pixels >= 960 * 540 ? CAMERA_LAYERS : [q, f];
  return layers.map((l) => ({ ...l }));
}

/** A camera sent without simulcast: one layer, capped like the full one.
 * @returns {RTCRtpEncodingParameters[]} */
function cameraLayer() {
  return [{ maxBitrate: CAMERA_LAYERS[CAMERA_LAYERS.length - 1].maxBitrate }];
}

/** A screen share is one layer at full resolution (text must stay readable; the browser
 * lowers its frame rate, not its resolution, under `contentHint = 'detail'`), capped here. */
const SCREEN_MAX_BITRATE = 1500000;

/** Adaptive stream: how often the SDK looks for `<video>` elements showing remote tracks (an
 * element that starts showing one is watched from then on). */
const VIEW_SCAN_MS = 1000;
/** Adaptive stream: views go out at most this often (a window being resized changes sizes
 * many times a second, and the proxy limits messages per second). */
const VIEW_SEND_MS = 300;
/** The most views per `track_views` message (the protocol's limit). */
const MAX_TRACK_VIEWS = 64;

/** Seconds of token validity a reconnect needs, else it asks `getToken` (or gives up). */
const TOKEN_MARGIN_S = 5;
/** A remote track without new packets for this long is stalled. */
const STALL_MS = 3000;
/** A new remote track that has produced nothing yet is stalled only after this long: it waits
 * for a renegotiation round, its publisher's keyframe and a first decode, which on a busy
 * device took up to 7 s (a screen share in two Firefox pages); calling its participant's
 * connection poor meanwhile is a false alarm. */
const START_MS = 10000;
/** Inbound loss above this fraction is poor when it lasts `POOR_LOSS_INTERVALS` stats
 * intervals in a row: a single burst (a sender resuming with a jump in its sequence numbers,
 * as after a camera comes back on) is not a poor connection. */
const POOR_LOSS = 0.1;
const POOR_LOSS_INTERVALS = 2;
/** How long the peer connection may stay `failed` before the SDK gives up on the session
 * itself (the media server normally closes it first, with 4010 and a clearer message). */
const FAILED_GRACE_MS = 5000;
/** How long ICE may stay `disconnected` before the SDK restarts it (protocol section 4a): a
 * moved device (new Wi-Fi, VPN up, cable to Wi-Fi) keeps nothing of its old address, and
 * only new credentials make the browser gather on the network it has now. Short blips recover
 * by themselves inside this time; `failed` restarts at once. */
const ICE_RESTART_AFTER_MS = 2000;

/** Media server errors that refuse the offer in flight (its SDP, or a limit it hit). */
const REFUSES_OFFER = new Set([ErrorCode.bad_sdp, ErrorCode.bad_track, ErrorCode.media_limit]);

/**
 * The size (device pixels) at which `el` draws its video: its box, or with `object-fit: cover`
 * the picture scaled to cover it (larger than the box on one side). With the default
 * `contain`, the box: the media server takes the lowest layer that reaches either side.
 * @param {HTMLVideoElement} el @param {number} dpr
 * @returns {[number, number]}
 */
function drawnSize(el, dpr) {
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
export class RtcdClient extends EventTarget {
  /** @param {ClientOptions} options */
  constructor(options) {
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
      reconnect: { maxAttempts: 8, baseDelayMs: 500, maxDelayMs: 15000, ...(options.reconnect || {}) },
    };
    this.url = options.url || defaultUrl();
    /** @type {string} */
    this.token = options.token;
    /** @type {ClientState} */
    this.state = 'idle';
    /** @type {MediaState} this client's media health (see the typedef) */
    this.mediaState = 'connecting';
    /** @type {JoinedInfo|null} the current session's `joined` */
    this.session = null;
    /** @type {Map<string, Participant>} remote participants by identity */
    this.participants = new Map();
    /**
     * The room's recording while it records (`recording_started`), else null. Show it: the
     * participants' consent depends on it.
     * @type {{recordingId: string, startedAtMs: number, startedBy: string} | null}
     */
    this.recording = null;
    /** Moderators: who knocks at the lobby now, by identity (`lobbyrequest` / `lobbyleft`).
     * @type {Map<string, {identity: string, name?: string, role?: string, since: number}>} */
    this.lobby = new Map();
    /** Set while the room's policy holds this session (`waiting`), null once joined.
     * @type {{room: string, reason: 'host'|'lobby', timeoutSeconds: number}|null} */
    this.waiting = null;
    /** @type {Map<string, RemoteTrack>} received tracks by the mid of their section */
    this.remoteTracks = new Map();
    /** @type {Map<TrackSource, MediaStreamTrack>} published (or previewed) local tracks */
    this.localTracks = new Map();
    /** @type {Set<TrackSource>} locally muted sources */
    this.muted = new Set();
    /** Successful joins so far (1 + reconnects). */
    this.joins = 0;
    /** @type {RTCIceServer[]} TURN servers with credentials from the proxy (current session) */
    this.proxyIceServers = [];
    /** @type {number} when `proxyIceServers`' credentials expire (Unix s; 0 = none) */
    this.iceServersExpiresAt = 0;
    /** @type {Route|null} the current media path (null until a candidate pair is selected) */
    this.route = null;

    /** @type {WebSocket|null} */ this._ws = null;
    /** @type {RTCPeerConnection|null} */ this._pc = null;
    /** Bumped by every teardown: work of an older session sees it changed and stops. */
    this._gen = 0;
    /** Rejects the pending steps of the current peer connection when it is closed. */
    /** @type {Promise<never>} */ this._pcClosed = new Promise(() => {});
    /** @type {(e: Error) => void} */ this._abandon = () => {};
    /** @type {Map<TrackSource, RTCRtpTransceiver>} sending sections by source */
    this._transceivers = new Map();
    /** Receiving sections the media server asked for (`negotiation_needed`). */
    this._need = { audio: 0, video: 0 };
    /** An offer should be made once the peer connection is stable again. */
    this._offerWanted = false;
    /** An offer was sent and its answer has not been applied yet. */
    this._awaitingAnswer = false;
    this._answerTimer = 0;
    /** @type {RTCIceCandidateInit[]} media server candidates that came before its first answer */
    this._earlyCandidates = [];
    /** @type {Map<string, {identity: string, source: TrackSource, trackId: string}>}
     * `track_published` by mid, until unpublished */
    this._published = new Map();
    /** @type {Map<string, string>} mids the media server paused (`track_paused`), with why */
    this._paused = new Map();
    /** Adaptive stream: `<video>` elements showing a remote video track, watched for their
     * size and visibility, with whether they intersect the viewport.
     * @type {Map<HTMLVideoElement, {intersecting: boolean}>} */
    this._viewed = new Map();
    /** @type {Map<string, string>} the last view sent per mid (a key to compare) */
    this._viewsSent = new Map();
    this._viewTimer = 0;
    this._viewScanTimer = 0;
    /** @type {ResizeObserver|null} */ this._resizeObserver = null;
    /** @type {IntersectionObserver|null} */ this._intersectionObserver = null;
    /** @type {WeakMap<RTCRtpSender, Promise<void>>} the last layer change of each sender */
    this._layerChanges = new WeakMap();
    /** @type {Map<string, {packets: number, progress: number, lost: number, progressAt: number,
     *   flowed: boolean, loss: number, lossyRuns: number}>} inbound counters by mid (progress:
     *   frames decoded for video, packets for audio) */
    this._flow = new Map();
    /** When the inbound counters were last read: health is judged as of then. A stall is
     * time without progress between readings; judging it at an event between readings (a
     * participant joining) against the clock called a flowing track stalled whenever the
     * browser was slow to give its statistics (a busy Firefox at a renegotiation). */
    this._readAt = 0;
    /** Outbound loss reported by the media server (RTCP), over the last interval. */
    this._outboundLoss = 0;
    this._statsTimer = 0;
    this._failedTimer = 0;
    this._iceRestartTimer = 0;
    /** ICE restarts of the current peer connection (event `icerestart`). */
    this._iceRestarts = 0;
    /** Server messages are handled one at a time, in order (SDP steps are async); a new
     * chain per session, so a new session never waits behind an old one. */
    this._queue = Promise.resolve();
    this._attempt = 0;
    this._leaving = false;
    this._retryTimer = 0;
    this._pingTimer = 0;
    this._pongTimer = 0;
    this._pingId = 0;
    /** @type {{code: string, message: string}|null} the `error` that announced a close */
    this._lastError = null;
    /** Set while a lost connection is being resumed: the peer connection is kept (media keeps
     * flowing) and the next `join` carries `resume`. */
    this._resuming = false;
    /** @type {((info: JoinedInfo) => void)|null} */ this._onFirstJoin = null;
    /** @type {((e: RtcdError) => void)|null} */ this._onFirstFail = null;
  }

  // ---- public API -------------------------------------------------------------------------

  /**
   * Opens the connection and joins. Resolves with the `joined` info of the first session;
   * rejects with an `RtcdError` if the client gives up before joining.
   * @returns {Promise<JoinedInfo>}
   */
  connect() {
    if (this.state !== 'idle') return Promise.reject(new RtcdError('bad_message', 'connect() called twice'));
    const joined = new Promise((resolve, reject) => {
      this._onFirstJoin = resolve;
      this._onFirstFail = reject;
    });
    this._open();
    return joined;
  }

  /**
   * Captures and publishes the microphone and / or camera. Tracks are kept across reconnects.
   * Without a media server the tracks are still captured (local preview).
   * @param {{audio?: boolean|MediaTrackConstraints, video?: boolean|MediaTrackConstraints}} [what]
   * @returns {Promise<MediaStream>} the local stream (for a preview)
   */
  async publish(what = { audio: true, video: true }) {
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: what.audio ?? false, video: what.video ?? false });
    } catch (cause) {
      const error = new RtcdError(ErrorCode.media_failed, `cannot open camera / microphone: ${cause && cause.message || cause}`, { cause });
      this._emit('error', { error });
      throw error;
    }
    for (const track of stream.getTracks()) {
      this._addLocal(track.kind === 'audio' ? 'microphone' : 'camera', track);
    }
    return stream;
  }

  /**
   * Stops publishing a source (camera off, microphone off): the track is stopped and its
   * section stops sending (kept for the next time), then the SDK offers again.
   * @param {TrackSource} source
   */
  unpublish(source) {
    if (source === 'screen' || source === 'screen_audio') {
      this.stopScreenShare();
      return;
    }
    this._removeLocal(source);
  }

  /**
   * Shares a screen (getDisplayMedia) as source `screen`, and its sound (when the browser
   * gives audio) as `screen_audio`, each on its own section.
   * @returns {Promise<MediaStream>}
   */
  async startScreenShare() {
    if (this.session && !this.session.permissions.publish_screen) {
      const error = new RtcdError(ErrorCode.forbidden, 'this token does not allow screen sharing', { request: 'screen_share_start' });
      this._emit('error', { error });
      throw error;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: true });
    } catch (cause) {
      const error = new RtcdError(ErrorCode.media_failed, `screen share refused: ${cause && cause.message || cause}`, { cause });
      this._emit('error', { error });
      throw error;
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
  stopScreenShare() {
    const had = this.localTracks.has('screen') || this.localTracks.has('screen_audio');
    this._removeLocal('screen');
    this._removeLocal('screen_audio');
    if (had) this._sendRelayed({ type: 'screen_share_stop' });
  }

  /**
   * Mutes or unmutes a local source: the track stops producing media at once (`enabled`), and
   * the server is told so it stops forwarding and tells the others (`mute_changed`).
   * @param {TrackSource} source
   * @param {boolean} muted
   */
  setMuted(source, muted) {
    const track = this.localTracks.get(source);
    if (track) track.enabled = !muted;
    if (muted) this.muted.add(source); else this.muted.delete(source);
    this._sendRelayed({ type: muted ? 'mute' : 'unmute', source });
  }

  /**
   * A moderator's action on this room (moderators only; others get an `error` `forbidden`).
   * The outcome arrives as a `moderated` event, or an `error` event with `request: 'moderate'`.
   * @param {keyof typeof ModerationAction} action
   * @param {{identity?: string, source?: TrackSource, banSeconds?: number, reason?: string, policy?: RoomPolicy, reset?: boolean}} [target]
   */
  moderate(action, target = {}) {
    const m = { type: 'moderate', action };
    if (target.identity !== undefined) m.identity = target.identity;
    if (target.source !== undefined) m.source = target.source;
    if (target.banSeconds !== undefined) m.ban_seconds = target.banSeconds;
    if (target.reason !== undefined) m.reason = target.reason;
    if (target.policy !== undefined) m.policy = target.policy;
    if (target.reset !== undefined) m.reset = target.reset;
    this._send(m);
  }

  /** Moderators: lets someone waiting in the lobby in (`lobbyrequest` names them). */
  admit(identity) {
    this.moderate('admit', { identity });
  }

  /** Moderators: turns someone waiting in the lobby away (they are closed with 4015). */
  deny(identity) {
    this.moderate('deny', { identity });
  }

  /**
   * Moderators: changes the room's entry policy (docs/protocol.md section 5b), e.g.
   * `setRoomPolicy({lobby: false})` lets everyone knocking in.
   * @param {RoomPolicy} policy @param {{reset?: boolean}} [options]
   */
  setRoomPolicy(policy, options = {}) {
    this.moderate('set_policy', { policy, reset: options.reset });
  }

  /** Moderators with the `record` permission: starts recording the room. */
  startRecording() {
    this.moderate('start_recording');
  }

  /** Moderators with the `record` permission: stops the room's recording. */
  stopRecording() {
    this.moderate('stop_recording');
  }

  /** Leaves the room: tells the proxy, stops local tracks, closes everything. */
  leave() {
    this._leaving = true;
    clearTimeout(this._retryTimer);
    if (this._ws && this._ws.readyState === WebSocket.OPEN) this._send({ type: 'leave' });
    for (const source of [...this.localTracks.keys()]) this._removeLocal(source);
    this._teardown();
    if (this._ws && this._ws.readyState !== WebSocket.OPEN) this._ws.close(1000);
    this._setState('closed');
    this._emit('closed', { code: CloseCode.normal, label: 'normal', byClient: true });
  }

  /** The RTCPeerConnection of the current session (for getStats), if any. */
  get peerConnection() {
    return this._pc;
  }

  /** ICE restarts of the current peer connection (network changes survived in place). */
  get iceRestarts() {
    return this._iceRestarts;
  }

  // ---- connection -------------------------------------------------------------------------

  _open() {
    this._setState(this.joins === 0 ? 'connecting' : 'reconnecting');
    this._lastError = null;
    // A new session starts with a fresh chain: nothing of the previous one can hold it up.
    // A resumed one keeps its peer connection, and the steps queued for it.
    if (!this._resuming) this._queue = Promise.resolve();
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (cause) {
      this._fail(new RtcdError(ErrorCode.connection_failed, `bad signaling URL ${this.url}`, { cause, fatal: true }));
      return;
    }
    this._ws = ws;
    ws.addEventListener('open', () => {
      const join = { type: 'join', room: this.options.room, token: this.token };
      if (this._resuming && this.session && this.session.resume_token) join.resume = this.session.resume_token;
      this._send(join);
    });
    ws.addEventListener('message', (event) => this._onMessage(ws, event));
    ws.addEventListener('close', (event) => this._onClose(ws, event));
  }

  /** @param {WebSocket} ws @param {MessageEvent} event */
  _onMessage(ws, event) {
    if (ws !== this._ws) return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      console.warn('rtcd: ignoring a non-JSON message');
      return;
    }
    if (this._resuming && message && message.type === 'joined') {
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

  /**
   * Runs `step` after everything queued before it, for this session only.
   * @param {() => unknown} step @param {string} what
   */
  _enqueue(step, what) {
    const gen = this._gen;
    this._queue = this._queue
      .then(() => (gen === this._gen ? step() : undefined))
      .catch((cause) => this._stepFailed(cause, gen, what));
  }

  /** A queued step threw: a browser refusal is reported; a step that did not settle in
   * time means this peer connection cannot be trusted any more, so the session restarts. */
  _stepFailed(cause, gen, what) {
    if (gen !== this._gen || cause instanceof Abandoned) return;
    const error = cause instanceof RtcdError ? cause
      : new RtcdError(ErrorCode.negotiation_failed, `${what}: ${cause && cause.message || cause}`, { cause });
    if (error.restart) {
      this._restart(error);
    } else {
      this._emit('error', { error });
    }
  }

  /**
   * Bounds a peer connection step: rejects with `negotiation_failed` (and a restart) after
   * `stepTimeoutMs`, and with `Abandoned` when the peer connection is closed meanwhile
   * (Chromium never settles promises of a closed peer connection).
   * @template T @param {Promise<T>} promise @param {string} what @returns {Promise<T>}
   */
  _bounded(promise, what) {
    let timer = 0;
    const limit = this.options.stepTimeoutMs;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => {
        const error = new RtcdError(ErrorCode.negotiation_failed, `${what} did not complete within ${limit / 1000} s`);
        error.restart = true;
        reject(error);
      }, limit);
    });
    return Promise.race([promise, timeout, this._pcClosed]).finally(() => clearTimeout(timer));
  }

  /** @param {WebSocket} ws @param {CloseEvent} event */
  _onClose(ws, event) {
    if (ws !== this._ws) return;
    this._ws = null;
    const code = event.code;
    if (!this._leaving && this._canResume(code)) {
      this._suspend();
      this._resumeSoon(new RtcdError(event.reason || closeLabel(code), code === 1006
        ? `lost the signaling connection to ${this.url}; resuming` : `${event.reason || closeLabel(code)}; resuming`, { closeCode: code }));
      return;
    }
    this._teardown();
    if (this._leaving) return;
    const label = event.reason || closeLabel(code);
    const announced = this._lastError && this._lastError.code === label ? this._lastError.message : '';
    const message = announced || (code === 1006 ? `cannot reach the signaling server at ${this.url}` : label);
    if (code === CloseCode.normal) {
      this._setState('closed');
      this._emit('closed', { code, label, byClient: false });
      return;
    }
    this._retry(new RtcdError(label, message, { closeCode: code }), code);
  }

  /**
   * Ends the current session from this side (a peer connection step hung, no answer came,
   * the media connection failed) and reconnects as after a retryable close.
   * @param {RtcdError} error
   */
  _restart(error) {
    const ws = this._ws;
    if (!ws || this._leaving) return;
    this._ws = null;
    // The proxy ends the session at the media server: a new one follows.
    try { ws.close(1000); } catch { /* already closing */ }
    this._teardown();
    this._retry(error, 1006);
  }

  /**
   * Whether a close lost only the signaling connection of a live session that the media server
   * offered to keep (`joined.resume_token`): then the peer connection stays.
   */
  _canResume(code) {
    const pc = this._pc;
    return RESUMABLE.has(code) && !!(this.session && this.session.resume_token && this.session.media)
      && !!pc && pc.connectionState !== 'failed' && pc.connectionState !== 'closed'
      && this._attempt < this.options.reconnect.maxAttempts;
  }

  /** Signaling is gone, media is not: stop what needs the socket, keep the peer connection. */
  _suspend() {
    clearInterval(this._pingTimer);
    clearTimeout(this._pongTimer);
    this._resuming = true;
  }

  /** Reconnects soon with `join.resume` (the state is `reconnecting`; media keeps flowing). */
  _resumeSoon(error) {
    this._emit('error', { error });
    const delay = (this._attempt === 0 ? RESUME_DELAY_MS : Math.min(this.options.reconnect.maxDelayMs,
      this.options.reconnect.baseDelayMs * 2 ** this._attempt)) * (0.75 + Math.random() * 0.5);
    this._attempt += 1;
    this._setState('reconnecting');
    this._emit('reconnecting', { attempt: this._attempt, delayMs: Math.round(delay), error, resuming: true });
    this._retryTimer = setTimeout(() => this._reconnect(), delay);
  }

  /** Reconnects after `error` if `code` is retryable and attempts remain, else gives up. */
  _retry(error, code) {
    const retry = RETRYABLE.has(code) && this._attempt < this.options.reconnect.maxAttempts;
    error.fatal = !retry;
    if (!retry) {
      this._fail(error);
      return;
    }
    this._emit('error', { error });
    const r = this.options.reconnect;
    const base = SLOW_DOWN.has(code) ? r.baseDelayMs * 8 : r.baseDelayMs;
    const delay = Math.min(r.maxDelayMs, base * 2 ** this._attempt) * (0.75 + Math.random() * 0.5);
    this._attempt += 1;
    this._setState('reconnecting');
    this._emit('reconnecting', { attempt: this._attempt, delayMs: Math.round(delay), error });
    this._retryTimer = setTimeout(() => this._reconnect(), delay);
  }

  async _reconnect() {
    if (this._leaving) return;
    const expiresAt = this.session ? this.session.expires_at : Infinity;
    if (expiresAt - TOKEN_MARGIN_S <= Date.now() / 1000) {
      if (!this.options.getToken) {
        this._fail(new RtcdError('token_expired', 'the token has expired; cannot reconnect without a new one', { fatal: true }));
        return;
      }
      try {
        this.token = await this.options.getToken({ reason: 'reconnect', room: this.options.room });
      } catch (cause) {
        this._fail(new RtcdError('token_expired', `no new token to reconnect with: ${cause && cause.message || cause}`, { cause, fatal: true }));
        return;
      }
    }
    this._open();
  }

  /** Gives up for good: `error` event, state `error`, and the pending `connect()` rejects. */
  _fail(error) {
    error.fatal = true;
    this._teardown();
    this._emit('error', { error });
    this._setState('error');
    this._setMediaState('failed');
    this._emit('closed', { code: error.closeCode ?? 0, label: error.code, byClient: false, error });
    if (this._onFirstFail) {
      this._onFirstFail(error);
      this._onFirstJoin = this._onFirstFail = null;
    }
  }

  /** Ends the current session's peer connection and timers; keeps local tracks. */
  _teardown() {
    this._resuming = false;
    this._gen += 1;
    clearInterval(this._pingTimer);
    clearTimeout(this._pongTimer);
    clearInterval(this._statsTimer);
    clearTimeout(this._answerTimer);
    clearTimeout(this._failedTimer);
    clearTimeout(this._iceRestartTimer);
    clearInterval(this._viewScanTimer);
    clearTimeout(this._viewTimer);
    this._viewTimer = 0;
    this._viewsSent.clear();
    if (this._pc) {
      this._pc.close();
      this._pc = null;
      this._abandon(new Abandoned('the peer connection was closed'));
    }
    this._transceivers.clear();
    // A moderator's new session is sent the lobby as it is then.
    for (const identity of [...this.lobby.keys()]) {
      this.lobby.delete(identity);
      this._emit('lobbyleft', { identity, outcome: 'reconnecting' });
    }
    for (const [mid, remote] of [...this.remoteTracks]) this._endRemote(mid, remote);
    this._published.clear();
    this._paused.clear();
    this._flow.clear();
    if (this.route) {
      const previous = this.route;
      this.route = null;
      this._emit('route', { route: null, previous });
    }
    for (const identity of [...this.participants.keys()]) {
      this.participants.delete(identity);
      this._emit('participantleft', { identity });
    }
    this._need = { audio: 0, video: 0 };
    this._earlyCandidates = [];
    this._offerWanted = this._awaitingAnswer = false;
    if (!this._leaving && this.mediaState !== 'failed') this._setMediaState('connecting');
  }

  /** @param {object} message */
  _send(message) {
    if (this._ws && this._ws.readyState === WebSocket.OPEN) this._ws.send(JSON.stringify(message));
  }

  /** A relayed message: only meaningful with a media server (else the proxy answers
   * `media_unavailable` to each, which the client already reported once at join). */
  _sendRelayed(message) {
    if (this.session && this.session.media) this._send(message);
  }

  _startPings() {
    clearInterval(this._pingTimer);
    const every = this.options.pingIntervalMs;
    if (!every) return;
    this._pingTimer = setInterval(() => {
      const id = ++this._pingId;
      this._send({ type: 'ping', id });
      clearTimeout(this._pongTimer);
      // A socket that stopped answering is dead even if the browser has not noticed yet.
      this._pongTimer = setTimeout(() => {
        const ws = this._ws;
        if (!ws) return;
        ws.close(4002, 'idle_timeout');
        this._onClose(ws, /** @type {CloseEvent} */ ({ code: CloseCode.idle_timeout, reason: 'idle_timeout' }));
      }, this.options.pongTimeoutMs);
    }, every);
  }

  // ---- server messages --------------------------------------------------------------------

  /** @param {any} m */
  async _handle(m) {
    switch (m.type) {
      case 'joined': return this._onJoined(m);
      case 'waiting':
        // Held by the room's policy: no media yet, but the socket must stay alive.
        this.waiting = { room: m.room, reason: m.reason, timeoutSeconds: Number(m.timeout_seconds) || 0 };
        this._startPings();
        this._setState('waiting');
        this._emit('waiting', this.waiting);
        return;
      case 'lobby_request': {
        const entry = { identity: m.identity, name: m.name, role: m.role, since: Date.now() };
        this.lobby.set(m.identity, entry);
        this._emit('lobbyrequest', entry);
        return;
      }
      case 'lobby_left':
        this.lobby.delete(m.identity);
        this._emit('lobbyleft', { identity: m.identity, outcome: m.outcome });
        return;
      case 'error': return this._onError(m);
      case 'pong': clearTimeout(this._pongTimer); return;
      case 'token_expiring': return this._onTokenExpiring(m);
      case 'refreshed':
        if (this.session) Object.assign(this.session, { expires_at: m.expires_at, permissions: m.permissions });
        this._emit('refreshed', { expiresAt: m.expires_at, permissions: m.permissions });
        return;
      case 'ice_servers': return this._onIceServers(m.ice_servers, m.expires_at);
      case 'permissions_changed':
        if (this.session) Object.assign(this.session, { role: m.role, permissions: m.permissions });
        // Sources no longer allowed are stopped here too: the media server already drops them.
        for (const [source, cap] of [['microphone', 'publish_audio'], ['camera', 'publish_video'], ['screen', 'publish_screen'], ['screen_audio', 'publish_screen']]) {
          if (m.permissions && m.permissions[cap] === false && this.localTracks.has(source)) this._removeLocal(source);
        }
        this._emit('permissionschanged', { role: m.role, permissions: m.permissions });
        return;
      case 'muted_by_moderator': {
        const track = this.localTracks.get(m.source);
        if (track) track.enabled = false;
        this.muted.add(m.source);
        this._emit('mutedbymoderator', { source: m.source });
        return;
      }
      case 'unmute_requested':
        this._emit('unmuterequested', { source: m.source });
        return;
      case 'moderated':
        this._emit('moderated', { action: m.action, identity: m.identity, sessions: m.sessions, recordingId: m.recording_id });
        return;
      case 'recording_started':
        this.recording = { recordingId: m.recording_id, startedAtMs: m.started_at_ms, startedBy: m.started_by };
        this._emit('recordingstarted', this.recording);
        return;
      case 'recording_stopped':
        this.recording = null;
        this._emit('recordingstopped', { recordingId: m.recording_id, reason: m.reason });
        return;
      case 'answer': return this._onAnswer(m);
      case 'negotiation_needed':
        this._need = { audio: Number(m.audio) || 0, video: Number(m.video) || 0 };
        this._wantOffer();
        return;
      case 'candidate': return this._onCandidate(m);
      case 'participant_joined':
        this._participantJoined(m.participant || {});
        this._updateHealth();
        return;
      case 'participant_left':
        this._participantLeft(m.identity);
        return;
      case 'track_published':
        // A section carrying a new track is not paused (whatever it carried before was).
        this._paused.delete(String(m.mid));
        this._published.set(String(m.mid), { identity: m.identity, source: m.source, trackId: m.track_id });
        this._match(String(m.mid));
        return;
      case 'layers_wanted':
        this._setLayers(String(m.mid), new Set(m.rids || []));
        return;
      case 'track_paused':
      case 'track_resumed': {
        const mid = String(m.mid);
        const paused = m.type === 'track_paused';
        if (paused) this._paused.set(mid, m.reason);
        else this._paused.delete(mid);
        const remote = this.remoteTracks.get(mid);
        const flow = this._flow.get(mid);
        // A resumed track starts again from a keyframe: give it the start grace period.
        if (flow && !paused) {
          flow.progressAt = performance.now();
          flow.flowed = false;
        }
        if (remote) {
          this._emit(paused ? 'trackpaused' : 'trackresumed', {
            identity: remote.identity, source: remote.source, trackId: remote.trackId, mid,
            ...(paused && { reason: m.reason }),
          });
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
          const flow = this._flow.get(mid);
          if (flow && remote.identity === m.identity && remote.source === m.source) flow.progressAt = performance.now();
        }
        this._emit('mutechanged', { identity: m.identity, source: m.source, muted: m.muted });
        return;
      }
      case 'voice_activity': {
        const speakers = new Set(m.speakers || []);
        for (const p of this.participants.values()) p.speaking = speakers.has(p.identity);
        this._emit('voiceactivity', { speakers: [...speakers] });
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
      default:
        console.warn(`rtcd: ignoring unknown message type \`${m.type}\``);
    }
  }

  /** @param {JoinedInfo & {type: string}} m */
  _onJoined(m) {
    const { type: _type, ...info } = m;
    if (m.resumed && this._pc) return this._onResumed(info);
    this.session = info;
    // The media server says again, right after, if the room records.
    this.recording = null;
    this.waiting = null;
    this.joins += 1;
    // Before the peer connection exists: it is created with them.
    this.proxyIceServers = Array.isArray(m.ice_servers) ? m.ice_servers : [];
    this.iceServersExpiresAt = Number(m.ice_servers_expires_at) || 0;
    this._attempt = 0;
    this._startPings();
    if (info.media) {
      this._createPeerConnection();
      this._startViews();
      for (const source of this.muted) this._send({ type: 'mute', source });
      // Section 4a step 1: the client's first offer, even with nothing to send.
      this._wantOffer();
    } else {
      this._setMediaState('failed');
    }
    this._setState('connected');
    this._emit('joined', info);
    if (this._onFirstJoin) {
      this._onFirstJoin(info);
      this._onFirstJoin = this._onFirstFail = null;
    }
  }

  /**
   * The session was taken over through a new connection: same peer connection, media never
   * stopped. Catch up on what was missed: the participants now, our mute states, and a fresh
   * offer (an offer or answer may have been lost with the old connection).
   * @param {JoinedInfo} info
   */
  _onResumed(info) {
    this.session = info;
    this.recording = null;
    this.waiting = null;
    this._attempt = 0;
    this.proxyIceServers = Array.isArray(info.ice_servers) ? info.ice_servers : this.proxyIceServers;
    this.iceServersExpiresAt = Number(info.ice_servers_expires_at) || this.iceServersExpiresAt;
    this._startPings();
    const now = new Set();
    for (const p of Array.isArray(info.participants) ? info.participants : []) {
      now.add(p.identity);
      this._participantJoined(p);
    }
    for (const identity of [...this.participants.keys()]) {
      if (!now.has(identity)) this._participantLeft(identity);
    }
    for (const source of this.muted) this._send({ type: 'mute', source });
    this._startViews();
    if (this._awaitingAnswer) {
      this._offerWanted = true;
      this._enqueue(() => this._rollback(), 'taking back an offer lost with the connection');
    } else {
      this._wantOffer();
    }
    this._setState('connected');
    this._emit('resumed', info);
    this._updateHealth();
  }

  /** Someone is in the room: added (event `participantjoined`), or a known one updated.
   * @param {{identity: string, name?: string, role?: string}} p */
  _participantJoined(p) {
    const known = this.participants.get(p.identity);
    if (known) {
      Object.assign(known, { name: p.name ?? known.name, role: p.role ?? known.role });
      return;
    }
    const participant = { identity: p.identity, name: p.name, role: p.role, muted: {}, speaking: false, media: 'connecting' };
    this.participants.set(p.identity, participant);
    this._emit('participantjoined', participant);
  }

  /** Someone left the room: their tracks end, then `participantleft`. @param {string} identity */
  _participantLeft(identity) {
    for (const [mid, remote] of [...this.remoteTracks]) {
      if (remote.identity === identity) {
        this._published.delete(mid);
        this._endRemote(mid, remote);
      }
    }
    if (this.participants.delete(identity)) this._emit('participantleft', { identity });
  }

  _onError(m) {
    this._lastError = { code: m.code, message: m.message };
    // An error without `request` carrying a close label announces the close that follows:
    // it is reported once, with the close code, when the socket closes.
    if (m.code in CloseCode && !m.request) return;
    // The offer in flight was refused (by the proxy's policy, or by the media server for its
    // SDP or a limit; the media server's errors carry no `request`): no answer will come, so
    // take it back. Any other missing answer ends in the answer timeout.
    const refusal = m.request === 'offer' || (!m.request && REFUSES_OFFER.has(m.code));
    if (this._awaitingAnswer && refusal) this._enqueue(() => this._rollback(), 'rolling back a refused offer');
    this._emit('error', { error: new RtcdError(m.code, m.message, { request: m.request }) });
  }

  /**
   * Fresh TURN credentials from the proxy: applied to the live peer connection, so every
   * relay allocation it makes from now on uses them. An existing allocation keeps the username
   * it was made with (TURN requires it), and its refreshes would carry the old, soon expired,
   * credentials: whether a TURN server still accepts those is its own policy. So while media
   * is relayed, ICE restarts at once: new allocations with the fresh credentials, media on the
   * old path until the new one is checked (protocol section 4b).
   * @param {RTCIceServer[]} servers @param {number} expiresAt
   */
  _onIceServers(servers, expiresAt) {
    if (!Array.isArray(servers)) return;
    this.proxyIceServers = servers;
    this.iceServersExpiresAt = Number(expiresAt) || 0;
    const pc = this._pc;
    if (pc && pc.connectionState !== 'closed') {
      try {
        pc.setConfiguration({ ...pc.getConfiguration(), iceServers: this._iceServers() });
      } catch (cause) {
        this._emit('error', { error: new RtcdError('ice_servers_rejected', `the browser refused the TURN servers: ${cause && cause.message || cause}`, { cause }) });
        return;
      }
    }
    this._emit('iceservers', { expiresAt: this.iceServersExpiresAt, urls: servers.flatMap((s) => [].concat(s.urls || [])) });
    if (pc && this.route && this.route.path === 'relayed') this._restartIce(pc);
  }

  /** The application's ICE servers, then the proxy's (TURN with this session's credentials). */
  _iceServers() {
    return [...(this.options.iceServers || []), ...this.proxyIceServers];
  }

  /**
   * Restarts ICE (new candidates, new relay allocations with the current credentials) and
   * offers again. For a client whose network changed, or to test a path.
   */
  restartIce() {
    if (this._pc) this._restartIce(this._pc);
  }

  async _onTokenExpiring(m) {
    this._emit('tokenexpiring', { expiresAt: m.expires_at });
    if (!this.options.getToken) return;
    try {
      const token = await this.options.getToken({ reason: 'refresh', room: this.options.room });
      this.token = token;
      this._send({ type: 'refresh', token });
    } catch (cause) {
      this._emit('error', { error: new RtcdError('token_expired', `token refresh failed: ${cause && cause.message || cause}`, { cause, request: 'refresh' }) });
    }
  }

  // ---- WebRTC -----------------------------------------------------------------------------

  _createPeerConnection() {
    const pc = new RTCPeerConnection({
      iceServers: this._iceServers(),
      iceTransportPolicy: this.options.iceTransportPolicy || 'all',
      bundlePolicy: 'max-bundle',
    });
    this._pc = pc;
    this._pcClosed = new Promise((_, reject) => { this._abandon = reject; });
    this._pcClosed.catch(() => {});
    pc.addEventListener('icecandidate', ({ candidate }) => {
      if (pc !== this._pc) return;
      // null = gathering finished: the protocol's end-of-candidates is an empty candidate.
      const c = candidate ? candidate.toJSON() : { candidate: '' };
      this._send({ type: 'candidate', candidate: c.candidate || '', ...(c.sdpMid != null && { sdpMid: c.sdpMid }),
        ...(c.sdpMLineIndex != null && { sdpMLineIndex: c.sdpMLineIndex }),
        ...(c.usernameFragment != null && { usernameFragment: c.usernameFragment }) });
    });
    pc.addEventListener('track', ({ transceiver }) => {
      // Matched by the section, never by the track's id (random in Firefox).
      if (pc === this._pc && transceiver && transceiver.mid != null) this._match(transceiver.mid);
    });
    pc.addEventListener('connectionstatechange', () => {
      if (pc !== this._pc) return;
      clearTimeout(this._failedTimer);
      if (pc.connectionState === 'failed') {
        // The media server closes the session with 4010 after its own timeout; if that does
        // not come, start over from here.
        this._failedTimer = setTimeout(() => {
          if (pc === this._pc && pc.connectionState === 'failed') this._restart(new RtcdError('media_connection_failed', 'the media connection failed (no ICE or DTLS traffic); rejoining'));
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
        this._iceRestartTimer = setTimeout(() => this._restartIce(pc), ICE_RESTART_AFTER_MS);
      }
    });
    // A subscriber always receives: one receiving audio section from the first offer gives
    // the transport something to connect on, so media health is known before anyone speaks.
    if (this.session && this.session.permissions.subscribe) this._need = { audio: 1, video: 0 };
    for (const [source, track] of this.localTracks) this._attach(source, track);
    this._statsTimer = setInterval(() => this._poll(pc), this.options.statsIntervalMs);
  }

  /** Section 4a, ICE restart: new ICE credentials in the next offer; the session, its tracks
   * and its subscriptions stay, and media resumes once the new checks succeed. */
  _restartIce(pc) {
    if (pc !== this._pc || pc.connectionState === 'closed') return;
    this._iceRestarts += 1;
    this._emit('icerestart', { attempt: this._iceRestarts, state: pc.iceConnectionState });
    pc.restartIce();
    this._wantOffer();
  }

  /** Section 4a: asks for an offer, made once the peer connection is `stable` with no
   * answer pending; several requests before that make one offer (the latest needs win). */
  _wantOffer() {
    if (!this._pc) return;
    this._offerWanted = true;
    this._enqueue(() => this._offer(), 'making an offer');
  }

  async _offer() {
    const pc = this._pc;
    if (!pc || !this._offerWanted || this._awaitingAnswer || pc.signalingState !== 'stable') return;
    this._offerWanted = false;
    this._ensureReceivers(pc);
    await this._bounded(pc.setLocalDescription(), 'setLocalDescription(offer)');
    if (pc !== this._pc || !pc.localDescription) return;
    this._awaitingAnswer = true;
    this._send({ type: 'offer', sdp: pc.localDescription.sdp, tracks: this._trackMap() });
    const limit = this.options.stepTimeoutMs;
    clearTimeout(this._answerTimer);
    this._answerTimer = setTimeout(() => {
      if (pc === this._pc && this._awaitingAnswer) {
        this._restart(new RtcdError(ErrorCode.negotiation_failed, `no answer to the offer within ${limit / 1000} s`));
      }
    }, limit);
  }

  /** Adds `recvonly` transceivers until the media server's needs are covered. */
  _ensureReceivers(pc) {
    for (const kind of /** @type {const} */ (['audio', 'video'])) {
      const have = pc.getTransceivers().filter((t) => !t.stopped && t.receiver.track.kind === kind
        && (t.direction === 'recvonly' || t.direction === 'sendrecv')).length;
      for (let i = have; i < this._need[kind]; i++) pc.addTransceiver(kind, { direction: 'recvonly' });
    }
  }

  /** @param {{sdp: string}} m */
  async _onAnswer(m) {
    const pc = this._pc;
    if (!pc) return;
    if (pc.signalingState !== 'have-local-offer') {
      // After a rollback on an ambiguous refusal the answer may still come: offer again so
      // both sides agree on the sections.
      console.warn(`rtcd: ignoring an answer in signaling state ${pc.signalingState}; offering again`);
      this._wantOffer();
      return;
    }
    clearTimeout(this._answerTimer);
    await this._bounded(pc.setRemoteDescription({ type: 'answer', sdp: m.sdp }), 'setRemoteDescription(answer)');
    if (pc !== this._pc) return;
    this._awaitingAnswer = false;
    for (const init of this._earlyCandidates.splice(0)) await this._addCandidate(pc, init);
    // Sections may have been reassigned: recheck every announced track.
    for (const mid of this._published.keys()) this._match(mid);
    if (this._offerWanted) this._enqueue(() => this._offer(), 'making an offer');
  }

  /** Takes back an offer that will get no answer, and offers again if still needed. */
  async _rollback() {
    const pc = this._pc;
    if (!pc || !this._awaitingAnswer) return;
    clearTimeout(this._answerTimer);
    if (pc.signalingState === 'have-local-offer') {
      await this._bounded(pc.setLocalDescription({ type: 'rollback' }), 'rollback');
    }
    this._awaitingAnswer = false;
    if (this._offerWanted) this._enqueue(() => this._offer(), 'making an offer');
  }

  async _onCandidate(m) {
    const pc = this._pc;
    if (!pc) return;
    const init = { candidate: m.candidate || '', sdpMid: m.sdpMid ?? null, sdpMLineIndex: m.sdpMLineIndex ?? null };
    if (m.usernameFragment != null) init.usernameFragment = m.usernameFragment;
    // A candidate before the first answer waits for it (the browser needs a remote description).
    if (!pc.remoteDescription) {
      this._earlyCandidates.push(init);
      return;
    }
    await this._addCandidate(pc, init);
  }

  /** @param {RTCPeerConnection} pc @param {RTCIceCandidateInit} init */
  async _addCandidate(pc, init) {
    try {
      await this._bounded(pc.addIceCandidate(init), 'addIceCandidate');
    } catch (cause) {
      // A hung step restarts the session; a refused candidate (e.g. for a section that was
      // renegotiated away) costs nothing but that candidate.
      if (cause instanceof Abandoned || (cause instanceof RtcdError && cause.restart)) throw cause;
      console.warn(`rtcd: candidate refused: ${cause && cause.message || cause}`);
    }
  }

  /** The `tracks` field: mid -> source of every section this side sends on. */
  _trackMap() {
    /** @type {Record<string, TrackSource>} */
    const tracks = {};
    for (const [source, transceiver] of this._transceivers) {
      if (transceiver.mid != null && transceiver.direction !== 'inactive') tracks[transceiver.mid] = source;
    }
    return tracks;
  }

  /** @param {TrackSource} source @param {MediaStreamTrack} track */
  _addLocal(source, track) {
    const old = this.localTracks.get(source);
    if (old && old !== track) old.stop();
    this.localTracks.set(source, track);
    if (this.muted.has(source)) track.enabled = false;
    this._attach(source, track);
    this._emit('localtrack', { source, track });
  }

  /** @param {TrackSource} source */
  _removeLocal(source) {
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
    this._emit('localtrackended', { source, track });
  }

  /** Sends `track` on the section of `source`, creating it on first use, then offers. */
  _attach(source, track) {
    const pc = this._pc;
    if (!pc) return;
    const existing = this._transceivers.get(source);
    if (existing) {
      existing.sender.replaceTrack(track).catch(() => {});
      if (existing.direction !== 'sendonly') {
        existing.direction = 'sendonly';
        this._wantOffer();
      }
      return;
    }
    const stream = new MediaStream([track]);
    /** @type {RTCRtpTransceiverInit} */
    const init = { direction: 'sendonly', streams: [stream] };
    if (source === 'camera') {
      const { width, height } = track.getSettings ? track.getSettings() : {};
      init.sendEncodings = this.options.simulcast
        ? cameraLayers(width, height)
        : cameraLayer();
    } else if (source === 'screen') {
      init.sendEncodings = [{ maxBitrate: SCREEN_MAX_BITRATE }];
    }
    if (source === 'screen' && 'contentHint' in track) track.contentHint = 'detail';
    const transceiver = pc.addTransceiver(track, init);
    this._transceivers.set(source, transceiver);
    this._wantOffer();
  }

  /**
   * Dynacast (protocol `layers_wanted`): encodes only the simulcast layers of the section `mid`
   * someone receives, sparing this device's CPU and uplink; the others start again (from a
   * keyframe) when the media server names them. Changes to one sender are applied in order.
   * @param {string} mid @param {Set<string>} rids
   */
  _setLayers(mid, rids) {
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
    }).catch((cause) => console.warn(`rtcd: could not change the layers sent on ${mid}: ${cause && cause.message || cause}`));
    this._layerChanges.set(sender, next);
  }

  /** Emits `track` once a section's `track_published` and its receiving transceiver are both
   * known; a section reused for another track first ends the previous one. */
  _match(mid) {
    const pc = this._pc;
    const info = this._published.get(mid);
    if (!pc || !info) return;
    const transceiver = pc.getTransceivers().find((t) => t.mid === mid);
    if (!transceiver) return;
    const current = this.remoteTracks.get(mid);
    if (current && current.trackId === info.trackId && current.identity === info.identity) return;
    if (current) this._endRemote(mid, current);
    const track = transceiver.receiver.track;
    /** @type {RemoteTrack} */
    const remote = { identity: info.identity, source: info.source, trackId: info.trackId, mid, track, stream: new MediaStream([track]) };
    this.remoteTracks.set(mid, remote);
    const now = performance.now();
    this._flow.set(mid, { packets: -1, progress: 0, lost: 0, progressAt: now, flowed: false, loss: 0, lossyRuns: 0 });
    this._participant(info.identity);
    this._emit('track', remote);
    // The application usually shows it from its `track` handler: watch that element now.
    this._scanViews();
    this._updateHealth();
  }

  /** @param {string} mid @param {RemoteTrack} remote */
  _endRemote(mid, remote) {
    if (this.remoteTracks.get(mid) !== remote) return;
    this.remoteTracks.delete(mid);
    this._flow.delete(mid);
    this._viewsSent.delete(mid);
    this._emit('trackended', remote);
  }

  // ---- adaptive stream ----------------------------------------------------------------------

  /** Starts watching how remote video is shown (protocol `track_views`): every view is sent
   * afresh to a new or resumed session. */
  _startViews() {
    clearInterval(this._viewScanTimer);
    this._viewsSent.clear();
    if (!this.options.adaptiveStream || typeof document === 'undefined') return;
    if (!this._resizeObserver && typeof ResizeObserver !== 'undefined') {
      this._resizeObserver = new ResizeObserver(() => this._scheduleViews());
    }
    if (!this._intersectionObserver && typeof IntersectionObserver !== 'undefined') {
      this._intersectionObserver = new IntersectionObserver((entries) => {
        for (const entry of entries) {
          const state = this._viewed.get(/** @type {HTMLVideoElement} */ (entry.target));
          if (state) state.intersecting = entry.isIntersecting;
        }
        this._scheduleViews();
      });
    }
    this._viewScanTimer = setInterval(() => this._scanViews(), VIEW_SCAN_MS);
    this._scanViews();
  }

  /** Finds the `<video>` elements whose `srcObject` holds a remote video track, and watches
   * them; forgets the ones that no longer do. */
  _scanViews() {
    if (!this.options.adaptiveStream || typeof document === 'undefined') return;
    const remote = new Set();
    for (const r of this.remoteTracks.values()) if (r.track.kind === 'video') remote.add(r.track);
    const showing = new Set();
    for (const el of document.querySelectorAll('video')) {
      const src = el.srcObject;
      if (!(src instanceof MediaStream) || !src.getVideoTracks().some((t) => remote.has(t))) continue;
      showing.add(el);
      if (this._viewed.has(el)) continue;
      // Intersecting until the observer says otherwise (a background tab may never say).
      this._viewed.set(el, { intersecting: true });
      if (this._resizeObserver) this._resizeObserver.observe(el);
      if (this._intersectionObserver) this._intersectionObserver.observe(el);
    }
    for (const el of [...this._viewed.keys()]) {
      if (showing.has(el)) continue;
      this._viewed.delete(el);
      if (this._resizeObserver) this._resizeObserver.unobserve(el);
      if (this._intersectionObserver) this._intersectionObserver.unobserve(el);
    }
    this._scheduleViews();
  }

  _scheduleViews() {
    if (this._viewTimer) return;
    this._viewTimer = setTimeout(() => {
      this._viewTimer = 0;
      this._sendViews();
    }, VIEW_SEND_MS);
  }

  /** Sends the views that changed: per remote video track, shown if any element showing it is
   * laid out with a size and intersects the viewport, at the largest size it is drawn at
   * (device pixels). A track no element shows any more is hidden; one no element ever showed
   * is left alone (the media server sends it at any size). */
  _sendViews() {
    if (!this.session || !this.session.media) return;
    const dpr = (typeof window !== 'undefined' && window.devicePixelRatio) || 1;
    const views = [];
    for (const [mid, r] of this.remoteTracks) {
      if (r.track.kind !== 'video') continue;
      let shown = false;
      let visible = false;
      let width = 0;
      let height = 0;
      for (const [el, state] of this._viewed) {
        const src = el.srcObject;
        if (!(src instanceof MediaStream) || !src.getVideoTracks().includes(r.track)) continue;
        shown = true;
        const [w, h] = drawnSize(el, dpr);
        if (!state.intersecting || w === 0 || h === 0) continue;
        visible = true;
        width = Math.max(width, w);
        height = Math.max(height, h);
      }
      if (!shown && !this._viewsSent.has(mid)) continue;
      const key = `${r.trackId} ${visible} ${width}x${height}`;
      if (this._viewsSent.get(mid) === key) continue;
      this._viewsSent.set(mid, key);
      views.push(visible ? { mid, track_id: r.trackId, visible, width, height } : { mid, track_id: r.trackId, visible });
    }
    for (let i = 0; i < views.length; i += MAX_TRACK_VIEWS) {
      this._sendRelayed({ type: 'track_views', views: views.slice(i, i + MAX_TRACK_VIEWS) });
    }
  }

  /** @param {string} identity */
  _participant(identity) {
    let p = this.participants.get(identity);
    if (!p) {
      p = { identity, muted: {}, speaking: false, media: 'connecting' };
      this.participants.set(identity, p);
      this._emit('participantjoined', p);
    }
    return p;
  }

  // ---- media health -----------------------------------------------------------------------

  /** Reads inbound counters per received section and the media server's loss reports. */
  async _poll(pc) {
    if (pc !== this._pc || pc.connectionState === 'closed') return;
    const gen = this._gen;
    let report;
    try {
      report = await this._bounded(pc.getStats(), 'getStats');
    } catch (cause) {
      this._stepFailed(cause, gen, 'reading statistics');
      return;
    }
    if (pc !== this._pc) return;
    const midByTrack = new Map();
    for (const t of pc.getTransceivers()) if (t.mid != null) midByTrack.set(t.receiver.track.id, t.mid);
    const now = performance.now();
    let lostOut = 0;
    let sentOut = 0;
    this._updateRoute(report);
    report.forEach((s) => {
      if (s.type === 'inbound-rtp') {
        const mid = s.mid ?? midByTrack.get(s.trackIdentifier);
        const flow = mid != null && this._flow.get(String(mid));
        if (!flow) return;
        const packets = s.packetsReceived || 0;
        const lost = Math.max(0, s.packetsLost || 0);
        // Progress is what the user gets: decoded frames for video (packets that never
        // decode, e.g. without a keyframe, are a stall), packets for audio.
        const progress = s.kind === 'video' ? (s.framesDecoded || 0) : packets;
        // Counters that went back are a receive stream the browser made anew, statistics and
        // all (Firefox does at renegotiations, even one that changes nothing of the section): what it
        // counts since is progress, and loss is measured from there.
        const restarted = packets < flow.packets || progress < flow.progress;
        if (flow.packets >= 0 && !restarted) {
          const got = packets - flow.packets;
          const missed = Math.max(0, lost - flow.lost);
          flow.loss = got + missed > 0 ? missed / (got + missed) : 0;
          flow.lossyRuns = flow.loss > POOR_LOSS ? (flow.lossyRuns || 0) + 1 : 0;
          if (progress > flow.progress) {
            flow.progressAt = now;
            flow.flowed = true;
          }
        } else if (progress > 0) {
          flow.progressAt = now;
          flow.flowed = true;
        }
        flow.packets = packets;
        flow.progress = progress;
        flow.lost = lost;
      } else if (s.type === 'remote-inbound-rtp') {
        lostOut += Math.max(0, s.fractionLost || 0);
        sentOut += 1;
      }
    });
    this._outboundLoss = sentOut ? lostOut / sentOut : 0;
    this._readAt = now;
    this._updateHealth();
  }

  /**
   * The media path from the selected candidate pair (Chromium: the transport's
   * `selectedCandidatePairId`; Firefox: the pair marked `selected`).
   * @param {RTCStatsReport} report
   */
  _updateRoute(report) {
    let pair = null;
    report.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId) || pair;
    });
    if (!pair) {
      report.forEach((s) => {
        if (s.type === 'candidate-pair' && s.selected) pair = s;
      });
    }
    const local = pair && report.get(pair.localCandidateId);
    /** @type {Route|null} */
    const route = local ? {
      path: local.candidateType === 'relay' ? 'relayed' : 'direct',
      candidateType: local.candidateType,
      protocol: local.protocol,
      ...(local.relayProtocol && { relayProtocol: local.relayProtocol }),
      ...((local.address || local.ip) && { address: local.address || local.ip }),
    } : null;
    const was = this.route;
    if (JSON.stringify(was) === JSON.stringify(route)) return;
    this.route = route;
    this._emit('route', { route, previous: was });
  }

  /** Recomputes the local media state and every participant's. */
  _updateHealth() {
    const pc = this._pc;
    if (!pc) return;
    // As of the last reading: a track created since then has not been read yet, and one
    // read then is not stalled by time that passed after it.
    const now = this._readAt;
    /** @type {Map<string, {flowing: number, stalled: number, starting: number}>} */
    const byIdentity = new Map();
    let expected = 0;
    let flowing = 0;
    let lossy = false;
    for (const [mid, remote] of this.remoteTracks) {
      const flow = this._flow.get(mid);
      const participant = this.participants.get(remote.identity);
      // Muted, or paused by the media server (not a fault of anyone's connection).
      if (!flow || (participant && participant.muted[remote.source]) || this._paused.has(mid)) continue;
      const entry = byIdentity.get(remote.identity) || { flowing: 0, stalled: 0, starting: 0 };
      const quiet = now - flow.progressAt > (flow.flowed ? STALL_MS : START_MS);
      if (!flow.flowed && !quiet) entry.starting += 1;
      else if (quiet || flow.lossyRuns >= POOR_LOSS_INTERVALS) entry.stalled += 1;
      else entry.flowing += 1;
      byIdentity.set(remote.identity, entry);
      expected += 1;
      if (flow.flowed && !quiet) flowing += 1;
      if (flow.lossyRuns >= POOR_LOSS_INTERVALS) lossy = true;
    }
    /** @type {MediaState} */
    let state;
    switch (pc.connectionState) {
      case 'connected':
        state = (expected > 0 && flowing === 0 && [...this._flow.values()].some((f) => f.flowed))
          || lossy || this._outboundLoss > POOR_LOSS ? 'poor' : 'connected';
        break;
      case 'disconnected': state = 'reconnecting'; break;
      case 'failed': state = 'failed'; break;
      default:
        // No media section at all (nothing to send, nothing to receive): nothing to connect.
        state = pc.getTransceivers().length === 0 && pc.signalingState === 'stable' && pc.remoteDescription ? 'connected' : 'connecting';
    }
    this._setMediaState(state);
    for (const participant of this.participants.values()) {
      const entry = byIdentity.get(participant.identity);
      /** @type {RemoteMediaState} */
      let media;
      if (!entry) {
        // Nothing of theirs is expected here (a listener, or all muted): as good as our link.
        media = state === 'connected' || state === 'poor' ? 'connected' : 'connecting';
      } else if (entry.stalled > 0 && (entry.flowing > 0 || state === 'connected' || state === 'poor')) {
        media = 'poor';
      } else if (entry.flowing > 0) {
        media = 'connected';
      } else {
        media = 'connecting';
      }
      if (state !== 'connected' && state !== 'poor' && media === 'connected') media = 'connecting';
      if (participant.media !== media) {
        const previous = participant.media;
        participant.media = media;
        this._emit('participantmedia', { identity: participant.identity, state: media, previous });
      }
    }
  }

  /** @param {MediaState} state */
  _setMediaState(state) {
    if (state === this.mediaState) return;
    const previous = this.mediaState;
    this.mediaState = state;
    this._emit('mediastate', { state, previous });
  }

  // ---- plumbing ---------------------------------------------------------------------------

  /** @param {ClientState} state */
  _setState(state) {
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    this._emit('state', { state, previous });
  }

  /** @param {string} type @param {unknown} detail */
  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/** `ws(s)://<this page's host>/ws`. */
function defaultUrl() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/ws`;
}
