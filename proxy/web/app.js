// The demo call page: joins the room named in the URL and shows everyone in a grid.
//
//   /?room=R&token=T   join with a token issued by the platform
//   /?room=R&name=N    dev mode: the proxy mints a token (GET /dev/token, dev mode only)
//   &relay=1           force media through the TURN relay (iceTransportPolicy 'relay'), to
//                      check that the proxy's TURN servers work from this network
//
// For automated checks the page mirrors its state on <body>:
//   data-state   connecting | connected | closed | error
//   data-reason  the protocol label of the last problem (close label or error code), e.g.
//                token_expired, token_wrong_room, media_unavailable, going_away
//   data-joins   how many times the client joined (1 + successful reconnects)
//   data-media   this client's media: connecting | connected | reconnecting | poor | failed
//   data-route   how this client's media travels: direct | relayed (empty until connected);
//                data-relay-protocol: udp | tcp | tls when relayed (to the TURN server)
// `error` with reason `media_unavailable` means: signaling works and the token was accepted,
// but the proxy has no media server, so no call media can flow (the local preview still runs).
// Every remote participant, publishing or not, has a tile
// <figure data-participant="IDENTITY" data-media="connecting|connected|poor">; their camera +
// microphone play in its <video data-participant="IDENTITY"> (screen shares in a second tile,
// <figure data-screen-of="IDENTITY">, with <video data-participant="IDENTITY" data-source="screen">).
// A moderator (role from the token, or granted live) sees moderation buttons on every remote
// tile (<div class="moderation"> with data-action="mute|kick|ban|grant_moderator|
// revoke_moderator") and an "End for all" button (#end-room); body[data-role] is the role.
// `window.rtcd` is the RtcdClient (docs/web-client.md, "Automation").

import { RtcdClient, ErrorCode } from '/sdk/client.js';

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));
const body = document.body;

/** What the page shows, derived from the SDK's state and the last problem. */
const view = {
  /** @type {string} the SDK state */
  sdk: 'connecting',
  /** @type {{reason: string, title: string, message: string, fatal: boolean}|null} */
  problem: null,
  /** @type {string} the SDK's local media state */
  media: 'connecting',
};

/** What "Connected" becomes while the call's media is not healthy. */
const MEDIA_TEXT = {
  connecting: 'Connected — media connecting…',
  reconnecting: 'Connected — media reconnecting…',
  poor: 'Connected — poor connection',
  failed: 'Connected — media failed',
};

const PILL_TEXT = { connecting: 'Connecting…', waiting: 'Waiting…', connected: 'Connected', closed: 'Left', error: 'Error' };

/** Why a session that waited or knocked was not let in (close labels), for the page. */
const ENTRY_REFUSED = {
  lobby_denied: 'A moderator did not let you in.',
  host_timeout: 'The host did not join in time.',
  lobby_timeout: 'Nobody let you in in time.',
  lobby_full: 'Too many people are waiting to enter this room; try again later.',
  guests_not_allowed: 'This room does not allow guests.',
};

function render() {
  let state;
  if (view.problem && view.problem.fatal) state = 'error';
  else if (view.sdk === 'connected') state = view.problem ? 'error' : 'connected';
  else if (view.sdk === 'closed') state = 'closed';
  else if (view.sdk === 'waiting') state = 'waiting';
  else if (view.sdk === 'error') state = 'error';
  else state = 'connecting';
  if (view.sdk === 'reconnecting' && view.problem) state = 'connecting';
  body.dataset.state = state;
  body.dataset.reason = view.problem ? view.problem.reason : '';
  body.dataset.media = view.media;
  const pill = $('state');
  // Never "Connected" while the media is not: signaling alone is not a call.
  const mediaNote = state === 'connected' && MEDIA_TEXT[view.media];
  pill.textContent = view.sdk === 'reconnecting' ? 'Reconnecting…'
    : view.problem && view.problem.reason === 'no_room' ? 'Not joined' : mediaNote || PILL_TEXT[state];
  pill.className = `pill ${state}${mediaNote ? ` media-${view.media}` : ''}`;
  const banner = $('banner');
  banner.hidden = !view.problem;
  if (view.problem) {
    banner.className = `banner ${state}`;
    $('banner-title').textContent = view.problem.title;
    $('banner-text').textContent = view.problem.message;
    $('reason').textContent = view.problem.reason;
  }
}

