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
// Tiles are laid out by layout(): <main id="grid" data-layout="grid|speaker|screen"> (a
// screen share is always shown large; #layout toggles the speaker view). Each tile has
// data-quality (excellent|good|poor|lost, absent while unknown) and an aria-label naming the
// person and their state. A moderator (by token, or granted live) gets a menu
// button on every remote tile (button.actions, "Actions for NAME") opening #tile-menu, whose
// [role=menuitem][data-action=mute|grant_moderator|revoke_moderator|kick|ban] items are only
// those that apply (mute items carry data-source), and an "End for all" button (#end-room);
// body[data-role] is the role. #devices opens the device picker (#devices-dialog).
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

/**
 * @typedef {{tile: HTMLElement, video: HTMLVideoElement, stream: MediaStream, name: string,
 *   screen?: HTMLElement}} TileEntry
 */
/** @type {Map<string, TileEntry>} */
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

/** The top-left status row of a tile: connection bars, mute badges, media health. */
function tileStatus() {
  const status = document.createElement('div');
  status.className = 'tile-status';
  const bars = document.createElement('span');
  bars.className = 'bars';
  bars.setAttribute('role', 'img');
  bars.hidden = true;
  bars.append(document.createElement('i'), document.createElement('i'), document.createElement('i'));
  const badges = document.createElement('span');
  badges.className = 'badges';
  const health = document.createElement('span');
  health.className = 'health';
  status.append(bars, badges, health);
  return status;
}

/** @param {string} identity @param {string} label @param {'camera'|'screen'} source */
function makeTile(identity, label, source) {
  const tile = document.createElement('figure');
  tile.className = source === 'screen' ? 'tile screen' : 'tile';
  tile.setAttribute('role', 'group');
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
  avatar.setAttribute('aria-hidden', 'true');
  const caption = document.createElement('figcaption');
  const name = document.createElement('span');
  name.className = 'name';
  caption.append(name);
  tile.append(video, avatar, tileStatus(), caption);
  if (source !== 'screen') tile.append(actionsButton(identity));
  setTileName(tile, source === 'screen' ? `${label} (screen)` : label);
  $('grid').append(tile);
  layout();
  return { tile, video };
}

/** The name on a tile, its avatar's initials, and the labels that carry it. */
function setTileName(tile, name) {
  const el = /** @type {HTMLElement} */ (tile.querySelector('.name'));
  el.textContent = name;
  // Shown in full on hover when the tile is too narrow for it.
  el.title = name;
  const avatar = tile.querySelector('.avatar');
  if (avatar) avatar.textContent = initials(name.replace(/ \((you|screen)\)$/, ''));
  const actions = tile.querySelector('.actions');
  if (actions) actions.setAttribute('aria-label', `Actions for ${name}`);
  describeTile(tile);
}

/**
 * The tile's accessible label: who, then their state as a screen reader should say it, e.g.
 * "Bruno Costa, microphone muted, speaking, connection good".
 * @param {HTMLElement} tile
 */
