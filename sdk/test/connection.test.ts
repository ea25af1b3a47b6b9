import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { closePolicy, Connection, needsNewToken, RESUME_DELAY_MS, TOKEN_MARGIN_S, type ClosePolicy } from '../src/connection.js';
import { CloseCode } from '../src/protocol.js';
import { protocolTables } from './docs.js';

const OPTIONS = { maxAttempts: 3, baseDelayMs: 500, maxDelayMs: 15000 };
/** No jitter: `random` 0.5 multiplies every delay by exactly 1. */
const connected = (): Connection => {
  const c = new Connection(OPTIONS, () => 0.5);
  c.opening();
  c.joined(false);
  return c;
};
const LIVE = { leaving: false, resumable: true };
const DEAD = { leaving: false, resumable: false };

/**
 * The policy that a "retry?" cell of docs/protocol.md section 6 states. A phrase this does
 * not know fails the test: a new or reworded row must be classified here, and the code
 * checked against it.
 */
function documented(code: number, retry: string): ClosePolicy {
  if (retry === '-') return code === CloseCode.normal ? 'closed' : 'give_up';
  if (/^resume\b/.test(retry)) return 'resume';
  if (retry === 'reconnect' || /^rejoin (at once|\()/.test(retry)) return 'reconnect';
  if (/^(back off|retry later)/.test(retry)) return 'back_off';
  if (/not automatically|^do not|^may rejoin|^rejoin later|^knock again later|^fix |^get a |^check |^close another|^ask |^join with/.test(retry)) {
    return 'give_up';
  }
  throw new Error(`close ${code}: unclassified "retry?" cell: ${retry}`);
}

describe('close codes', () => {
  const rows = protocolTables().close;

  test('protocol.md lists every close code the SDK knows, with the same label', () => {
    assert.ok(rows.length >= 40, `${rows.length} rows`);
    assert.deepEqual(
      Object.fromEntries(rows.map((r) => [r.label, r.code])),
      { ...CloseCode },
    );
  });

  for (const row of rows) {
    test(`${row.code} ${row.label}: "${row.retry}"`, () => {
      const policy = documented(row.code, row.retry);
      assert.equal(closePolicy(row.code), policy);
      // And what the machine does with it, the first time, on a live session.
      const decision = connected().closed(row.code, LIVE);
      const expected = { closed: 'closed', resume: 'resume', reconnect: 'reconnect', back_off: 'reconnect', give_up: 'give_up' }[policy];
      assert.equal(decision.action, expected);
    });
  }

  test('a dropped connection (1006, no close frame) resumes', () => {
    assert.equal(closePolicy(1006), 'resume');
  });

  test('an unknown code gives up', () => {
    assert.equal(closePolicy(4999), 'give_up');
    assert.equal(connected().closed(4999, LIVE).action, 'give_up');
  });
});

describe('resume', () => {
  for (const code of [1006, CloseCode.going_away, CloseCode.idle_timeout]) {
    test(`after ${code} a live session resumes quickly, then backs off`, () => {
      const c = connected();
      assert.deepEqual(c.closed(code, LIVE), { action: 'resume', delayMs: RESUME_DELAY_MS, attempt: 1 });
      assert.equal(c.state, 'reconnecting');
      c.opening();
      assert.equal(c.state, 'reconnecting');
      assert.deepEqual(c.closed(code, LIVE), { action: 'resume', delayMs: 1000, attempt: 2 });
      c.joined(true);
      assert.equal(c.state, 'connected');
      assert.equal(c.attempt, 0);
      assert.equal(c.joins, 1, 'a resume is not a new join');
    });

    test(`after ${code} a session that cannot be resumed reconnects`, () => {
      const c = connected();
      assert.deepEqual(c.closed(code, DEAD), { action: 'reconnect', delayMs: 500, attempt: 1 });
    });
  }

  test('the jitter stays within a quarter of the delay', () => {
    for (const r of [0, 0.999]) {
      const c = new Connection(OPTIONS, () => r);
      c.joined(false);
      const d = c.closed(1006, LIVE);
      assert.equal(d.action, 'resume');
      if (d.action === 'resume') assert.ok(d.delayMs >= RESUME_DELAY_MS * 0.75 && d.delayMs <= RESUME_DELAY_MS * 1.25, `${d.delayMs}`);
    }
  });
});

describe('reconnect', () => {
  test('4008 media_server_lost rejoins at once with a new session, never resumes', () => {
    const c = connected();
    assert.deepEqual(c.closed(CloseCode.media_server_lost, LIVE), { action: 'reconnect', delayMs: 500, attempt: 1 });
    c.opening();
    c.joined(false);
    assert.equal(c.joins, 2);
  });

  test('4010 media_connection_failed restarts the session (a new peer connection)', () => {
    assert.deepEqual(connected().closed(CloseCode.media_connection_failed, LIVE), { action: 'reconnect', delayMs: 500, attempt: 1 });
  });

  test('a session the client ends itself (a hung step, no answer) reconnects without resuming', () => {
    assert.deepEqual(connected().restarted(), { action: 'reconnect', delayMs: 500, attempt: 1 });
  });

  test('the backoff doubles, is capped, and starts higher when asked to slow down', () => {
    const c = new Connection({ maxAttempts: 10, baseDelayMs: 500, maxDelayMs: 3000 }, () => 0.5);
    const delays = [1, 2, 3, 4].map(() => {
      const d = c.closed(CloseCode.join_timeout, DEAD);
      return d.action === 'reconnect' ? d.delayMs : -1;
    });
    assert.deepEqual(delays, [500, 1000, 2000, 3000]);
    assert.deepEqual(connected().closed(CloseCode.rate_limited, LIVE), { action: 'reconnect', delayMs: 4000, attempt: 1 });
  });

  test('gives up after maxAttempts, and a join starts the count over', () => {
    const c = connected();
    for (let i = 0; i < OPTIONS.maxAttempts; i++) assert.equal(c.closed(1006, DEAD).action, 'reconnect');
    assert.equal(c.closed(1006, DEAD).action, 'give_up');
    assert.equal(c.state, 'error');
    c.joined(false);
    assert.equal(c.closed(1006, DEAD).action, 'reconnect');
  });

  test('token codes and refusals give up; leaving or 1000 closes', () => {
    for (const code of [CloseCode.token_expired, CloseCode.banned, CloseCode.lobby_denied, CloseCode.bad_message]) {
      const c = connected();
      assert.equal(c.closed(code, LIVE).action, 'give_up', `${code}`);
      assert.equal(c.state, 'error');
    }
    const c = connected();
    assert.equal(c.closed(1006, { leaving: true, resumable: true }).action, 'closed');
    assert.equal(c.state, 'closed');
    assert.equal(connected().closed(CloseCode.normal, LIVE).action, 'closed');
  });
});

describe('token', () => {
  const expiresAt = 1_000_000; // Unix s
  test(`a reconnect asks for a new token within ${TOKEN_MARGIN_S} s of expiry`, () => {
    assert.equal(needsNewToken(expiresAt, (expiresAt - TOKEN_MARGIN_S - 1) * 1000), false);
    assert.equal(needsNewToken(expiresAt, (expiresAt - TOKEN_MARGIN_S) * 1000), true);
    assert.equal(needsNewToken(expiresAt, (expiresAt + 60) * 1000), true);
  });
  test('before the first join the application\'s token is used as given', () => {
    assert.equal(needsNewToken(undefined, Date.now()), false);
  });
});

describe('waiting room and lobby', () => {
  test('waiting, then let in', () => {
    const c = new Connection(OPTIONS, () => 0.5);
    c.opening();
    assert.equal(c.state, 'connecting');
    c.waiting();
    assert.equal(c.state, 'waiting');
    c.joined(false);
    assert.equal(c.state, 'connected');
    assert.equal(c.joins, 1);
  });

  for (const code of [CloseCode.lobby_denied, CloseCode.host_timeout, CloseCode.lobby_timeout, CloseCode.guests_not_allowed, CloseCode.lobby_full]) {
    test(`refused entry (${code}) is not retried`, () => {
      const c = new Connection(OPTIONS, () => 0.5);
      c.opening();
      c.waiting();
      assert.equal(c.closed(code, DEAD).action, 'give_up');
      assert.equal(c.state, 'error');
    });
  }

  test('a waiting session that loses its socket connects again (nothing to resume yet)', () => {
    const c = new Connection(OPTIONS, () => 0.5);
    c.opening();
    c.waiting();
    assert.deepEqual(c.closed(1006, DEAD), { action: 'reconnect', delayMs: 500, attempt: 1 });
    c.opening();
    assert.equal(c.state, 'connecting', 'not joined yet: still the first connection');
  });
});
