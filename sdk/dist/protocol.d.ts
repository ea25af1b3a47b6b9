/** Close codes of the protocol (docs/protocol.md section 6), by label. */
export declare const CloseCode: Readonly<{
    readonly normal: 1000;
    readonly going_away: 1001;
    readonly bad_message: 4000;
    readonly join_timeout: 4001;
    readonly idle_timeout: 4002;
    readonly message_too_large: 4003;
    readonly rate_limited: 4004;
    readonly too_many_connections: 4005;
    readonly too_many_auth_failures: 4006;
    readonly too_many_sessions: 4007;
    readonly media_server_lost: 4008;
    readonly slow_client: 4009;
    readonly media_connection_failed: 4010;
    readonly removed: 4011;
    readonly banned: 4012;
    readonly room_ended: 4013;
    readonly guests_not_allowed: 4014;
    readonly lobby_denied: 4015;
    readonly host_timeout: 4016;
    readonly lobby_timeout: 4017;
    readonly lobby_full: 4018;
    readonly token_missing: 4100;
    readonly token_malformed: 4101;
    readonly token_too_large: 4102;
    readonly token_algorithm_rejected: 4103;
    readonly token_unknown_key: 4104;
    readonly token_bad_signature: 4105;
    readonly token_expired: 4106;
    readonly token_not_yet_valid: 4107;
    readonly token_too_long_lived: 4108;
    readonly token_wrong_issuer: 4109;
    readonly token_wrong_audience: 4110;
    readonly token_wrong_room: 4111;
    readonly token_wildcard_room: 4112;
    readonly token_missing_claim: 4113;
    readonly token_identity_mismatch: 4114;
    readonly keys_unavailable: 4115;
    readonly token_role_unmapped: 4116;
    readonly token_is_server_token: 4117;
    readonly token_revoked: 4118;
    readonly affiliation_denied: 4119;
    readonly affiliation_unavailable: 4120;
}>;
/** A close label, e.g. `token_expired`. */
export type CloseLabel = keyof typeof CloseCode;
/**
 * Every `error.code` the proxy sends that is not also a close label (section 4), plus the
 * codes this SDK raises itself (`connection_failed`, `media_failed`, `negotiation_failed`,
 * `ice_servers_rejected`, `audio_output_unsupported`).
 */
export declare const ErrorCode: Readonly<{
    readonly media_unavailable: "media_unavailable";
    readonly media_refused: "media_refused";
    readonly forbidden: "forbidden";
    readonly bad_sdp: "bad_sdp";
    readonly bad_track: "bad_track";
    readonly bad_message: "bad_message";
    /** The media server hit a limit (sessions per call, tracks per session...). */
    readonly media_limit: "media_limit";
    /** The media server failed to process a message. */
    readonly media_error: "media_error";
    /** The WebSocket could not be opened, or dropped without a close frame (1006). */
    readonly connection_failed: "connection_failed";
    /** getUserMedia / getDisplayMedia failed (permission denied, no device). */
    readonly media_failed: "media_failed";
    /** The room is end-to-end encrypted (`joined.e2ee`) and this client cannot encrypt now: no
     * key is current yet (`setE2eeKey`), or the browser cannot transform frames. It sends no
     * media rather than plaintext (docs/e2ee.md); with a key, held-back tracks are sent. */
    readonly e2ee_unsupported: "e2ee_unsupported";
    /** The browser refused an SDP or candidate, a peer connection step did not settle in
     * time, or no answer came: the SDK reconnects (a new session, a new peer connection). */
    readonly negotiation_failed: "negotiation_failed";
    /** `setAudioOutput`: this browser cannot choose where media plays (no
     * `HTMLMediaElement.setSinkId`). */
    readonly audio_output_unsupported: "audio_output_unsupported";
    /** The browser refused the TURN servers of an `ice_servers` message (setConfiguration). */
    readonly ice_servers_rejected: "ice_servers_rejected";
    /** (`moderate`) the identity has no session in the room. */
    readonly not_found: "not_found";
    /** (`moderate`) a malformed request, e.g. a ban longer than a year. */
    readonly bad_request: "bad_request";
    /** A message other than ping / refresh / leave while the room's policy holds the session. */
    readonly not_admitted: "not_admitted";
    /** (`moderate` `start_recording`) the room is already being recorded. */
    readonly already_recording: "already_recording";
    /** (`moderate` `stop_recording`) the room is not being recorded. */
    readonly not_recording: "not_recording";
    /** (`moderate` `start_recording`) recording is off at the media server. */
    readonly recording_disabled: "recording_disabled";
    /** (`moderate` `start_recording`) the media server's recording disk is full. */
    readonly disk_full: "disk_full";
    /** (`moderate` `start_recording`) the room is end-to-end encrypted: it cannot be recorded. */
    readonly encrypted: "encrypted";
    /** (`moderate` `set_policy`) `e2ee` would change while someone is in the room. */
    readonly e2ee_locked: "e2ee_locked";
}>;
/** An error code of the protocol or of the SDK (not a close label). */
export type ErrorCodeLabel = keyof typeof ErrorCode;
/** What `RtcdError.code` holds: an error code or a close label. A proxy newer than this SDK
 * may send codes it does not know, hence the open `string`. */