/** @param {string} reason @param {string} title @param {string} message @param {boolean} fatal */
function problem(reason, title, message, fatal) {
  const text = message ? message[0].toUpperCase() + message.slice(1) : '';
  view.problem = { reason, title, message: text, fatal };
  render();
}

/** A short-lived notice for errors that do not end the call. */
function toast(text) {
  const el = document.createElement('div');
  el.className = 'toast';
  el.textContent = text;
  $('toasts').append(el);
  setTimeout(() => el.remove(), 6000);
}

// ---- tiles --------------------------------------------------------------------------------

/** @type {Map<string, {tile: HTMLElement, video: HTMLVideoElement, stream: MediaStream, screen?: HTMLElement}>} */
const tiles = new Map();

function initials(text) {
  return text.split(/[\s._-]+/).filter(Boolean).slice(0, 2).map((w) => w[0].toUpperCase()).join('') || '?';
}

/** @param {HTMLVideoElement} video */
function play(video) {
  video.play().catch((e) => {
    if (e.name !== 'NotAllowedError') return;
    // Autoplay with sound needs a user gesture: play muted and offer to enable sound.
    video.muted = true;
    video.play().catch(() => {});
    offerSound();
  });
}

function offerSound() {
  if (document.getElementById('enable-sound')) return;
  const button = document.createElement('button');
  button.id = 'enable-sound';
  button.type = 'button';
  button.textContent = 'Enable sound';
  button.addEventListener('click', () => {
    for (const { video } of tiles.values()) {
      video.muted = false;
      play(video);
    }
    button.remove();
  });
  $('toasts').append(button);
}

function makeTile(identity, label, source) {
  const tile = document.createElement('figure');
  tile.className = source === 'screen' ? 'tile screen' : 'tile';
  tile.dataset.identity = identity;
  // Only the participant's own tile answers figure[data-participant=…]; a screen tile says
  // whose screen it is.
  if (source === 'screen') tile.dataset.screenOf = identity;
  else {
    tile.dataset.participant = identity;
    tile.dataset.media = 'connecting';
  }
  const video = document.createElement('video');
  video.autoplay = true;
  video.playsInline = true;
  video.dataset.participant = identity;
  if (source === 'screen') video.dataset.source = 'screen';
  const avatar = document.createElement('div');
  avatar.className = 'avatar';
  avatar.textContent = initials(label);
  const caption = document.createElement('figcaption');
  const name = document.createElement('span');
  name.className = 'name';
  name.textContent = source === 'screen' ? `${label} (screen)` : label;
  const badges = document.createElement('span');
  badges.className = 'badges';
  const health = document.createElement('span');
  health.className = 'health';
  caption.append(name, badges, health);
  if (source !== 'screen') caption.append(moderationButtons(identity));
  tile.append(video, avatar, caption);
  $('grid').append(tile);
  updateGrid();
  return { tile, video };
}

/**
 * Shows `tracks` in `video` through a fresh MediaStream. Seen in Chromium 156: a tile made when
 * someone joins (an empty stream on the element) that later gets their camera added to that
 * same stream stays blank for tens of seconds or for good; assigning a new stream renders at once.
 * @param {HTMLVideoElement} video @param {MediaStreamTrack[]} tracks
 */
function show(video, tracks) {
  video.srcObject = new MediaStream(tracks);
  if (tracks.length) play(video);
}

function tileFor(identity, name) {
  let entry = tiles.get(identity);
  if (!entry) {
    const { tile, video } = makeTile(identity, name || identity, 'camera');
    entry = { tile, video, stream: new MediaStream() };
    video.srcObject = entry.stream;
    tiles.set(identity, entry);
  } else if (name) {
    entry.tile.querySelector('.name').textContent = name;
  }
  return entry;
}

const HEALTH_TEXT = { connecting: 'connecting…', connected: '', poor: 'poor connection' };

