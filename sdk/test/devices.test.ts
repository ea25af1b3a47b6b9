import assert from 'node:assert/strict';
import { test } from 'node:test';

import { byKind, constraintsFor, deviceChanges, deviceSource, fallbackDevice, kindOf } from '../src/devices.js';

const d = (kind: string, deviceId: string, label = deviceId) => ({ kind, deviceId, groupId: 'g', label });

test('devices are grouped by kind, other kinds left out', () => {
  const lists = byKind([d('videoinput', 'cam1'), d('audioinput', 'default'), d('audiooutput', 'spk'), d('other', 'x'), d('videoinput', 'cam2')]);
  assert.deepEqual(lists.videoinput.map((x) => x.deviceId), ['cam1', 'cam2']);
  assert.deepEqual(lists.audioinput.map((x) => x.deviceId), ['default']);
  assert.deepEqual(lists.audiooutput.map((x) => x.deviceId), ['spk']);
});

test('changes between two lists, by kind and id', () => {
  const before = byKind([d('videoinput', 'cam1'), d('audioinput', 'mic1')]);
  const after = byKind([d('videoinput', 'cam1', 'renamed'), d('audioinput', 'mic2'), d('audiooutput', 'mic1')]);
  const { added, removed } = deviceChanges(before, after);
  assert.deepEqual(added.map((x) => `${x.kind}:${x.deviceId}`), ['audioinput:mic2', 'audiooutput:mic1']);
  assert.deepEqual(removed.map((x) => `${x.kind}:${x.deviceId}`), ['audioinput:mic1']);
  assert.deepEqual(deviceChanges(after, after), { added: [], removed: [] });
});

test('fallback: the default alias, else the first other device, else none', () => {
  assert.equal(fallbackDevice('microphone', byKind([d('audioinput', 'default'), d('audioinput', 'usb')]), 'usb'), 'default');
  assert.equal(fallbackDevice('microphone', byKind([d('audioinput', 'default'), d('audioinput', 'usb')]), 'default'), 'default',
    'the default alias follows the system: still the one to use');
  assert.equal(fallbackDevice('camera', byKind([d('videoinput', 'front'), d('videoinput', 'back')]), 'front'), 'back');
  assert.equal(fallbackDevice('camera', byKind([d('videoinput', 'back')]), 'front'), 'back', 'the lost one is already gone');
  assert.equal(fallbackDevice('camera', byKind([d('videoinput', 'front')]), 'front'), null, 'only the lost one');
  assert.equal(fallbackDevice('camera', byKind([d('audioinput', 'mic')]), null), null, 'no camera at all');
  assert.equal(fallbackDevice('camera', byKind([d('videoinput', '')]), null), null, 'ids hidden before permission');
});

test('sources and kinds', () => {
  assert.equal(kindOf('camera'), 'videoinput');
  assert.equal(kindOf('microphone'), 'audioinput');
  assert.equal(deviceSource('camera'), 'camera');
  assert.equal(deviceSource('screen'), null);
  assert.equal(deviceSource('screen_audio'), null);
  assert.deepEqual(constraintsFor('abc'), { deviceId: { exact: 'abc' } });
  assert.equal(constraintsFor(undefined), false);
  assert.equal(constraintsFor(true), true);
});
