import assert from 'node:assert/strict';
import { test } from 'node:test';

import { MediaHealth, type InboundReading } from '../src/health.js';

const CONNECTED = { connectionState: 'connected', nothingToConnect: false } as const;
const video = (mid: string, frames: number, packets = frames * 10, lost = 0): InboundReading =>
  ({ mid, video: true, packetsReceived: packets, packetsLost: lost, framesDecoded: frames });

test('a flowing track is connected; one that stops decoding for 3 s is poor', () => {
  const h = new MediaHealth();
  h.watch('0', 0);
  h.read([video('0', 10)], [], 1000);
  h.read([video('0', 20)], [], 2000);
  assert.deepEqual(h.judge(CONNECTED, [{ mid: '0', identity: 'a', excused: false }], ['a', 'b']),
    { state: 'connected', participants: new Map([['a', 'connected'], ['b', 'connected']]) });
  // Packets keep coming, frames do not (no keyframe): a stall.
  h.read([video('0', 20, 300)], [], 5100);
  const judged = h.judge(CONNECTED, [{ mid: '0', identity: 'a', excused: false }], ['a']);
  assert.equal(judged.state, 'poor');
  assert.equal(judged.participants.get('a'), 'poor');
});

test('a new track has 10 s to start; a muted or paused one is not expected', () => {
  const h = new MediaHealth();
  h.watch('0', 0);
  h.read([video('0', 0, 0)], [], 9000);
  assert.equal(h.judge(CONNECTED, [{ mid: '0', identity: 'a', excused: false }], ['a']).participants.get('a'), 'connecting');
  h.read([video('0', 0, 0)], [], 10_001);
  assert.equal(h.judge(CONNECTED, [{ mid: '0', identity: 'a', excused: false }], ['a']).participants.get('a'), 'poor');
  assert.equal(h.judge(CONNECTED, [{ mid: '0', identity: 'a', excused: true }], ['a']).participants.get('a'), 'connected');
});

test('loss above 10 % is poor only when it lasts two intervals; counters that go back restart', () => {
  const h = new MediaHealth();
  h.watch('0', 0);
  const track = [{ mid: '0', identity: 'a', excused: false }];
  h.read([video('0', 10, 100, 0)], [], 1000);
  h.read([video('0', 20, 180, 20)], [], 2000);
  assert.equal(h.judge(CONNECTED, track, ['a']).state, 'connected', 'one burst');
  h.read([video('0', 30, 260, 40)], [], 3000);
  assert.equal(h.judge(CONNECTED, track, ['a']).state, 'poor');
  // A receive stream made anew (Firefox at a renegotiation): loss is measured from there.
  h.read([video('0', 5, 50, 0)], [], 4000);
  h.read([video('0', 15, 150, 0)], [], 5000);
  assert.equal(h.judge(CONNECTED, track, ['a']).state, 'connected');
});

test('the transport decides first: disconnected, failed, nothing to connect', () => {
  const h = new MediaHealth();
  assert.equal(h.judge({ connectionState: 'disconnected', nothingToConnect: false }, [], ['a']).state, 'reconnecting');
  assert.equal(h.judge({ connectionState: 'failed', nothingToConnect: false }, [], ['a']).participants.get('a'), 'connecting');
  assert.equal(h.judge({ connectionState: 'new', nothingToConnect: true }, [], []).state, 'connected');
  h.read([], [0.2, 0.1], 0);
  assert.equal(h.judge(CONNECTED, [], []).state, 'poor', 'the media server reports 15 % lost of what we send');
});