/** @param {string} identity @param {string} media */
function setTileMedia(identity, media) {
  const entry = tiles.get(identity);
  if (!entry) return;
  entry.tile.dataset.media = media;
  entry.tile.querySelector('.health').textContent = HEALTH_TEXT[media] ?? media;
}

function removeTile(identity) {
  const entry = tiles.get(identity);
  if (!entry) return;
  entry.tile.remove();
  if (entry.screen) entry.screen.remove();
  tiles.delete(identity);
  updateGrid();
}

function updateGrid() {
  $('grid').dataset.count = String($('grid').children.length);
}

function setBadges(identity, participant) {
  const entry = tiles.get(identity);
  if (!entry) return;
  const muted = participant.muted || {};
  const badges = entry.tile.querySelector('.badges');
  badges.textContent = '';
  if (muted.microphone) badges.append(badge('mic off', 'off'));
  if (muted.camera) badges.append(badge('camera off', 'off'));
  entry.tile.classList.toggle('speaking', Boolean(participant.speaking));
  entry.tile.classList.toggle('camera-off', Boolean(muted.camera) || entry.stream.getVideoTracks().length === 0);
}

function badge(text, kind) {
  const el = document.createElement('span');
  el.className = `badge ${kind}`;
  el.textContent = text;
  return el;
}

// ---- moderation ---------------------------------------------------------------------------

/** The page's client, once created (moderation buttons act through it). */
let activeClient = null;

/** Moderation buttons for a remote participant's tile; shown only to moderators (CSS). */
function moderationButtons(identity) {
  const box = document.createElement('div');
  box.className = 'moderation';
  const actions = [
    ['mute', 'Mute', { source: 'microphone' }],
    ['kick', 'Remove', {}],
    ['ban', 'Ban 1 h', { banSeconds: 3600 }],
    ['grant_moderator', 'Make moderator', {}],
    ['revoke_moderator', 'Revoke moderator', {}],
  ];
  for (const [action, text, extra] of actions) {
    const button = document.createElement('button');
    button.type = 'button';
    button.dataset.action = action;
    button.textContent = text;
    button.addEventListener('click', () => {
      if (activeClient) activeClient.moderate(/** @type {any} */ (action), { identity, ...extra });
    });
    box.append(button);
  }
  return box;
}

/** Shows or hides the moderator's controls. @param {string} role */
function setRole(role) {
  body.dataset.role = role || '';
  /** @type {HTMLButtonElement} */ ($('end-room')).hidden = role !== 'moderator';
  showRecording();
}

// ---- recording -----------------------------------------------------------------------------

/**
 * The recording badge ("● REC This call is being recorded") while the room records, and the
 * start / stop buttons for a moderator whose token grants `record`.
 */
function showRecording() {
  const client = activeClient;
  const recording = Boolean(client && client.recording);
  $('rec-badge').hidden = !recording;
  body.dataset.recording = recording ? 'true' : '';
  const session = client && client.session;
  const may = Boolean(session && session.role === 'moderator' && session.permissions && session.permissions.record);
  /** @type {HTMLButtonElement} */ ($('start-recording')).hidden = !may || recording;
  /** @type {HTMLButtonElement} */ ($('stop-recording')).hidden = !may || !recording;
}

// ---- waiting screen and lobby panel ------------------------------------------------------

/** Counts down the wait (the proxy closes the session when it runs out). */
let waitTimer = 0;

/** The waiting screen: why this session is held, and for how long at most. */
function showWaiting(waiting) {
  const section = $('waiting');
  section.hidden = !waiting;
  $('grid').hidden = $('controls').hidden = Boolean(waiting);
  clearInterval(waitTimer);
  if (!waiting) return;
  $('waiting-title').textContent = waiting.reason === 'lobby'
    ? 'Waiting for a moderator to let you in…' : 'Waiting for the host to join…';
  $('waiting-text').textContent = waiting.reason === 'lobby'
    ? 'This room has a lobby: a moderator has been told you are here.'
    : 'This call starts when a moderator joins; you will be let in automatically.';
  const until = Date.now() + waiting.timeoutSeconds * 1000;
  const tick = () => {
    const left = Math.max(0, Math.round((until - Date.now()) / 1000));
    $('waiting-timer').textContent = `You can wait ${Math.floor(left / 60)} min ${left % 60} s more.`;
  };
  tick();
  waitTimer = setInterval(tick, 1000);
}

