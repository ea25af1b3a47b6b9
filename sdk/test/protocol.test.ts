import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { closeLabel, CloseCode, ErrorCode, isTokenCloseCode, MalformedMessage, parseServerMessage } from '../src/protocol.js';
import { protocolTables, repoFile } from './docs.js';

describe('codes', () => {
  test('every error code of protocol.md is an ErrorCode or a close label', () => {
    const { errors } = protocolTables();
    assert.ok(errors.length >= 6);
    for (const label of errors) {
      assert.ok((ErrorCode as Record<string, string>)[label] === label || label in CloseCode, label);
    }
  });

  test('labels', () => {
    assert.equal(closeLabel(4111), 'token_wrong_room');
    assert.equal(closeLabel(1006), 'connection_failed');
    assert.equal(closeLabel(4321), 'close_4321');
    assert.equal(isTokenCloseCode(4106), true);
    assert.equal(isTokenCloseCode(4115), false, 'keys_unavailable is temporary');
    assert.equal(isTokenCloseCode(4120), false, 'affiliation_unavailable is temporary');
    assert.equal(isTokenCloseCode(1001), false);
  });
});

describe('parseServerMessage', () => {
  test('a joined message is typed, optional fields absent when not sent, e2ee false unless said', () => {
    const m = parseServerMessage(JSON.stringify({
      type: 'joined', session_id: 7, room: 'r', identity: 'a', role: 'member', expires_at: 100, media: true,
      permissions: { publish_audio: true, publish_video: true, publish_screen: false, subscribe: true },
      resume_token: 't', future_field: 1,
    }));
    const recorder = parseServerMessage(JSON.stringify({
      type: 'refreshed', expires_at: 5,
      permissions: { publish_audio: false, publish_video: false, publish_screen: false, subscribe: true, record: true },
    }));
    assert.deepEqual(recorder, {
      type: 'refreshed', expires_at: 5,
      permissions: { publish_audio: false, publish_video: false, publish_screen: false, subscribe: true, record: true },
    });
    assert.deepEqual(m, {
      type: 'joined', session_id: 7, room: 'r', identity: 'a', role: 'member', expires_at: 100, media: true,
      permissions: { publish_audio: true, publish_video: true, publish_screen: false, subscribe: true },
      resume_token: 't', e2ee: false,
    });
    const encrypted = parseServerMessage(JSON.stringify({
      type: 'joined', session_id: 8, room: 'r', identity: 'b', role: 'member', expires_at: 100, media: true,
      permissions: { publish_audio: true, publish_video: true, publish_screen: false, subscribe: true }, e2ee: true,
    }));
    assert.equal('e2ee' in encrypted && encrypted.e2ee, true);
  });

  test('counts and mids are read leniently, as the protocol\'s numbers and strings', () => {
    assert.deepEqual(parseServerMessage('{"type":"negotiation_needed","audio":2}'), { type: 'negotiation_needed', audio: 2, video: 0 });
    assert.deepEqual(parseServerMessage('{"type":"track_paused","mid":3,"track_id":"t","reason":"hidden"}'),
      { type: 'track_paused', mid: '3', track_id: 't', reason: 'hidden' });
  });

  test('participants carry their role; participant_updated is typed like participant_joined', () => {
    assert.deepEqual(parseServerMessage('{"type":"participant_joined","participant":{"identity":"b","name":"Bob","role":"moderator"}}'),
      { type: 'participant_joined', participant: { identity: 'b', name: 'Bob', role: 'moderator' } });
    assert.deepEqual(parseServerMessage('{"type":"participant_updated","participant":{"identity":"b","role":"member"}}'),
      { type: 'participant_updated', participant: { identity: 'b', role: 'member' } });
    assert.throws(() => parseServerMessage('{"type":"participant_updated","participant":{"role":"member"}}'), MalformedMessage);
  });

  test('an unknown type is reported as such (the proxy may add types)', () => {
    assert.deepEqual(parseServerMessage('{"type":"something_new","x":1}'), { unknownType: 'something_new' });
  });

  test('malformed frames throw MalformedMessage', () => {
    for (const text of ['not json', '[]', '{"no":"type"}', '{"type":"answer"}', '{"type":"mute_changed","identity":"a","source":"nose","muted":true}',
      '{"type":"voice_activity","speakers":[1]}']) {
      assert.throws(() => parseServerMessage(text), MalformedMessage, text);
    }
  });
});

describe('package', () => {
  test('the package version\'s major is the protocol version of docs/protocol.md', () => {
    const version = /^Protocol version: \*\*(\d+)\*\*/m.exec(repoFile('docs/protocol.md'))?.[1];
    assert.ok(version, 'docs/protocol.md states its version');
    const pkg = JSON.parse(repoFile('sdk/package.json')) as { version: string };
    assert.equal(pkg.version.split('.')[0], version);
  });
});
