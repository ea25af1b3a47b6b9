// The wire contract of docs/protocol.md: close codes, error codes, and the server messages
// parsed from JSON into a typed union. Everything from the socket goes through
// `parseServerMessage`, so the rest of the SDK never reads an unchecked field.

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
} as const);

/** A close label, e.g. `token_expired`. */
export type CloseLabel = keyof typeof CloseCode;

/**
 * Every `error.code` the proxy sends that is not also a close label (section 4), plus the
 * codes this SDK raises itself (`connection_failed`, `media_failed`, `negotiation_failed`,
 * `ice_servers_rejected`, `audio_output_unsupported`).
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
  /** The room is end-to-end encrypted (`joined.e2ee`) and this client cannot encrypt now: no
   * key is current yet (`setE2eeKey`), or the browser cannot transform frames. It sends no
   * media rather than plaintext (docs/e2ee.md); with a key, held-back tracks are sent. */
  e2ee_unsupported: 'e2ee_unsupported',
  /** The browser refused an SDP or candidate, a peer connection step did not settle in
   * time, or no answer came: the SDK reconnects (a new session, a new peer connection). */
  negotiation_failed: 'negotiation_failed',
  /** `setAudioOutput`: this browser cannot choose where media plays (no
   * `HTMLMediaElement.setSinkId`). */
  audio_output_unsupported: 'audio_output_unsupported',
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
  /** (`moderate` `set_policy`) `e2ee` would change while someone is in the room. */
  e2ee_locked: 'e2ee_locked',
} as const);

/** An error code of the protocol or of the SDK (not a close label). */
export type ErrorCodeLabel = keyof typeof ErrorCode;

/** What `RtcdError.code` holds: an error code or a close label. A proxy newer than this SDK
 * may send codes it does not know, hence the open `string`. */
export type RtcdErrorCode = ErrorCodeLabel | CloseLabel | (string & {});

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
} as const);

export type ModerationActionName = keyof typeof ModerationAction;

/** The label of a close code, e.g. 4106 -> `token_expired` (unknown codes: `close_<code>`). */
export function closeLabel(code: number): string {
  for (const [label, c] of Object.entries(CloseCode)) {
    if (c === code) return label;
  }
  return code === 1006 ? ErrorCode.connection_failed : `close_${code}`;
}

/**
 * Token problems (4100-4199) except the temporary `keys_unavailable` and
 * `affiliation_unavailable`: never retried.
 */
export function isTokenCloseCode(code: number): boolean {
  return code >= 4100 && code <= 4199 && code !== CloseCode.keys_unavailable
    && code !== CloseCode.affiliation_unavailable;
}

// ---- message types ----------------------------------------------------------------------

export type TrackSource = 'microphone' | 'camera' | 'screen' | 'screen_audio';

export interface Permissions {
  publish_audio: boolean;
  publish_video: boolean;
  publish_screen: boolean;
  subscribe: boolean;
  /** Starting and stopping the room's recording (moderators); absent when not granted. */
  record?: boolean;
}

export interface RoomPolicy {
  wait_for_host?: boolean;
  lobby?: boolean;
  guests_allowed?: boolean;
  wait_timeout_seconds?: number;
  opened_by?: 'moderator' | 'member';
}

/** A participant as the proxy names it (`participant_joined`, `participant_updated`,
 * `joined.participants`); `role` is the one they joined with or were last given. */
export interface ParticipantInfo {
  identity: string;
  name?: string;
  role?: string;
}

/** The `joined` message without its `type`: the session's description. */
export interface JoinedInfo {
  session_id: number;
  room: string;
  identity: string;
  name?: string;
  tenant?: string;
  role: string;
  permissions: Permissions;
  expires_at: number;
  media: boolean;
  ice_servers?: RTCIceServer[];
  ice_servers_expires_at?: number;
  resume_token?: string;
  resumed?: boolean;
  participants?: ParticipantInfo[];
  /** The room is end-to-end encrypted (docs/e2ee.md); false from a proxy that does not say. */
  e2ee: boolean;
}