/** The moderator's lobby panel: who knocks, with admit / deny buttons. @param {RtcdClient} client */
function renderLobby(client) {
  const list = $('lobby-list');
  list.textContent = '';
  for (const entry of client.lobby.values()) {
    const item = document.createElement('li');
    item.dataset.identity = entry.identity;
    const who = document.createElement('span');
    who.className = 'name';
    who.textContent = `${entry.name || entry.identity}${entry.role === 'guest' ? ' (guest)' : ''}`;
    const admit = document.createElement('button');
    admit.type = 'button';
    admit.dataset.action = 'admit';
    admit.textContent = 'Admit';
    admit.addEventListener('click', () => client.admit(entry.identity));
    const deny = document.createElement('button');
    deny.type = 'button';
    deny.dataset.action = 'deny';
    deny.className = 'danger';
    deny.textContent = 'Deny';
    deny.addEventListener('click', () => client.deny(entry.identity));
    item.append(who, admit, deny);
    list.append(item);
  }
  $('lobby-count').textContent = String(client.lobby.size);
  $('lobby').hidden = client.lobby.size === 0;
}

// ---- controls -----------------------------------------------------------------------------

/** @param {RtcdClient} client */
function wireControls(client) {
  const toggle = (id, source, on, off) => {
    const button = /** @type {HTMLButtonElement} */ ($(id));
    const show = () => {
      const muted = client.muted.has(source);
      button.setAttribute('aria-pressed', String(muted));
      button.textContent = muted ? off : on;
      button.classList.toggle('off', muted);
    };
    button.addEventListener('click', () => {
      client.setMuted(source, !client.muted.has(source));
      show();
      if (source === 'camera') $('local-tile').classList.toggle('camera-off', client.muted.has('camera'));
      if (source === 'microphone') localBadges(client);
    });
    show();
  };
  toggle('mic', 'microphone', 'Mute', 'Unmute');
  toggle('camera', 'camera', 'Stop video', 'Start video');
  const screen = /** @type {HTMLButtonElement} */ ($('screen'));
  screen.addEventListener('click', async () => {
    if (client.localTracks.has('screen')) {
      client.stopScreenShare();
    } else {
      try {
        await client.startScreenShare();
      } catch {
        // Reported through the client's `error` event.
      }
    }
  });
  $('leave').addEventListener('click', () => client.leave());
  $('end-room').addEventListener('click', () => {
    if (confirm('End the call for everyone?')) client.moderate('end_room');
  });
  $('start-recording').addEventListener('click', () => {
    if (confirm('Record this call? Everyone in it will be told.')) client.startRecording();
  });
  $('stop-recording').addEventListener('click', () => client.stopRecording());
}

/** @param {RtcdClient} client */
function localBadges(client) {
  const badges = $('local-tile').querySelector('.badges');
  badges.textContent = '';
  if (client.muted.has('microphone')) badges.append(badge('mic off', 'off'));
}

function setControls(enabled, permissions) {
  for (const id of ['mic', 'camera', 'screen', 'leave', 'end-room']) {
    /** @type {HTMLButtonElement} */ ($(id)).disabled = !enabled;
  }
  if (enabled && permissions) {
    /** @type {HTMLButtonElement} */ ($('mic')).disabled = !permissions.publish_audio;
    /** @type {HTMLButtonElement} */ ($('camera')).disabled = !permissions.publish_video;
    /** @type {HTMLButtonElement} */ ($('screen')).disabled = !permissions.publish_screen;
  }
}

// ---- wiring the client ------------------------------------------------------------------