export type RtcdErrorCode = ErrorCodeLabel | CloseLabel | (string & {});
/** What a moderator can do from inside the call (`moderate`, docs/protocol.md section 5a). */
export declare const ModerationAction: Readonly<{
    readonly kick: "kick";
    readonly ban: "ban";
    readonly mute: "mute";
    readonly request_unmute: "request_unmute";
    readonly end_room: "end_room";
    readonly grant_moderator: "grant_moderator";
    readonly revoke_moderator: "revoke_moderator";
    readonly admit: "admit";
    readonly deny: "deny";
    readonly set_policy: "set_policy";
    readonly start_recording: "start_recording";
    readonly stop_recording: "stop_recording";
}>;
export type ModerationActionName = keyof typeof ModerationAction;
/** The label of a close code, e.g. 4106 -> `token_expired` (unknown codes: `close_<code>`). */
export declare function closeLabel(code: number): string;
/**
 * Token problems (4100-4199) except the temporary `keys_unavailable` and
 * `affiliation_unavailable`: never retried.
 */
export declare function isTokenCloseCode(code: number): boolean;
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
export type ServerMessage = ({
    type: 'joined';
} & JoinedInfo) | {
    type: 'waiting';
    room: string;
    reason: 'host' | 'lobby';
    timeout_seconds: number;
} | {
    type: 'lobby_request';
    identity: string;
    name?: string;
    role?: string;
} | {
    type: 'lobby_left';
    identity: string;
    outcome: string;
} | {
    type: 'ice_servers';
    ice_servers: RTCIceServer[];
    expires_at: number;
} | {
    type: 'error';
    code: string;
    message: string;
    request?: string;
} | {
    type: 'token_expiring';
    expires_at: number;
} | {
    type: 'refreshed';
    expires_at: number;
    permissions: Permissions;
} | {
    type: 'pong';
    id?: number;
} | {
    type: 'answer';
    sdp: string;
} | {
    type: 'offer';
} | {
    type: 'negotiation_needed';
    audio: number;
    video: number;
} | {
    type: 'candidate';
    candidate: string;
    sdpMid?: string;
    sdpMLineIndex?: number;
    usernameFragment?: string;
} | {
    type: 'participant_joined';
    participant: ParticipantInfo;
} | {
    type: 'participant_left';
    identity: string;
} | {
    type: 'participant_updated';
    participant: ParticipantInfo;
} | {
    type: 'track_published';
    identity: string;
    track_id: string;
    source: TrackSource;
    mid: string;
} | {
    type: 'track_unpublished';
    identity: string;
    track_id: string;
} | {
    type: 'mute_changed';
    identity: string;
    source: TrackSource;
    muted: boolean;
} | {
    type: 'track_paused';
    mid: string;
    track_id: string;
    reason: string;
} | {
    type: 'track_resumed';
    mid: string;
    track_id: string;
} | {
    type: 'layers_wanted';
    mid: string;
    rids: string[];
} | {
    type: 'voice_activity';
    speakers: string[];
} | {
    type: 'permissions_changed';
    role: string;
    permissions: Permissions;
} | {
    type: 'muted_by_moderator';
    source: TrackSource;
} | {
    type: 'unmute_requested';
    source: TrackSource;
} | {
    type: 'moderated';
    action: string;
    identity?: string;
    sessions: number;
    recording_id?: string;
} | {
    type: 'recording_started';
    recording_id: string;
    started_at_ms: number;
    started_by: string;
} | {
    type: 'recording_stopped';
    recording_id: string;
    reason: string;
} | {
    type: 'media_server_lost';
    message: string;
};
/** Every message this SDK sends (docs/protocol.md section 3). */
export type ClientMessage = {
    type: 'join';
    room: string;
    token: string;
    resume?: string;
} | {
    type: 'leave';
} | {
    type: 'ping';
    id: number;
} | {
    type: 'refresh';
    token: string;
} | {
    type: 'offer';
    sdp: string;
    tracks: Record<string, TrackSource>;
} | {
    type: 'candidate';
    candidate: string;
    sdpMid?: string;
    sdpMLineIndex?: number;
    usernameFragment?: string;
} | {
    type: 'mute' | 'unmute';
    source: TrackSource;
} | {
    type: 'screen_share_start' | 'screen_share_stop';
} | {
    type: 'track_views';
    views: TrackView[];
} | ({
    type: 'moderate';
    action: ModerationActionName;
} & ModerationFields);
/** How a received video track is shown here (`track_views`, adaptive stream). */
export type TrackView = {
    mid: string;
    track_id: string;
    visible: true;
    width: number;
    height: number;
} | {
    mid: string;
    track_id: string;
    visible: false;
};
export interface ModerationFields {
    identity?: string;
    source?: TrackSource;
    ban_seconds?: number;
    reason?: string;
    policy?: RoomPolicy;
    reset?: boolean;
}
/** Why a server message was not understood. */
export declare class MalformedMessage extends Error {
}
/**
 * Decodes one text frame. Returns the typed message; `{type: unknown}`-shaped frames of a
 * type this SDK does not know come back as `null` with their type in `unknownType` (the
 * protocol lets the proxy add types); anything else malformed throws `MalformedMessage`.
 */
export declare function parseServerMessage(text: string): ServerMessage | {
    unknownType: string;
};