/** Every server message this SDK acts on (docs/protocol.md section 4). */
export type ServerMessage =
  | ({ type: 'joined' } & JoinedInfo)
  | { type: 'waiting'; room: string; reason: 'host' | 'lobby'; timeout_seconds: number }
  | { type: 'lobby_request'; identity: string; name?: string; role?: string }
  | { type: 'lobby_left'; identity: string; outcome: string }
  | { type: 'ice_servers'; ice_servers: RTCIceServer[]; expires_at: number }
  | { type: 'error'; code: string; message: string; request?: string }
  | { type: 'token_expiring'; expires_at: number }
  | { type: 'refreshed'; expires_at: number; permissions: Permissions }
  | { type: 'pong'; id?: number }
  | { type: 'answer'; sdp: string }
  | { type: 'offer' }
  | { type: 'negotiation_needed'; audio: number; video: number }
  | { type: 'candidate'; candidate: string; sdpMid?: string; sdpMLineIndex?: number; usernameFragment?: string }
  | { type: 'participant_joined'; participant: ParticipantInfo }
  | { type: 'participant_left'; identity: string }
  | { type: 'participant_updated'; participant: ParticipantInfo }
  | { type: 'track_published'; identity: string; track_id: string; source: TrackSource; mid: string }
  | { type: 'track_unpublished'; identity: string; track_id: string }
  | { type: 'mute_changed'; identity: string; source: TrackSource; muted: boolean }
  | { type: 'track_paused'; mid: string; track_id: string; reason: string }
  | { type: 'track_resumed'; mid: string; track_id: string }
  | { type: 'layers_wanted'; mid: string; rids: string[] }
  | { type: 'voice_activity'; speakers: string[] }
  | { type: 'permissions_changed'; role: string; permissions: Permissions }
  | { type: 'muted_by_moderator'; source: TrackSource }
  | { type: 'unmute_requested'; source: TrackSource }
  | { type: 'moderated'; action: string; identity?: string; sessions: number; recording_id?: string }
  | { type: 'recording_started'; recording_id: string; started_at_ms: number; started_by: string }
  | { type: 'recording_stopped'; recording_id: string; reason: string }
  | { type: 'media_server_lost'; message: string };

/** Every message this SDK sends (docs/protocol.md section 3). */
export type ClientMessage =
  | { type: 'join'; room: string; token: string; resume?: string }
  | { type: 'leave' }
  | { type: 'ping'; id: number }
  | { type: 'refresh'; token: string }
  | { type: 'offer'; sdp: string; tracks: Record<string, TrackSource> }
  | { type: 'candidate'; candidate: string; sdpMid?: string; sdpMLineIndex?: number; usernameFragment?: string }
  | { type: 'mute' | 'unmute'; source: TrackSource }
  | { type: 'screen_share_start' | 'screen_share_stop' }
  | { type: 'track_views'; views: TrackView[] }
  | ({ type: 'moderate'; action: ModerationActionName } & ModerationFields);

/** How a received video track is shown here (`track_views`, adaptive stream). */
export type TrackView =
  | { mid: string; track_id: string; visible: true; width: number; height: number }
  | { mid: string; track_id: string; visible: false };

export interface ModerationFields {
  identity?: string;
  source?: TrackSource;
  ban_seconds?: number;
  reason?: string;
  policy?: RoomPolicy;
  reset?: boolean;
}

// ---- parsing ----------------------------------------------------------------------------

/** Why a server message was not understood. */
export class MalformedMessage extends Error {}

const SOURCES: readonly string[] = ['microphone', 'camera', 'screen', 'screen_audio'];

/**
 * Field readers over one decoded JSON object. A required field of the wrong type makes the
 * whole message malformed; optional ones are dropped when absent or null.
 */
class Fields {
  // The JSON boundary: the one place an untyped record is read.
  constructor(private readonly o: Record<string, unknown>) {}

  str(k: string): string {
    const v = this.o[k];
    if (typeof v !== 'string') throw new MalformedMessage(`\`${k}\` is not a string`);
    return v;
  }