/** @param {RtcdClient} client */
function wireClient(client) {
  client.addEventListener('state', (e) => {
    view.sdk = e.detail.state;
    // A new session starts clean; its own problems (e.g. media_unavailable) follow.
    if (view.sdk === 'connected' && view.problem && !view.problem.fatal) view.problem = null;
    if (view.sdk === 'closed' && !(view.problem && view.problem.fatal)) {
      problem('normal', 'You left the call.', 'Reload the page to join again.', false);
    }
    if (view.sdk === 'closed' || view.sdk === 'error') setControls(false);
    render();
  });
  client.addEventListener('waiting', (e) => {
    showWaiting(e.detail);
    render();
  });
  client.addEventListener('lobbyrequest', (e) => {
    renderLobby(client);
    toast(`${e.detail.name || e.detail.identity} is waiting in the lobby.`);
  });
  client.addEventListener('lobbyleft', () => renderLobby(client));
  $('lobby-open').addEventListener('click', () => client.setRoomPolicy({ lobby: false }));
  $('waiting-leave').addEventListener('click', () => client.leave());
  client.addEventListener('joined', (e) => {
    const info = e.detail;
    showWaiting(null);
    body.dataset.joins = String(client.joins);
    $('identity').textContent = `as ${info.name || info.identity}`;
    $('local-tile').querySelector('.name').textContent = `${info.name || info.identity} (you)`;
    view.problem = null;
    setControls(true, info.permissions);
    setRole(info.role);
    render();
  });
  client.addEventListener('permissionschanged', (e) => {
    setControls(true, e.detail.permissions);
    setRole(e.detail.role);
    localBadges(client);
    toast(`Your role is now ${e.detail.role}; your permissions changed.`);
  });
  client.addEventListener('mutedbymoderator', (e) => {
    toast(`A moderator muted your ${e.detail.source}.`);
    const id = e.detail.source === 'camera' ? 'camera' : e.detail.source === 'microphone' ? 'mic' : null;
    if (id) {
      const button = /** @type {HTMLButtonElement} */ ($(id));
      button.setAttribute('aria-pressed', 'true');
      button.classList.add('off');
      button.textContent = id === 'mic' ? 'Unmute' : 'Start video';
    }
    localBadges(client);
  });
  client.addEventListener('unmuterequested', (e) => {
    if (confirm(`A moderator asks you to unmute your ${e.detail.source}. Unmute?`)) {
      client.setMuted(e.detail.source, false);
      localBadges(client);
    }
  });
  client.addEventListener('recordingstarted', (e) => {
    showRecording();
    const by = e.detail.startedBy === 'policy' ? ' (room policy)' : e.detail.startedBy ? ` by ${e.detail.startedBy}` : '';
    toast(`This call is now being recorded${by}.`);
  });
  client.addEventListener('recordingstopped', () => {
    showRecording();
    toast('The recording stopped.');
  });
  client.addEventListener('moderated', (e) => {
    toast(`${e.detail.action}${e.detail.identity ? ` ${e.detail.identity}` : ''}: done (${e.detail.sessions} session(s))`);
  });
  client.addEventListener('error', (e) => {
    const error = e.detail.error;
    console.warn(`rtcd: ${error.code}${error.closeCode ? ` (${error.closeCode})` : ''}: ${error.message}`);
    if (error.fatal) {
      // Never joined: there is no call to show, only the reason.
      showWaiting(null);
      if (client.joins === 0) $('grid').hidden = $('controls').hidden = true;
      const title = ENTRY_REFUSED[error.code] || (client.joins === 0 ? 'Cannot join.' : 'Disconnected.');
      problem(error.code, title, error.message, true);
    } else if (error.code === ErrorCode.media_unavailable) {
      problem(error.code, 'No media server.', `${error.message}. Signaling works, but no one can be seen or heard.`, false);
    } else if (error.closeCode) {
      problem(error.code, 'Connection lost.', error.message, false);
    } else {
      toast(`${error.code}: ${error.message}`);
    }
  });
  client.addEventListener('reconnecting', (e) => {
    const { attempt, delayMs, error } = e.detail;
    problem(error.code, 'Reconnecting…', `${error.message} (attempt ${attempt}, in ${(delayMs / 1000).toFixed(1)} s)`, false);
  });
  client.addEventListener('participantjoined', (e) => {
    tileFor(e.detail.identity, e.detail.name);
    setBadges(e.detail.identity, e.detail);
    setTileMedia(e.detail.identity, e.detail.media || 'connecting');
  });
  client.addEventListener('participantmedia', (e) => setTileMedia(e.detail.identity, e.detail.state));
  client.addEventListener('mediastate', (e) => {
    view.media = e.detail.state;
    render();
  });
  client.addEventListener('participantleft', (e) => removeTile(e.detail.identity));
  client.addEventListener('route', (e) => showRoute(e.detail.route));
  client.addEventListener('track', (e) => {
    const { identity, source, track } = e.detail;
    const participant = client.participants.get(identity);
    const entry = tileFor(identity, participant && participant.name);
    if (source === 'screen' || source === 'screen_audio') {
      if (!entry.screen) {
        const { tile, video } = makeTile(identity, (participant && participant.name) || identity, 'screen');
        video.srcObject = new MediaStream();
        entry.screen = tile;
      }
      const video = /** @type {HTMLVideoElement} */ (entry.screen.querySelector('video'));
      show(video, [.../** @type {MediaStream} */ (video.srcObject).getTracks(), track]);
    } else {
      entry.stream.addTrack(track);
      show(entry.video, entry.stream.getTracks());
    }
    setBadges(identity, participant || { muted: {} });
  });
  client.addEventListener('trackended', (e) => {
    const { identity, source, track } = e.detail;
    const entry = tiles.get(identity);
    if (!entry) return;
    if (source === 'screen' || source === 'screen_audio') {
      if (entry.screen) {
        const video = /** @type {HTMLVideoElement} */ (entry.screen.querySelector('video'));
        const rest = /** @type {MediaStream} */ (video.srcObject).getTracks().filter((t) => t !== track);
        show(video, rest);
        if (rest.length === 0) {
          entry.screen.remove();
          entry.screen = undefined;
          updateGrid();
        }
      }
    } else {
      entry.stream.removeTrack(track);
      show(entry.video, entry.stream.getTracks());
      setBadges(identity, client.participants.get(identity) || { muted: {} });
    }
  });
  client.addEventListener('mutechanged', (e) => setBadges(e.detail.identity, client.participants.get(e.detail.identity) || { muted: {} }));
  client.addEventListener('voiceactivity', () => {
    for (const [identity, participant] of client.participants) setBadges(identity, participant);
  });
  client.addEventListener('localtrack', (e) => {
    if (e.detail.source !== 'camera') return;
    const video = /** @type {HTMLVideoElement} */ ($('local-video'));
    video.srcObject = new MediaStream([e.detail.track]);
    $('local-tile').classList.remove('camera-off');
    play(video);
  });
  client.addEventListener('localtrackended', (e) => {
    if (e.detail.source === 'screen') /** @type {HTMLButtonElement} */ ($('screen')).textContent = 'Share screen';
  });
  client.addEventListener('localtrack', (e) => {
    if (e.detail.source === 'screen') /** @type {HTMLButtonElement} */ ($('screen')).textContent = 'Stop sharing';
  });
}

