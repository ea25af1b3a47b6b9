import assert from 'node:assert/strict';
import { test } from 'node:test';

import { MAX_TRACK_VIEWS, TrackViews, viewMessages, type ElementView, type ViewedTrack } from '../src/views.js';

// Tracks are any values here: the class compares them by identity, as it does MediaStreamTracks.
const a: ViewedTrack<string> = { mid: '1', trackId: 'cam-a', track: 'A' };
const b: ViewedTrack<string> = { mid: '2', trackId: 'cam-b', track: 'B' };
const el = (tracks: string[], width: number, height: number, intersecting = true): ElementView<string> =>
  ({ tracks, intersecting, width, height });

test('a shown track is visible at the largest size an element draws it; the rest is left alone', () => {
  const views = new TrackViews();
  assert.deepEqual(views.changed([a, b], [el(['A'], 320, 180), el(['A'], 1280, 720)]), [
    { mid: '1', track_id: 'cam-a', visible: true, width: 1280, height: 720 },
  ], 'B was never shown: the media server sends it as it likes');
});

test('only changes go out', () => {
  const views = new TrackViews();
  const shown = [el(['A'], 640, 360)];
  assert.equal(views.changed([a], shown).length, 1);
  assert.deepEqual(views.changed([a], shown), [], 'the same view again');
  assert.deepEqual(views.changed([a], [el(['A'], 320, 180)]), [
    { mid: '1', track_id: 'cam-a', visible: true, width: 320, height: 180 },
  ]);
});

test('out of the viewport, not laid out, or no longer shown: hidden', () => {
  const views = new TrackViews();
  views.changed([a, b], [el(['A'], 640, 360), el(['B'], 640, 360)]);
  assert.deepEqual(views.changed([a, b], [el(['A'], 640, 360, false), el(['B'], 0, 0)]), [
    { mid: '1', track_id: 'cam-a', visible: false },
    { mid: '2', track_id: 'cam-b', visible: false },
  ]);
  views.changed([a], [el(['A'], 640, 360)]);
  assert.deepEqual(views.changed([a], []), [{ mid: '1', track_id: 'cam-a', visible: false }],
    'an element that stops showing a track hides it');
  assert.deepEqual(views.changed([a], []), []);
});

test('one element visible among hidden ones keeps the track visible', () => {
  const views = new TrackViews();
  assert.deepEqual(views.changed([a], [el(['A'], 640, 360, false), el(['A'], 160, 90)]), [
    { mid: '1', track_id: 'cam-a', visible: true, width: 160, height: 90 },
  ]);
});

test('a new session gets every view afresh; a reused section with another track is new', () => {
  const views = new TrackViews();
  const shown = [el(['A'], 640, 360)];
  views.changed([a], shown);
  views.reset();
  assert.equal(views.changed([a], shown).length, 1, 'after reset');
  const next: ViewedTrack<string> = { mid: '1', trackId: 'cam-c', track: 'C' };
  assert.deepEqual(views.changed([next], [el(['C'], 640, 360)]), [
    { mid: '1', track_id: 'cam-c', visible: true, width: 640, height: 360 },
  ]);
  views.forget('1');
  assert.deepEqual(views.changed([next], []), [], 'forgotten and not shown: left alone');
});

test('messages carry at most the protocol limit of views', () => {
  const many = Array.from({ length: MAX_TRACK_VIEWS * 2 + 1 }, (_, i) => ({ mid: String(i), track_id: `t${i}`, visible: false as const }));
  const messages = viewMessages(many);
  assert.deepEqual(messages.map((m) => m.length), [MAX_TRACK_VIEWS, MAX_TRACK_VIEWS, 1]);
  assert.deepEqual(messages.flat(), many);
  assert.deepEqual(viewMessages([]), []);
});