function describeTile(tile) {
  const parts = [/** @type {HTMLElement} */ (tile.querySelector('.name')).textContent];
  if (tile.classList.contains('mic-off')) parts.push('microphone muted');
  if (tile.classList.contains('camera-off')) parts.push('camera off');
  if (tile.classList.contains('speaking')) parts.push('speaking');
  if (tile.dataset.quality) parts.push(`connection ${tile.dataset.quality}`);
  tile.setAttribute('aria-label', parts.join(', '));
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

/** @param {string} identity @param {string} [name] @returns {TileEntry} */
function tileFor(identity, name) {
  let entry = tiles.get(identity);
  if (!entry) {
    const label = name || identity;
    const { tile, video } = makeTile(identity, label, 'camera');
    entry = { tile, video, stream: new MediaStream(), name: label };
    video.srcObject = entry.stream;
    tiles.set(identity, entry);
  } else if (name && name !== entry.name) {
    entry.name = name;
    setTileName(entry.tile, name);
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

/**
 * Connection bars from the SDK's judgement (`connectionquality`); hidden while unknown.
 * @param {HTMLElement} tile @param {string|null|undefined} quality
 */
function setQuality(tile, quality) {
  const bars = /** @type {HTMLElement} */ (tile.querySelector('.bars'));
  if (quality) tile.dataset.quality = quality;
  else delete tile.dataset.quality;
  bars.hidden = !quality;
  bars.setAttribute('aria-label', quality ? `Connection: ${quality}` : '');
  bars.title = quality ? `Connection: ${quality}` : '';
  describeTile(tile);
}

function removeTile(identity) {
  const entry = tiles.get(identity);
  if (!entry) return;
  if (menu.identity === identity) closeMenu(false);
  entry.tile.remove();
  if (entry.screen) entry.screen.remove();
  tiles.delete(identity);
  layout();
}

/** The mute badges and the speaking outline of a remote tile. */
function setBadges(identity, participant) {
  const entry = tiles.get(identity);
  if (!entry) return;
  const muted = participant.muted || {};
  const cameraOff = Boolean(muted.camera) || entry.stream.getVideoTracks().length === 0;
  showBadges(entry.tile, Boolean(muted.microphone), Boolean(muted.camera));
  entry.tile.classList.toggle('speaking', Boolean(participant.speaking));
  entry.tile.classList.toggle('camera-off', cameraOff);
  describeTile(entry.tile);
}

/** @param {HTMLElement} tile @param {boolean} micOff @param {boolean} cameraMuted */
function showBadges(tile, micOff, cameraMuted) {
  const badges = tile.querySelector('.badges');
  badges.textContent = '';
  if (micOff) badges.append(badge('mic off', 'off'));
  if (cameraMuted) badges.append(badge('camera off', 'off'));
  tile.classList.toggle('mic-off', micOff);
}

function badge(text, kind) {
  const el = document.createElement('span');
  el.className = `badge ${kind}`;
  el.textContent = text;
  return el;
}

/** Says joins and leaves to screen readers (a polite live region). @param {string} text */
function announce(text) {
  const el = $('announcer');
  el.textContent = '';
  // A new text node after a tick: the same sentence twice is still read twice.
  setTimeout(() => { el.textContent = text; }, 50);
}

// ---- layouts ------------------------------------------------------------------------------

/** Space around and between tiles (px). */
const PAD = 16;
const GAP = 12;
/** Strip tiles (speaker and screen views): at most this wide, and no narrower than the minimum. */
const STRIP_MAX = 240;
const STRIP_MIN = 140;
/** Grid rows that fit on screen; more people scroll. */
const MAX_ROWS = 3;

/** The remote participant the speaker view shows large: whoever spoke last (sticky). */
let featuredSpeaker = '';

/** Columns of the grid for `n` tiles: 1, 2, 2x2, 3x2, 3x3, then 4 a row. @param {number} n */
function columnsFor(n) {
  return n <= 1 ? 1 : n <= 4 ? 2 : n <= 9 ? 3 : 4;
}

/**
 * @typedef {{x: number, y: number, w: number, h: number}} Box
 */

/**
 * Equal 16:9 tiles as large as the space allows, each row centered.
 * @param {number} n @param {number} width @param {number} height @returns {Box[]}
 */
function gridBoxes(n, width, height) {
  const cols = columnsFor(n);
  const rows = Math.ceil(n / cols);
  const shown = Math.min(rows, MAX_ROWS);
  // Whole pixels, rounded down: a fraction over the height would add a scrollbar.
  const w = Math.floor(Math.min((width - GAP * (cols - 1)) / cols, ((height - GAP * (shown - 1)) / shown) * 16 / 9));
  const h = w * 9 / 16;
  const top = Math.max(0, (height - rows * h - (rows - 1) * GAP) / 2);
  return rowBoxes(n, cols, w, h, width, top);
}

/**
 * `n` boxes of `w` x `h`, `perRow` a row from `top` down, each row centered in `width`.
 * @param {number} n @param {number} perRow @param {number} w @param {number} h
 * @param {number} width @param {number} top @returns {Box[]}
 */
function rowBoxes(n, perRow, w, h, width, top) {
  const boxes = [];
  for (let i = 0; i < n; i++) {
    const row = Math.floor(i / perRow);
    const inRow = Math.min(perRow, n - row * perRow);
    const left = (width - inRow * w - (inRow - 1) * GAP) / 2;
    boxes.push({ x: left + (i % perRow) * (w + GAP), y: top + row * (h + GAP), w, h });
  }
  return boxes;
}

/**
 * One large tile on top, the `others` in a strip below it (wrapping when they do not fit).
 * @param {number} others @param {number} width @param {number} height @returns {Box[]}
 */
function stageBoxes(others, width, height) {
  const perRow = Math.max(1, Math.min(others, Math.floor((width + GAP) / (STRIP_MIN + GAP))));
  const sw = Math.floor(Math.min(STRIP_MAX, (width - GAP * (perRow - 1)) / perRow));
  const sh = sw * 9 / 16;
  const stripRows = Math.ceil(others / perRow);
  const stripHeight = others ? stripRows * sh + (stripRows - 1) * GAP + GAP : 0;
  const w = Math.floor(Math.min(width, Math.max(0, height - stripHeight) * 16 / 9));
  const h = w * 9 / 16;
  const top = Math.max(0, (height - h - stripHeight) / 2);
  return [{ x: (width - w) / 2, y: top, w, h }, ...rowBoxes(others, perRow, sw, sh, width, top + h + GAP)];
}

/** The tile the speaker view shows large. @param {HTMLElement[]} figures */
function speakerTile(figures) {
  const remote = figures.filter((f) => f.dataset.participant);
  return remote.find((f) => f.dataset.participant === featuredSpeaker) || remote[0] || figures[0];
}

/**
 * Places every tile: a screen share large with everyone in a strip; else the speaker view
 * (when on) with the active speaker large; else the grid. `#grid[data-layout]` says which.
 * Runs on joins, leaves, screen shares, the toggle, a new speaker and every resize.
 */
function layout() {
  const grid = $('grid');
  const figures = /** @type {HTMLElement[]} */ ([...grid.children].filter((el) => el.matches('figure.tile')));
  const screen = figures.find((f) => f.classList.contains('screen'));
  const speakerView = $('layout').getAttribute('aria-pressed') === 'true' && figures.length > 1;
  const featured = screen || (speakerView ? speakerTile(figures) : null);
  grid.dataset.layout = screen ? 'screen' : featured ? 'speaker' : 'grid';
  const width = grid.clientWidth - 2 * PAD;
  const height = grid.clientHeight - 2 * PAD;
  if (width <= 0 || height <= 0) return;
  const ordered = featured ? [featured, ...figures.filter((f) => f !== featured)] : figures;
  const boxes = featured ? stageBoxes(figures.length - 1, width, height) : gridBoxes(figures.length, width, height);
  ordered.forEach((tile, i) => {
    const box = boxes[i];
    tile.style.left = `${PAD + box.x}px`;
    tile.style.top = `${PAD + box.y}px`;
    tile.style.width = `${box.w}px`;
    tile.style.height = `${box.h}px`;
    tile.classList.toggle('small', Boolean(featured) && tile !== featured);
  });
  if (menu.button) placeMenu();
}

/** A new loudest speaker becomes the speaker view's large tile (and stays until another speaks). */
function followSpeaker(speakers) {
  const next = speakers.find((identity) => tiles.has(identity));
  if (!next || next === featuredSpeaker) return;
  featuredSpeaker = next;
  if ($('grid').dataset.layout === 'speaker') layout();
}

// ---- moderation ---------------------------------------------------------------------------

/** The page's client, once created (moderation and the device picker act through it). */
let activeClient = null;

/** The open moderation menu: the button that opened it and whose it is. */
const menu = {
  /** @type {HTMLButtonElement|null} */
  button: null,
  identity: '',
};

/** The "Actions for NAME" menu button of a remote tile; CSS shows it to moderators only. */
function actionsButton(identity) {
  const button = document.createElement('button');
  button.type = 'button';
  button.className = 'actions';
  button.textContent = '⋯';
  button.setAttribute('aria-haspopup', 'menu');
  button.setAttribute('aria-expanded', 'false');
  button.setAttribute('aria-controls', 'tile-menu');
  button.addEventListener('click', () => {
    if (menu.button === button) closeMenu(true);
    else openMenu(button, identity, 'first');
  });
  button.addEventListener('keydown', (e) => {
    const focus = { ArrowDown: 'first', Enter: 'first', ' ': 'first', ArrowUp: 'last' }[e.key];
    if (!focus) return;
    e.preventDefault();
    openMenu(button, identity, focus);
  });
  return button;
}

/**
 * @typedef {{action: string, label: string, source?: string, banSeconds?: number,
 *   confirm?: string, danger?: boolean}} MenuItem
 */

/**
 * What a moderator can do to `identity` now, and only that: a mute item per source they
 * publish unmuted, "Make" or "Revoke moderator" by their role, remove, ban.
 * @param {RtcdClient} client @param {string} identity @returns {MenuItem[]}
 */
function menuItems(client, identity) {
  const participant = client.participants.get(identity);
  const name = (participant && participant.name) || identity;
  const muted = (participant && participant.muted) || {};
  const published = new Set([...client.remoteTracks.values()].filter((t) => t.identity === identity).map((t) => t.source));
  /** @type {MenuItem[]} */
  const items = [];
  for (const [source, label] of [['microphone', 'Mute microphone'], ['camera', 'Turn off camera'], ['screen', 'Stop screen share']]) {
    if (published.has(source) && !muted[source]) items.push({ action: 'mute', label, source });
  }
  // Their role as the server last said (`participant_joined`, then `participant_updated`).
  items.push(participant && participant.role === 'moderator'
    ? { action: 'revoke_moderator', label: 'Revoke moderator' }
    : { action: 'grant_moderator', label: 'Make moderator' });
  items.push({ action: 'kick', label: 'Remove from call', danger: true });
  items.push({ action: 'ban', label: 'Ban for 1 hour', banSeconds: 3600, danger: true, confirm: `Ban ${name} from this room for an hour?` });
  return items;
}

/**
 * Opens the menu under `button` with the items that apply now; focuses the first or last.
 * @param {HTMLButtonElement} button @param {string} identity @param {string} focus
 */
function openMenu(button, identity, focus) {
  const client = activeClient;
  if (!client) return;
  closeMenu(false);
  const el = $('tile-menu');
  el.textContent = '';
  for (const item of menuItems(client, identity)) {
    const entry = document.createElement('button');
    entry.type = 'button';
    entry.setAttribute('role', 'menuitem');
    entry.tabIndex = -1;
    entry.dataset.action = item.action;
    if (item.source) entry.dataset.source = item.source;
    if (item.danger) entry.className = 'danger';
    entry.textContent = item.label;
    entry.addEventListener('click', () => {
      closeMenu(true);
      if (item.confirm && !confirm(item.confirm)) return;
      client.moderate(/** @type {any} */ (item.action), { identity, source: item.source, banSeconds: item.banSeconds });
    });
    el.append(entry);
  }
  el.setAttribute('aria-label', button.getAttribute('aria-label') || 'Actions');
  el.hidden = false;
  menu.button = button;
  menu.identity = identity;
  button.setAttribute('aria-expanded', 'true');
  placeMenu();
  const items = menuEntries();
  (focus === 'last' ? items[items.length - 1] : items[0]).focus();
}

/** @returns {HTMLElement[]} */
function menuEntries() {
  return [...$('tile-menu').querySelectorAll('[role=menuitem]')];
}

/** Below its button, right-aligned with it; above it when there is no room below. */
function placeMenu() {
  const el = $('tile-menu');
  const at = menu.button.getBoundingClientRect();
  const { width, height } = el.getBoundingClientRect();
  const below = at.bottom + 4 + height <= window.innerHeight;
  el.style.top = `${Math.max(4, below ? at.bottom + 4 : at.top - 4 - height)}px`;
  el.style.left = `${Math.min(window.innerWidth - width - 4, Math.max(4, at.right - width))}px`;
}

/** @param {boolean} refocus give the focus back to the menu button */
function closeMenu(refocus) {
  const button = menu.button;
  if (!button) return;
  const el = $('tile-menu');
  el.hidden = true;
  el.textContent = '';
  menu.button = null;
  menu.identity = '';
  button.setAttribute('aria-expanded', 'false');
  if (refocus) button.focus();
}

/** The menu's keys (WAI-ARIA menu button): arrows, Home, End move; Escape and Tab close. */
function wireMenu() {
  const el = $('tile-menu');
  el.addEventListener('keydown', (e) => {
    const items = menuEntries();
    const at = items.indexOf(/** @type {HTMLElement} */ (document.activeElement));
    const to = {
      ArrowDown: (at + 1) % items.length,
      ArrowUp: (at - 1 + items.length) % items.length,
      Home: 0,
      End: items.length - 1,
    }[e.key];
    if (to !== undefined) {
      e.preventDefault();
      items[to].focus();
    } else if (e.key === 'Escape' || e.key === 'Tab') {
      e.preventDefault();
      closeMenu(true);
    }
  });
  // A click anywhere else closes it.
  document.addEventListener('pointerdown', (e) => {
    const target = /** @type {Node} */ (e.target);
    if (menu.button && !el.contains(target) && !menu.button.contains(target)) closeMenu(false);
  }, true);
}

/** Shows or hides the moderator's controls. @param {string} role */
function setRole(role) {
  body.dataset.role = role || '';
  /** @type {HTMLButtonElement} */ ($('end-room')).hidden = role !== 'moderator';
  if (role !== 'moderator') closeMenu(false);
  showRecording();
}

// ---- recording -----------------------------------------------------------------------------

/**
 * The recording badge ("● This call is being recorded", in the header) while the room records, and the
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
      describeTile($('local-tile'));
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
  const layoutButton = $('layout');
  layoutButton.addEventListener('click', () => {
    const on = layoutButton.getAttribute('aria-pressed') !== 'true';
    layoutButton.setAttribute('aria-pressed', String(on));
    layout();
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
  const tile = $('local-tile');
  showBadges(tile, client.muted.has('microphone'), false);
  describeTile(tile);
}

/** What a moderation request did, as a sentence ("Bruno Costa is now a moderator."). */
function moderatedText(client, { action, identity, sessions }) {
  const participant = identity ? client.participants.get(identity) : undefined;
  const who = (participant && participant.name) || (identity && tiles.get(identity)?.name) || identity;
  const done = {
    grant_moderator: `${who} is now a moderator.`,
    revoke_moderator: `${who} is no longer a moderator.`,
    mute: `${who} was muted.`,
    kick: `${who} was removed from the call.`,
    ban: `${who} was banned from this room.`,
  }[action];
  return done || `${action}${identity ? ` ${identity}` : ''}: done (${sessions} session(s))`;
}

// ---- devices ------------------------------------------------------------------------------

/**
 * The device picker: a modal dialog with a camera, microphone and (where the browser can
 * choose it) speaker list, each showing the device in use; a change switches at once.
 * @param {RtcdClient} client
 */
function wireDevices(client) {
  const dialog = /** @type {HTMLDialogElement} */ ($('devices-dialog'));
  $('devices').addEventListener('click', async () => {
    fillDevices(client, await client.listDevices().catch(() => client.devices));
    dialog.showModal();
    $('device-camera').focus();
  });
  // The dialog closes on Escape or Done; the focus goes back to the button that opened it.
  dialog.addEventListener('close', () => $('devices').focus());
  client.addEventListener('deviceschanged', (e) => fillDevices(client, e.detail.devices));
  client.addEventListener('deviceswitched', () => fillDevices(client, client.devices));
  /** @type {[string, (id: string) => Promise<unknown>][]} */
  const pickers = [
    ['device-camera', (id) => client.switchCamera(id)],
    ['device-microphone', (id) => client.switchMicrophone(id)],
    ['device-speaker', (id) => client.setAudioOutput(id)],
  ];
  for (const [id, use] of pickers) {
    const select = /** @type {HTMLSelectElement} */ ($(id));
    // A failure is an `error` event (a toast); the list goes back to the device in use.
    select.addEventListener('change', () => use(select.value).catch(() => fillDevices(client, client.devices)));
  }
}

/**
 * @param {RtcdClient} client
 * @param {{videoinput: {deviceId: string, label: string}[], audioinput: {deviceId: string, label: string}[],
 *   audiooutput: {deviceId: string, label: string}[]}} devices
 */
function fillDevices(client, devices) {
  const inUse = (source) => {
    const track = client.localTracks.get(source);
    return (track && track.getSettings().deviceId) || '';
  };
  fillSelect('device-camera', devices.videoinput, inUse('camera'), 'Camera');
  fillSelect('device-microphone', devices.audioinput, inUse('microphone'), 'Microphone');
  const speaker = client.audioOutputSupported;
  $('device-speaker').hidden = $('device-speaker-label').hidden = !speaker;
  if (speaker) fillSelect('device-speaker', devices.audiooutput, client.audioOutput || 'default', 'Speaker');
}

/**
 * @param {string} id @param {{deviceId: string, label: string}[]} list @param {string} current
 * @param {string} kind what to call a device the browser gives no label (before permission)
 */
function fillSelect(id, list, current, kind) {
  const select = /** @type {HTMLSelectElement} */ ($(id));
  select.textContent = '';
  list.forEach((device, i) => {
    const option = document.createElement('option');
    option.value = device.deviceId;
    option.textContent = device.label || `${kind} ${i + 1}`;
    option.selected = device.deviceId === current;
    select.append(option);
  });
  select.disabled = list.length === 0;
}

function setControls(enabled, permissions) {
  for (const id of ['mic', 'camera', 'screen', 'devices', 'leave', 'end-room']) {
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
    setTileName($('local-tile'), `${info.name || info.identity} (you)`);
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
    toast(moderatedText(client, e.detail));
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
    announce(`${e.detail.name || e.detail.identity} joined`);
    tileFor(e.detail.identity, e.detail.name);
    setBadges(e.detail.identity, e.detail);
    setTileMedia(e.detail.identity, e.detail.media || 'connecting');
  });
  client.addEventListener('participantmedia', (e) => setTileMedia(e.detail.identity, e.detail.state));
  // A role changed (a moderator here or elsewhere, or the platform): an open menu for that
  // person shows what applies now.
  client.addEventListener('participantupdated', (e) => {
    if (menu.button && menu.identity === e.detail.participant.identity) openMenu(menu.button, menu.identity, 'first');
  });
  client.addEventListener('mediastate', (e) => {
    view.media = e.detail.state;
    render();
  });
  client.addEventListener('participantleft', (e) => {
    const entry = tiles.get(e.detail.identity);
    announce(`${entry ? entry.name : e.detail.identity} left`);
    removeTile(e.detail.identity);
  });
  client.addEventListener('connectionquality', (e) => {
    const { identity, local, quality } = e.detail;
    const tile = local ? $('local-tile') : tiles.get(identity)?.tile;
    if (tile) setQuality(tile, quality);
  });
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
          layout();
        }
      }
    } else {
      entry.stream.removeTrack(track);
      show(entry.video, entry.stream.getTracks());
      setBadges(identity, client.participants.get(identity) || { muted: {} });
    }
  });
  client.addEventListener('mutechanged', (e) => setBadges(e.detail.identity, client.participants.get(e.detail.identity) || { muted: {} }));
  client.addEventListener('voiceactivity', (e) => {
    for (const [identity, participant] of client.participants) setBadges(identity, participant);
    const me = $('local-tile');
    me.classList.toggle('speaking', Boolean(client.session) && e.detail.speakers.includes(client.session.identity));
    describeTile(me);
    followSpeaker(e.detail.speakers);
  });
  client.addEventListener('localtrack', (e) => {
    if (e.detail.source !== 'camera') return;
    const video = /** @type {HTMLVideoElement} */ ($('local-video'));
    video.srcObject = new MediaStream([e.detail.track]);
    $('local-tile').classList.remove('camera-off');
    describeTile($('local-tile'));
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
  wireMenu();
  // Laid out in the next frame: placing tiles from the observer's callback could change the
  // grid's own size (a scrollbar) in the same frame, which the browser reports as an error.
  let frame = 0;
  new ResizeObserver(() => {
    cancelAnimationFrame(frame);
    frame = requestAnimationFrame(layout);
  }).observe($('grid'));
  layout();
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
  wireDevices(client);
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