/**
 * Shows whether media goes direct to the media server or through a TURN relay (from the
 * selected candidate pair's local candidate type, read by the SDK from getStats).
 * @param {import('/sdk/client.js').Route|null} route
 */
function showRoute(route) {
  const el = $('route');
  body.dataset.route = route ? route.path : '';
  body.dataset.relayProtocol = route && route.relayProtocol ? route.relayProtocol : '';
  el.hidden = !route;
  if (!route) return;
  el.textContent = route.path === 'relayed'
    ? `Relayed via TURN (${route.relayProtocol || route.protocol})`
    : `Direct (${route.protocol})`;
  el.className = `pill route ${route.path}`;
  el.title = route.path === 'relayed'
    ? 'Media goes through a TURN relay: this network blocks direct UDP to the media server, or relay was forced.'
    : `Media goes straight to the media server (${route.candidateType} candidate).`;
}

// ---- start --------------------------------------------------------------------------------

/** A dev-mode token from the proxy, or a problem shown on the page. */
async function devToken(room, name, role) {
  let url = `/dev/token?room=${encodeURIComponent(room)}&name=${encodeURIComponent(name)}`;
  if (role) url += `&role=${encodeURIComponent(role)}`;
  let response;
  try {
    response = await fetch(url, { cache: 'no-store' });
  } catch (e) {
    throw Object.assign(new Error(`cannot reach the proxy: ${e.message}`), { reason: 'dev_token_unavailable' });
  }
  if (response.status === 404) {
    throw Object.assign(new Error('This proxy is not in dev mode, so it cannot mint tokens: open the page with ?room=ROOM&token=JWT.'), { reason: 'dev_mode_disabled' });
  }
  if (!response.ok) {
    throw Object.assign(new Error(`the proxy refused a dev token (HTTP ${response.status})`), { reason: 'dev_token_unavailable' });
  }
  const { token } = await response.json();
  return token;
}

