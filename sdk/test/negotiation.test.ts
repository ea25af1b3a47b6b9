import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { Negotiation } from '../src/negotiation.js';

const TIMEOUT = 10_000;

/** Makes the offer the machine asks for, at `now`; returns whether it asked. */
function offer(n: Negotiation, now = 0, stable = true): boolean {
  if (!n.takeOffer(stable)) return false;
  n.offerSent(now);
  return true;
}

describe('negotiation', () => {
  test('one offer per request while idle; nothing without a request', () => {
    const n = new Negotiation(TIMEOUT);
    assert.equal(offer(n), false);
    n.want();
    assert.equal(offer(n), true);
    assert.equal(n.awaitingAnswer, true);
  });

  test('requests while an offer is in flight collapse into one follow-up offer', () => {
    const n = new Negotiation(TIMEOUT);
    n.want();
    assert.equal(offer(n), true);
    n.negotiationNeeded({ audio: 2, video: 1 });
    n.want();
    n.negotiationNeeded({ audio: 3, video: 2 });
    assert.equal(offer(n), false, 'no second offer before the answer');
    assert.equal(n.answerReceived(true), 'apply');
    assert.equal(n.answerApplied(), true, 'one follow-up');
    assert.equal(offer(n), true);
    assert.deepEqual(n.receiversToAdd({ audio: 1, video: 0 }), { audio: 2, video: 2 }, 'the latest counts win');
    assert.equal(n.answerReceived(true), 'apply');
    assert.equal(n.answerApplied(), false, 'nothing more');
    assert.equal(offer(n), false);
  });

  test('no offer while the peer connection is not stable; the request waits', () => {
    const n = new Negotiation(TIMEOUT);
    n.want();
    assert.equal(offer(n, 0, false), false);
    assert.equal(offer(n, 0, true), true);
  });

  test('receiving sections are added up to the counts asked for, never removed', () => {
    const n = new Negotiation(TIMEOUT);
    n.startWith({ audio: 1, video: 0 });
    assert.deepEqual(n.receiversToAdd({ audio: 0, video: 0 }), { audio: 1, video: 0 });
    n.negotiationNeeded({ audio: 1, video: 2 });
    assert.deepEqual(n.receiversToAdd({ audio: 3, video: 1 }), { audio: 0, video: 1 });
  });

  test('an offer refused by the proxy or the media server is rolled back, then offered again if wanted', () => {
    for (const [code, request] of [['forbidden', 'offer'], ['bad_sdp', undefined], ['bad_track', undefined], ['media_limit', undefined]] as const) {
      const n = new Negotiation(TIMEOUT);
      n.want();
      offer(n);
      assert.equal(n.refusesOffer(code, request), true, code);
      n.want();
      assert.equal(n.rolledBack(), true);
      assert.equal(n.awaitingAnswer, false);
    }
  });

  test('other errors do not refuse the offer; nothing to refuse without one in flight', () => {
    const n = new Negotiation(TIMEOUT);
    assert.equal(n.refusesOffer('bad_sdp', undefined), false);
    n.want();
    offer(n);
    assert.equal(n.refusesOffer('forbidden', 'mute'), false);
    assert.equal(n.refusesOffer('media_error', undefined), false);
  });

  test('an answer without an offer of ours (after a rollback) asks for a new offer', () => {
    const n = new Negotiation(TIMEOUT);
    assert.equal(n.answerReceived(false), 'reoffer');
    assert.equal(offer(n), true);
  });

  test('an offer without an answer is overdue after the timeout', () => {
    const n = new Negotiation(TIMEOUT);
    n.want();
    offer(n, 1000);
    assert.equal(n.answerDeadline, 1000 + TIMEOUT);
    assert.equal(n.answerOverdue(1000 + TIMEOUT - 1), false);
    assert.equal(n.answerOverdue(1000 + TIMEOUT), true);
    n.answerReceived(true);
    n.answerApplied();
    assert.equal(n.answerOverdue(1e9), false);
  });

  test('a resumed session rolls back an offer whose answer was lost, then offers afresh', () => {
    const n = new Negotiation(TIMEOUT);
    n.want();
    offer(n);
    assert.equal(n.resumed(), 'rollback');
    assert.equal(n.rolledBack(), true);
    assert.equal(offer(n), true);
    const idle = new Negotiation(TIMEOUT);
    assert.equal(idle.resumed(), 'offer');
    assert.equal(offer(idle), true);
  });
});