  /** A string or a number read as text (mids are strings, but tolerate a number). */
  text(k: string): string {
    const v = this.o[k];
    if (typeof v === 'number') return String(v);
    return this.str(k);
  }

  optStr(k: string): string | undefined {
    const v = this.o[k];
    return v == null ? undefined : this.str(k);
  }

  num(k: string): number {
    const v = this.o[k];
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new MalformedMessage(`\`${k}\` is not a number`);
    return v;
  }

  /** A count the SDK may default: absent or not a number is `fallback`. */
  numOr(k: string, fallback: number): number {
    const v = Number(this.o[k]);
    return Number.isFinite(v) ? v : fallback;
  }

  optNum(k: string): number | undefined {
    const v = this.o[k];
    return v == null ? undefined : this.num(k);
  }

  bool(k: string): boolean {
    const v = this.o[k];
    if (typeof v !== 'boolean') throw new MalformedMessage(`\`${k}\` is not a boolean`);
    return v;
  }

  optBool(k: string): boolean | undefined {
    const v = this.o[k];
    return v == null ? undefined : this.bool(k);
  }

  source(k: string): TrackSource {
    const v = this.str(k);
    if (!SOURCES.includes(v)) throw new MalformedMessage(`\`${k}\` is not a track source`);
    return v as TrackSource;
  }