async function main() {
  const params = new URLSearchParams(location.search);
  const room = params.get('room');
  const name = params.get('name');
  // Dev mode only: `?role=member` or `guest` to try the waiting room and the lobby.
  const role = params.get('role');
  let token = params.get('token');
  setControls(false);
  updateGrid();
  $('local-tile').classList.add('camera-off');
  if (!room || (!token && !name)) {
    view.sdk = 'closed';
    const form = /** @type {HTMLFormElement} */ ($('join-form'));
    form.hidden = false;
    if (room) /** @type {HTMLInputElement} */ (form.elements.namedItem('room')).value = room;
    $('grid').hidden = $('controls').hidden = true;
    problem('no_room', 'Not in a call.', 'Choose a room to join.', false);
    body.dataset.state = 'closed';
    return;
  }
  $('room').textContent = room;
  document.title = `${room} · rtcd`;
  render();
  if (token) {
    // Keep the token out of the history and of screenshots; it stays in memory for reconnects.
    params.delete('token');
    history.replaceState(null, '', `${location.pathname}?${params}`);
  }
  let getToken;
  if (!token) {
    try {
      token = await devToken(room, name, role);
    } catch (e) {
      $('grid').hidden = $('controls').hidden = true;
      problem(e.reason, 'Cannot join.', e.message, true);
      return;
    }
    getToken = () => devToken(room, name, role);
  }
  // ?relay=1: diagnosis of the TURN path (no direct candidates are even tried).
  const relay = params.get('relay');
  const iceTransportPolicy = relay === '1' || relay === 'true' ? 'relay' : 'all';
  // ?simulcast=0: the camera as one full layer instead of three simulcast layers
  // (docs/web-client.md).
  const off = (name) => params.get(name) === '0' || params.get(name) === 'false';
  const simulcast = !off('simulcast');
  // ?adaptive_stream=0: do not tell the media server how each tile is shown.
  const adaptiveStream = !off('adaptive_stream');
  // ?e2ee_api=streams: in an end-to-end encrypted room, transform frames with Chromium's older
  // encoded-streams API instead of RTCRtpScriptTransform (to try the fallback). Keys are set by
  // the platform through `window.rtcd.setE2eeKey` (docs/web-client.md), never from the URL.
  const e2eeApi = params.get('e2ee_api');
  const e2ee = e2eeApi === 'streams' || e2eeApi === 'script' ? { api: e2eeApi } : {};
  const client = new RtcdClient({ room, token, getToken, iceTransportPolicy, simulcast, adaptiveStream, e2ee });
  activeClient = client;
  wireClient(client);
  wireControls(client);
  // The automation entry point (docs/web-client.md): tests read `remoteTracks`,
  // `mediaState`, `participants` and `peerConnection.getStats()` through it.
  window.rtcd = client;
  let info;
  try {
    info = await client.connect();
  } catch {
    return; // shown by the `error` handler
  }
  const { publish_audio: audio, publish_video: video } = info.permissions;
  if (audio || video) {
    try {
      await client.publish({ audio, video });
    } catch {
      // Reported through the `error` event (e.g. no camera, permission denied).
    }
    localBadges(client);
  }
}

main();
