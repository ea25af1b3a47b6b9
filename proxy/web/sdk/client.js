// rtcd browser SDK: one call (room) over the rtcd-proxy WebSocket protocol (docs/protocol.md).
//
// Plain ES module, no dependencies, no build step: `import { RtcdClient } from '/sdk/client.js'`.
//
// What it does:
//  * connects to the proxy, joins a room with a JWT, keeps the session alive (app-level pings
//    on top of the browser's WebSocket pongs), refreshes the token on `token_expiring` through
//    a callback the application provides;
//  * publishes microphone / camera / screen on one RTCPeerConnection, declaring each sending
//    section's source in `tracks` (mid -> source) as the proxy's permission policy expects;
//  * negotiates "perfect negotiation" style: both sides may offer at any time. rtcd is the
//    impolite peer (on glare it refuses the client's offer with an error and keeps its own),
//    so this side is polite by default: it rolls its offer back, answers, and offers again;
//  * trickles ICE both ways;
//  * reports remote participants, their tracks (matched by `track_published`'s track_id, which
//    is the msid track id, i.e. `MediaStreamTrack.id` on the receiving side), mute and
//    speaking state as events;
//  * surfaces every `error` code and close code of the protocol as an `RtcdError` with the
//    protocol's label;
//  * reconnects with exponential backoff after a dropped socket, a drain (`going_away`) or
//    `media_server_lost`, as long as the token is still valid (or `getToken` gives a new one),
//    and never after a token close code (41xx: the same token would fail the same way).
//
// Events (all `CustomEvent`s, payload in `detail`; see the typedefs below):
//   state, joined, error, participantjoined, participantleft, track, trackended, mutechanged,
//   voiceactivity, localtrack, localtrackended, tokenexpiring, refreshed, reconnecting, closed.

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
  /** The browser refused an SDP or candidate (setLocalDescription and the like). */
  negotiation_failed: 'negotiation_failed',
});

/** The label of a close code, e.g. 4106 -> `token_expired` (unknown codes: `close_<code>`). */
export function closeLabel(code) {
  for (const [label, c] of Object.entries(CloseCode)) {
    if (c === code) return label;
  }
  return code === 1006 ? ErrorCode.connection_failed : `close_${code}`;
}

/** Token problems (4100-4199) except the temporary `keys_unavailable`: never retried. */
export function isTokenCloseCode(code) {
  return code >= 4100 && code <= 4199 && code !== CloseCode.keys_unavailable;
}