  strings(k: string): string[] {
    const v = this.o[k] ?? [];
    if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) {
      throw new MalformedMessage(`\`${k}\` is not a list of strings`);
    }
    return v;
  }

  obj(k: string): Fields {
    const v = this.o[k];
    if (!isRecord(v)) throw new MalformedMessage(`\`${k}\` is not an object`);
    return new Fields(v);
  }

  permissions(k: string): Permissions {
    const p = this.obj(k);
    return omitUndefined({
      publish_audio: p.bool('publish_audio'),
      publish_video: p.bool('publish_video'),
      publish_screen: p.bool('publish_screen'),
      subscribe: p.bool('subscribe'),
      record: p.optBool('record'),
    });
  }

  participant(): ParticipantInfo {
    return omitUndefined({ identity: this.str('identity'), name: this.optStr('name'), role: this.optStr('role') });
  }

  participants(k: string): ParticipantInfo[] | undefined {
    const v = this.o[k];
    if (v == null) return undefined;
    if (!Array.isArray(v)) throw new MalformedMessage(`\`${k}\` is not a list`);
    return v.map((p) => {
      if (!isRecord(p)) throw new MalformedMessage(`\`${k}\` holds a non-object`);
      return new Fields(p).participant();
    });
  }

  /** RTCIceServer entries: passed to the browser as they are, after a shape check. */
  iceServers(k: string): RTCIceServer[] | undefined {
    const v = this.o[k];
    if (v == null) return undefined;
    if (!Array.isArray(v) || !v.every((s) => isRecord(s) && (typeof s.urls === 'string' || Array.isArray(s.urls)))) {
      throw new MalformedMessage(`\`${k}\` is not a list of ICE servers`);
    }
    return v as RTCIceServer[];
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Drops `undefined` members, so an optional field not sent is absent from the typed message
 * (as it was from the JSON), not present with `undefined`. */
function omitUndefined<T extends object>(o: T): T {
  for (const k of Object.keys(o) as (keyof T)[]) {
    if (o[k] === undefined) delete o[k];
  }
  return o;
}

/**
 * Decodes one text frame. Returns the typed message; `{type: unknown}`-shaped frames of a
 * type this SDK does not know come back as `null` with their type in `unknownType` (the
 * protocol lets the proxy add types); anything else malformed throws `MalformedMessage`.
 */
export function parseServerMessage(text: string): ServerMessage | { unknownType: string } {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new MalformedMessage('not JSON');
  }
  if (!isRecord(raw) || typeof raw.type !== 'string') throw new MalformedMessage('no `type`');
  const f = new Fields(raw);
  const type = raw.type;
  switch (type) {
    case 'joined':
      return omitUndefined({
        type,
        session_id: f.num('session_id'),
        room: f.str('room'),
        identity: f.str('identity'),
        name: f.optStr('name'),
        tenant: f.optStr('tenant'),
        role: f.str('role'),
        permissions: f.permissions('permissions'),
        expires_at: f.num('expires_at'),
        media: f.bool('media'),
        ice_servers: f.iceServers('ice_servers'),
        ice_servers_expires_at: f.optNum('ice_servers_expires_at'),
        resume_token: f.optStr('resume_token'),
        resumed: f.optBool('resumed'),
        participants: f.participants('participants'),
        e2ee: f.optBool('e2ee') ?? false,
      });
    case 'waiting': {
      const reason = f.str('reason');
      if (reason !== 'host' && reason !== 'lobby') throw new MalformedMessage('unknown waiting reason');
      return { type, room: f.str('room'), reason, timeout_seconds: f.numOr('timeout_seconds', 0) };
    }
    case 'lobby_request':
      return omitUndefined({ type, identity: f.str('identity'), name: f.optStr('name'), role: f.optStr('role') });
    case 'lobby_left':
      return { type, identity: f.str('identity'), outcome: f.str('outcome') };
    case 'ice_servers':
      return { type, ice_servers: f.iceServers('ice_servers') ?? [], expires_at: f.numOr('expires_at', 0) };
    case 'error':
      return omitUndefined({ type, code: f.str('code'), message: f.optStr('message') ?? '', request: f.optStr('request') });
    case 'token_expiring':
      return { type, expires_at: f.num('expires_at') };
    case 'refreshed':
      return { type, expires_at: f.num('expires_at'), permissions: f.permissions('permissions') };
    case 'pong':
      return omitUndefined({ type, id: f.optNum('id') });
    case 'answer':
      return { type, sdp: f.str('sdp') };
    case 'offer':
      return { type };
    case 'negotiation_needed':
      return { type, audio: f.numOr('audio', 0), video: f.numOr('video', 0) };
    case 'candidate':
      return omitUndefined({
        type,
        candidate: f.optStr('candidate') ?? '',
        sdpMid: f.optStr('sdpMid'),
        sdpMLineIndex: f.optNum('sdpMLineIndex'),
        usernameFragment: f.optStr('usernameFragment'),
      });
    case 'participant_joined':
      return { type, participant: f.obj('participant').participant() };
    case 'participant_left':
      return { type, identity: f.str('identity') };
    case 'participant_updated':
      return { type, participant: f.obj('participant').participant() };
    case 'track_published':
      return { type, identity: f.str('identity'), track_id: f.str('track_id'), source: f.source('source'), mid: f.text('mid') };
    case 'track_unpublished':
      return { type, identity: f.str('identity'), track_id: f.str('track_id') };
    case 'mute_changed':
      return { type, identity: f.str('identity'), source: f.source('source'), muted: f.bool('muted') };
    case 'track_paused':
      return { type, mid: f.text('mid'), track_id: f.optStr('track_id') ?? '', reason: f.optStr('reason') ?? '' };
    case 'track_resumed':
      return { type, mid: f.text('mid'), track_id: f.optStr('track_id') ?? '' };
    case 'layers_wanted':
      return { type, mid: f.text('mid'), rids: f.strings('rids') };
    case 'voice_activity':
      return { type, speakers: f.strings('speakers') };
    case 'permissions_changed':
      return { type, role: f.str('role'), permissions: f.permissions('permissions') };
    case 'muted_by_moderator':
    case 'unmute_requested':
      return { type, source: f.source('source') };
    case 'moderated':
      return omitUndefined({
        type,
        action: f.str('action'),
        identity: f.optStr('identity'),
        sessions: f.numOr('sessions', 0),
        recording_id: f.optStr('recording_id'),
      });
    case 'recording_started':
      return { type, recording_id: f.str('recording_id'), started_at_ms: f.num('started_at_ms'), started_by: f.optStr('started_by') ?? '' };
    case 'recording_stopped':
      return { type, recording_id: f.str('recording_id'), reason: f.optStr('reason') ?? '' };
    case 'media_server_lost':
      return { type, message: f.optStr('message') ?? '' };
    default:
      return { unknownType: type };
  }
}
