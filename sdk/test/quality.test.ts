import assert from 'node:assert/strict';
import { test } from 'node:test';

import { QUALITY_UPGRADE_MS, QualityMonitor, qualityOf, type InboundCounters, type QualityStats } from '../src/quality.js';

const clean: QualityStats = { loss: 0, jitterMs: 5, rttMs: 40, framesPerSecond: 30, packets: 100 };

test('levels from the numbers: excellent, good, poor, lost', () => {
  assert.equal(qualityOf(clean), 'excellent');
  assert.equal(qualityOf({ ...clean, loss: 0.05 }), 'good');
  assert.equal(qualityOf({ ...clean, jitterMs: 50 }), 'good');
  assert.equal(qualityOf({ ...clean, rttMs: 300 }), 'good');
  assert.equal(qualityOf({ ...clean, loss: 0.2 }), 'poor');
  assert.equal(qualityOf({ ...clean, jitterMs: 150 }), 'poor');
  assert.equal(qualityOf({ ...clean, rttMs: 800 }), 'poor');
  assert.equal(qualityOf({ ...clean, rttMs: null }), 'excellent', 'an unknown round trip is not held against it');
  assert.equal(qualityOf({ ...clean, packets: 0 }), 'lost');
});

test('hysteresis: worse at once, better only after it held', () => {
  const m = new QualityMonitor();
  assert.equal(m.judge('a', false, clean, 0)?.quality, 'excellent', 'the first judgement is shown');
  assert.equal(m.judge('a', false, clean, 2000), null, 'unchanged');
  const down = m.judge('a', false, { ...clean, loss: 0.3 }, 4000);
  assert.deepEqual([down?.quality, down?.previous], ['poor', 'excellent']);
  // Better numbers: not shown before QUALITY_UPGRADE_MS.
  assert.equal(m.judge('a', false, clean, 6000), null);
  assert.equal(m.judge('a', false, clean, 8000), null);
  assert.equal(m.level('a'), 'poor');
  // A relapse restarts the wait.
  assert.equal(m.judge('a', false, { ...clean, loss: 0.3 }, 9000), null);
  assert.equal(m.judge('a', false, clean, 10000), null);
  assert.equal(m.judge('a', false, { ...clean, loss: 0.05 }, 12000), null, 'good is still better than poor: the clock runs');
  const up = m.judge('a', false, clean, 10000 + QUALITY_UPGRADE_MS);
  assert.deepEqual([up?.quality, up?.previous], ['good', 'poor'], 'the worst level seen while waiting');
  assert.equal(m.judge('a', false, clean, 16000), null);
  assert.equal(m.judge('a', false, clean, 15000 + 2 * QUALITY_UPGRADE_MS)?.quality, 'excellent');
  assert.equal(m.judge('a', false, { ...clean, packets: 0 }, 30000)?.quality, 'lost');
});

const stream = (identity: string, mid: string, packets: number, lost: number, frames: number, jitter = 0.004): InboundCounters =>
  ({ identity, mid, video: frames > 0, packetsReceived: packets, packetsLost: lost, jitter, framesDecoded: frames });

test('per participant from inbound counters: interval loss, jitter, frames per second', () => {
  const m = new QualityMonitor();
  assert.deepEqual(m.read('me', [stream('bob', '1', 100, 0, 50), stream('bob', '2', 100, 0, 0)], [], null, 0), [], 'no interval yet');
  const first = m.read('me', [stream('bob', '1', 300, 0, 110), stream('bob', '2', 200, 0, 0)], [], null, 2000);
  assert.equal(first.length, 1);
  assert.equal(first[0]?.identity, 'bob');
  assert.equal(first[0]?.local, false);
  assert.equal(first[0]?.quality, 'excellent');
  assert.deepEqual(first[0]?.stats, { loss: 0, jitterMs: 4, rttMs: null, framesPerSecond: 30, packets: 300 });
  // 60 lost of 300: poor at once.
  const lossy = m.read('me', [stream('bob', '1', 440, 60, 170), stream('bob', '2', 300, 0, 0)], [], null, 4000);
  assert.equal(lossy[0]?.quality, 'poor');
  assert.equal(lossy[0]?.stats.loss, 0.2);
  // Nothing arrives: lost.
  assert.equal(m.read('me', [stream('bob', '1', 440, 60, 170), stream('bob', '2', 300, 0, 0)], [], null, 6000)[0]?.quality, 'lost');
  // Counters that went back (a new receive stream) start a new interval, not a judgement.
  assert.deepEqual(m.read('me', [stream('bob', '1', 10, 0, 5)], [], null, 8000), []);
});

test('this client from the media server reports and the round trip', () => {
  const m = new QualityMonitor();
  const up = (fractionLost: number, rtt: number | null, packets: number | null = null) =>
    ({ fractionLost, jitter: 0.002, roundTripTime: rtt, packetsReceived: packets });
  const first = m.read('me', [], [up(0, 0.05)], null, 0);
  assert.deepEqual(first.map((c) => [c.identity, c.local, c.quality, c.stats.rttMs]), [['me', true, 'excellent', 50]]);
  assert.equal(m.read('me', [], [up(0.25, 0.05)], null, 2000)[0]?.quality, 'poor');
  // Nothing sent: judged on the candidate pair's round trip.
  const m2 = new QualityMonitor();
  assert.equal(m2.read('me', [], [], 0.3, 0)[0]?.quality, 'good');
  // Counts of what the media server received: none in an interval is lost.
  const m3 = new QualityMonitor();
  assert.deepEqual(m3.read('me', [], [up(0, 0.02, 100)], null, 0), [], 'no interval yet');
  assert.equal(m3.read('me', [], [up(0, 0.02, 200)], null, 2000)[0]?.quality, 'excellent');
  assert.equal(m3.read('me', [], [up(0, 0.02, 200)], null, 4000)[0]?.quality, 'lost');
});
