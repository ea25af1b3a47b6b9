import assert from 'node:assert/strict';
import { test } from 'node:test';

import { RtcdError } from '../src/errors.js';
import { TypedEventTarget, type ClientEventMap } from '../src/events.js';

/** Exposes `emit` to the test. */
class Target extends TypedEventTarget {
  fire<K extends keyof ClientEventMap>(type: K, detail: ClientEventMap[K]): void {
    this.emit(type, detail);
  }
}

test('events are CustomEvents with their detail; on() hands the detail and can be undone', () => {
  const t = new Target();
  const seen: string[] = [];
  t.addEventListener('state', (e) => seen.push(`${e.detail.previous}->${e.detail.state}`));
  const off = t.on('error', ({ error }) => seen.push(`${error.code}:${error.closeCode}`));
  t.fire('state', { state: 'connecting', previous: 'idle' });
  t.fire('error', { error: new RtcdError('token_expired', 'x', { closeCode: 4106 }) });
  off();
  t.fire('error', { error: new RtcdError('media_failed') });
  assert.deepEqual(seen, ['idle->connecting', 'token_expired:4106']);
});

test('RtcdError carries the code, close code, request and fatality', () => {
  const e = new RtcdError('forbidden', '', { request: 'offer' });
  assert.equal(e.name, 'RtcdError');
  assert.equal(e.message, 'forbidden', 'the code when no message');
  assert.equal(e.request, 'offer');
  assert.equal(e.fatal, false);
  assert.ok(e instanceof Error);
});