/** Close codes after which reconnecting can help (section 6, column "retry?"). */
const RETRYABLE = new Set([
  1001, 1006, CloseCode.join_timeout, CloseCode.idle_timeout, CloseCode.rate_limited,
  CloseCode.too_many_connections, CloseCode.too_many_auth_failures,
  CloseCode.media_server_lost, CloseCode.keys_unavailable,
]);
/** Codes that mean "slow down": the backoff starts higher. */
const SLOW_DOWN = new Set([
  CloseCode.rate_limited, CloseCode.too_many_connections, CloseCode.too_many_auth_failures,
  CloseCode.keys_unavailable,
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
 * @typedef {'idle'|'connecting'|'connected'|'reconnecting'|'closed'|'error'} ClientState
 * @typedef {{publish_audio: boolean, publish_video: boolean, publish_screen: boolean,
 *   subscribe: boolean}} Permissions
 * @typedef {{session_id: number, room: string, identity: string, name?: string,
 *   tenant?: string, role: string, permissions: Permissions, expires_at: number,
 *   media: boolean}} JoinedInfo
 * @typedef {{identity: string, name?: string, role?: string,
 *   muted: Partial<Record<TrackSource, boolean>>, speaking: boolean}} Participant
 * @typedef {{identity: string, source: TrackSource, trackId: string,
 *   track: MediaStreamTrack, stream: MediaStream}} RemoteTrack
 * @typedef {{reason: 'refresh'|'reconnect', room: string}} TokenRequest
 * @typedef {{
 *   room: string,
 *   token: string,
 *   url?: string,
 *   getToken?: (request: TokenRequest) => Promise<string>,
 *   polite?: boolean,
 *   iceServers?: RTCIceServer[],
 *   reconnect?: {maxAttempts?: number, baseDelayMs?: number, maxDelayMs?: number},
 *   pingIntervalMs?: number,
 *   pongTimeoutMs?: number,
 * }} ClientOptions
 */

/** Seconds of token validity a reconnect needs, else it asks `getToken` (or gives up). */
const TOKEN_MARGIN_S = 5;

/**
 * One participant's connection to one room.
 *
 * Lifecycle: `new RtcdClient(options)` -> `connect()` (resolves on the first `joined`) ->
 * `publish(...)` / `startScreenShare()` / `setMuted(...)` -> `leave()`. Each (re)connection is a
 * new proxy session with a new RTCPeerConnection; local tracks survive reconnects and are
 * published again.
 */
export class RtcdClient extends EventTarget {
  /** @param {ClientOptions} options */
  constructor(options) {
    super();
    if (!options || !options.room) throw new TypeError('RtcdClient: `room` is required');
    this.options = {
      polite: true,
      iceServers: [],
      pingIntervalMs: 25000,
      pongTimeoutMs: 10000,
      ...options,
      reconnect: { maxAttempts: 8, baseDelayMs: 500, maxDelayMs: 15000, ...(options.reconnect || {}) },
    };
    this.url = options.url || defaultUrl();
    /** @type {string} */
    this.token = options.token;
    /** @type {ClientState} */
    this.state = 'idle';
    /** @type {JoinedInfo|null} the current session's `joined` */
    this.session = null;
    /** @type {Map<string, Participant>} remote participants by identity */
    this.participants = new Map();
    /** @type {Map<TrackSource, MediaStreamTrack>} published (or previewed) local tracks */
    this.localTracks = new Map();
    /** @type {Set<TrackSource>} locally muted sources */
    this.muted = new Set();
    /** Successful joins so far (1 + reconnects). */
    this.joins = 0;

    /** @type {WebSocket|null} */ this._ws = null;
    /** @type {RTCPeerConnection|null} */ this._pc = null;
    /** @type {Map<TrackSource, RTCRtpTransceiver>} */ this._transceivers = new Map();
    /** track_published info by track id, waiting for (or matched to) a browser track */
    /** @type {Map<string, {identity: string, source: TrackSource}>} */ this._published = new Map();
    /** @type {Map<string, {track: MediaStreamTrack, stream: MediaStream}>} */ this._arrived = new Map();
    /** @type {Map<string, RemoteTrack>} */ this._remote = new Map();
    this._makingOffer = false;
    this._ignoreOffer = false;
    this._answerPending = false;
    /** Server messages are handled one at a time, in order (SDP steps are async). */
    this._queue = Promise.resolve();
    this._attempt = 0;
    this._leaving = false;
    this._retryTimer = 0;
    this._pingTimer = 0;
    this._pongTimer = 0;
    this._pingId = 0;
    /** @type {{code: string, message: string}|null} the `error` that announced a close */
    this._lastError = null;
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
   * Shares a screen (getDisplayMedia) as source `screen` (and `screen_audio` when the browser
   * gives audio). Announces it with `screen_share_start` first, as the protocol asks.
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

  // ---- connection -------------------------------------------------------------------------

  _open() {
    this._setState(this.joins === 0 ? 'connecting' : 'reconnecting');
    this._lastError = null;
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (cause) {
      this._fail(new RtcdError(ErrorCode.connection_failed, `bad signaling URL ${this.url}`, { cause, fatal: true }));
      return;
    }
    this._ws = ws;
    ws.addEventListener('open', () => this._send({ type: 'join', room: this.options.room, token: this.token }));
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
    this._queue = this._queue
      .then(() => this._handle(message))
      .catch((cause) => this._emit('error', {
        error: new RtcdError(ErrorCode.negotiation_failed, `handling \`${message.type}\`: ${cause && cause.message || cause}`, { cause }),
      }));
  }

  /** @param {WebSocket} ws @param {CloseEvent} event */
  _onClose(ws, event) {
    if (ws !== this._ws) return;
    this._ws = null;
    this._teardown();
    if (this._leaving) return;
    const code = event.code;
    const label = event.reason || closeLabel(code);
    const announced = this._lastError && this._lastError.code === label ? this._lastError.message : '';
    const message = announced || (code === 1006 ? `cannot reach the signaling server at ${this.url}` : label);
    if (code === CloseCode.normal) {
      this._setState('closed');
      this._emit('closed', { code, label, byClient: false });
      return;
    }
    const retry = RETRYABLE.has(code) && this._attempt < this.options.reconnect.maxAttempts;
    const error = new RtcdError(label, message, { closeCode: code, fatal: !retry });
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
    this._emit('closed', { code: error.closeCode ?? 0, label: error.code, byClient: false, error });
    if (this._onFirstFail) {
      this._onFirstFail(error);
      this._onFirstJoin = this._onFirstFail = null;
    }
  }

  /** Ends the current session's peer connection and timers; keeps local tracks. */
  _teardown() {
    clearInterval(this._pingTimer);
    clearTimeout(this._pongTimer);
    if (this._pc) {
      this._pc.close();
      this._pc = null;
    }
    this._transceivers.clear();
    for (const remote of this._remote.values()) this._emit('trackended', remote);
    this._remote.clear();
    this._arrived.clear();
    this._published.clear();
    for (const identity of [...this.participants.keys()]) {
      this.participants.delete(identity);
      this._emit('participantleft', { identity });
    }
    this._makingOffer = this._ignoreOffer = this._answerPending = false;
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
      case 'error': return this._onError(m);
      case 'pong': clearTimeout(this._pongTimer); return;
      case 'token_expiring': return this._onTokenExpiring(m);
      case 'refreshed':
        if (this.session) Object.assign(this.session, { expires_at: m.expires_at, permissions: m.permissions });
        this._emit('refreshed', { expiresAt: m.expires_at, permissions: m.permissions });
        return;
      case 'offer':
      case 'answer':
        return this._onDescription({ type: m.type, sdp: m.sdp });
      case 'candidate': return this._onCandidate(m);
      case 'participant_joined': {
        const p = m.participant || {};
        const known = this.participants.get(p.identity);
        const participant = { identity: p.identity, name: p.name, role: p.role, muted: known ? known.muted : {}, speaking: false };
        this.participants.set(p.identity, participant);
        this._emit('participantjoined', participant);
        return;
      }
      case 'participant_left': {
        for (const [id, remote] of this._remote) {
          if (remote.identity === m.identity) {
            this._remote.delete(id);
            this._emit('trackended', remote);
          }
        }
        if (this.participants.delete(m.identity)) this._emit('participantleft', { identity: m.identity });
        return;
      }
      case 'track_published':
        this._published.set(m.track_id, { identity: m.identity, source: m.source });
        this._matchTrack(m.track_id);
        return;
      case 'track_unpublished': {
        this._published.delete(m.track_id);
        this._arrived.delete(m.track_id);
        const remote = this._remote.get(m.track_id);
        if (remote) {
          this._remote.delete(m.track_id);
          this._emit('trackended', remote);
        }
        return;
      }
      case 'mute_changed': {
        const p = this._participant(m.identity);
        p.muted[m.source] = m.muted;
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
      default:
        console.warn(`rtcd: ignoring unknown message type \`${m.type}\``);
    }
  }

  /** @param {JoinedInfo & {type: string}} m */
  _onJoined(m) {
    const { type: _type, ...info } = m;
    this.session = info;
    this.joins += 1;
    this._attempt = 0;
    this._startPings();
    if (info.media) {
      this._createPeerConnection();
      for (const source of this.muted) this._send({ type: 'mute', source });
    }
    this._setState('connected');
    this._emit('joined', info);
    if (this._onFirstJoin) {
      this._onFirstJoin(info);
      this._onFirstJoin = this._onFirstFail = null;
    }
  }

  _onError(m) {
    this._lastError = { code: m.code, message: m.message };
    // An error without `request` carrying a close label announces the close that follows:
    // it is reported once, with the close code, when the socket closes.
    if (m.code in CloseCode && !m.request) return;
    this._emit('error', { error: new RtcdError(m.code, m.message, { request: m.request }) });
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
    const pc = new RTCPeerConnection({ iceServers: this.options.iceServers, bundlePolicy: 'max-bundle' });
    this._pc = pc;
    pc.addEventListener('negotiationneeded', () => this._negotiate(pc));
    pc.addEventListener('icecandidate', ({ candidate }) => {
      if (pc !== this._pc) return;
      // null = gathering finished: the protocol's end-of-candidates is an empty candidate.
      const c = candidate ? candidate.toJSON() : { candidate: '' };
      this._send({ type: 'candidate', candidate: c.candidate || '', ...(c.sdpMid != null && { sdpMid: c.sdpMid }),
        ...(c.sdpMLineIndex != null && { sdpMLineIndex: c.sdpMLineIndex }),
        ...(c.usernameFragment != null && { usernameFragment: c.usernameFragment }) });
    });
    pc.addEventListener('track', ({ track, streams }) => {
      if (pc !== this._pc) return;
      this._arrived.set(track.id, { track, stream: streams[0] || new MediaStream([track]) });
      this._matchTrack(track.id);
    });
    pc.addEventListener('connectionstatechange', () => {
      if (pc === this._pc) this._emit('mediastate', { state: pc.connectionState });
    });
    for (const [source, track] of this.localTracks) this._attach(source, track);
  }

  /** @param {RTCPeerConnection} pc */
  async _negotiate(pc) {
    // One offer at a time, and only from a stable state (a pending remote offer is answered
    // first; the answer path calls this again if something is left to negotiate).
    if (this._makingOffer || pc.signalingState !== 'stable') return;
    try {
      this._makingOffer = true;
      await pc.setLocalDescription();
      if (pc !== this._pc || !pc.localDescription) return;
      this._send({ type: 'offer', sdp: pc.localDescription.sdp, tracks: this._trackMap() });
    } catch (cause) {
      this._emit('error', { error: new RtcdError(ErrorCode.negotiation_failed, `cannot create an offer: ${cause && cause.message || cause}`, { cause }) });
    } finally {
      this._makingOffer = false;
    }
  }

  /** Perfect negotiation: apply a remote offer / answer, handling glare by `polite`. */
  async _onDescription(description) {
    const pc = this._pc;
    if (!pc) return;
    const readyForOffer = !this._makingOffer && (pc.signalingState === 'stable' || this._answerPending);
    const collision = description.type === 'offer' && !readyForOffer;
    this._ignoreOffer = !this.options.polite && collision;
    if (this._ignoreOffer) return;
    this._answerPending = description.type === 'answer';
    await pc.setRemoteDescription(description); // rolls our offer back when polite
    this._answerPending = false;
    if (description.type === 'offer') {
      await pc.setLocalDescription();
      if (pc !== this._pc || !pc.localDescription) return;
      this._send({ type: 'answer', sdp: pc.localDescription.sdp, tracks: this._trackMap() });
      // Back in `stable`: a section of ours whose offer was rolled back fires
      // `negotiationneeded` again, and `_negotiate` offers it.
    }
  }

  async _onCandidate(m) {
    const pc = this._pc;
    if (!pc) return;
    const init = { candidate: m.candidate || '', sdpMid: m.sdpMid ?? null, sdpMLineIndex: m.sdpMLineIndex ?? null };
    if (m.usernameFragment != null) init.usernameFragment = m.usernameFragment;
    try {
      await pc.addIceCandidate(init);
    } catch (cause) {
      // Candidates of an offer we ignored on glare are expected to fail.
      if (!this._ignoreOffer) throw cause;
    }
  }

  /** The `tracks` field: mid -> source of every section this side sends on. */
  _trackMap() {
    /** @type {Record<string, TrackSource>} */
    const tracks = {};
    for (const [source, transceiver] of this._transceivers) {
      if (transceiver.mid != null) tracks[transceiver.mid] = source;
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
      // Keep the section (and its mid -> source) for the next share; stop sending on it.
      transceiver.sender.replaceTrack(null).catch(() => {});
      transceiver.direction = 'inactive';
    }
    this._emit('localtrackended', { source, track });
  }

  /** Sends `track` on the section of `source`, creating it on first use. */
  _attach(source, track) {
    const pc = this._pc;
    if (!pc) return;
    const existing = this._transceivers.get(source);
    if (existing) {
      existing.sender.replaceTrack(track).catch(() => {});
      existing.direction = 'sendonly';
      return;
    }
    const stream = new MediaStream([track]);
    const transceiver = pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
    if (source === 'screen' && 'contentHint' in track) track.contentHint = 'detail';
    this._transceivers.set(source, transceiver);
  }

  /** Emits `track` once both the browser track and its `track_published` are known. */
  _matchTrack(trackId) {
    const arrived = this._arrived.get(trackId);
    const info = this._published.get(trackId);
    if (!arrived || !info || this._remote.has(trackId)) return;
    const remote = { identity: info.identity, source: info.source, trackId, track: arrived.track, stream: arrived.stream };
    this._remote.set(trackId, remote);
    arrived.track.addEventListener('ended', () => {
      if (this._remote.get(trackId) === remote) {
        this._remote.delete(trackId);
        this._emit('trackended', remote);
      }
    });
    this._emit('track', remote);
  }

  /** @param {string} identity */
  _participant(identity) {
    let p = this.participants.get(identity);
    if (!p) {
      p = { identity, muted: {}, speaking: false };
      this.participants.set(identity, p);
      this._emit('participantjoined', p);
    }
    return p;
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
