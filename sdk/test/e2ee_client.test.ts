// The client half of end-to-end encryption without a browser: the cryptor the worker (or the
// page) runs over encoded frames, its key messages and counters, the codec decisions, the
// API choice and the page's key bookkeeping (e2ee/cryptor.ts, e2ee/session.ts).

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { FORMAT_V1, isEncryptedFrame } from '../src/e2ee/frame.js';
import {
  E2eeCryptor,
  codecOf,
  decryptFailures,
  videoCodecOrder,
  type EncodedFrameLike,
  type KeyMessage,
} from '../src/e2ee/cryptor.js';
import { KeyState, chooseApi, keyBytes } from '../src/e2ee/session.js';

const KEY_A = new Uint8Array(16).fill(1);
const KEY_B = new Uint8Array(32).fill(2);

/** A fake encoded frame, as RTCRtpScriptTransform hands one over. */
function frame(bytes: number[], opts: { type?: string; mimeType?: string; ssrc?: number; ts?: number } = {}): EncodedFrameLike {
  const meta = { synchronizationSource: opts.ssrc ?? 0x1234, rtpTimestamp: opts.ts ?? 90000, mimeType: opts.mimeType };
  return {
    data: new Uint8Array(bytes).buffer,
    type: opts.type,
    getMetadata: () => meta,
  };
}

const VP8_KEY = [0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01, ...Array.from({ length: 40 }, (_, i) => i)];
const VP8_DELTA = [0x31, 0x02, 0x00, ...Array.from({ length: 30 }, (_, i) => 200 - i)];
const OPUS = [0x78, ...Array.from({ length: 60 }, (_, i) => i * 3)];

async function cryptorWith(messages: KeyMessage[]): Promise<E2eeCryptor> {
  const c = new E2eeCryptor();
  for (const m of messages) await c.handle(m);
  return c;
}

test('a frame encrypted by one cryptor decrypts in another with the same key, and its clear bytes stay', async () => {
  const sender = await cryptorWith([{ type: 'setKey', index: 3, raw: KEY_A, current: false }]);
  const receiver = await cryptorWith([{ type: 'setKey', index: 3, raw: KEY_A, current: false }]);
  const enc = sender.encryptor();
  for (const [bytes, kind, type, clear] of [
    [VP8_KEY, 'video', 'key', 10],
    [VP8_DELTA, 'video', 'delta', 3],
    [OPUS, 'audio', undefined, 1],
  ] as const) {
    const f = frame([...bytes], { type, mimeType: kind === 'video' ? 'video/VP8' : undefined });
    assert.equal(await sender.encrypt(enc, f, kind), true);
    const sent = new Uint8Array(f.data);
    assert.ok(isEncryptedFrame(sent));
    assert.equal(sent[sent.length - 1], FORMAT_V1);
    assert.equal(sent[sent.length - 2], 3, 'key index');
    assert.equal(sent[sent.length - 3], clear, 'clear bytes');
    assert.deepEqual([...sent.subarray(0, clear)], bytes.slice(0, clear));
    assert.notDeepEqual([...sent.subarray(clear, bytes.length)], bytes.slice(clear));
    assert.equal(await receiver.decrypt(f), true);
    assert.deepEqual([...new Uint8Array(f.data)], [...bytes]);
  }
  assert.equal(sender.stats.encrypted, 3);
  assert.equal(receiver.stats.decrypted, 3);
  assert.equal(decryptFailures(receiver.stats), 0);
});

test('without a key nothing is sent, and a receiver without the key drops and counts every frame', async () => {
  const keyless = new E2eeCryptor();
  const f = frame([...VP8_DELTA], { type: 'delta' });
  assert.equal(await keyless.encrypt(keyless.encryptor(), f, 'video'), false);
  assert.deepEqual([...new Uint8Array(f.data)], VP8_DELTA, 'the frame is left as it was, and dropped');
  assert.equal(keyless.stats.encryptFailed.no_key, 1);

  const sender = await cryptorWith([{ type: 'setKey', index: 0, raw: KEY_A, current: true }]);
  const g = frame([...VP8_DELTA], { type: 'delta' });
  await sender.encrypt(sender.encryptor(), g, 'video');
  assert.equal(await keyless.decrypt(g), false);
  assert.equal(keyless.stats.decryptFailed.unknown_key, 1);

  const wrong = await cryptorWith([{ type: 'setKey', index: 0, raw: KEY_B, current: true }]);
  assert.equal(await wrong.decrypt(g), false);
  assert.equal(wrong.stats.decryptFailed.authentication_failed, 1);

  // A plaintext frame (a sender that did not encrypt) is never handed to the decoder.
  assert.equal(await wrong.decrypt(frame([...VP8_DELTA])), false);
  assert.equal(wrong.stats.decryptFailed.not_encrypted, 1);
  assert.equal(decryptFailures(wrong.stats), 2);
});

test('H.264 frames are dropped, not sent in the clear', async () => {
  const c = await cryptorWith([{ type: 'setKey', index: 0, raw: KEY_A, current: true }]);
  assert.equal(await c.encrypt(c.encryptor(), frame([0, 0, 0, 1, 0x65, 1, 2, 3], { type: 'key', mimeType: 'video/H264' }), 'video'), false);
  assert.equal(c.stats.encryptFailed.unsupported_codec, 1);
});

test('rotation: a new key at a new index, made current, then the old one removed', async () => {
  const sender = await cryptorWith([{ type: 'setKey', index: 1, raw: KEY_A, current: false }]);
  const receiver = await cryptorWith([{ type: 'setKey', index: 1, raw: KEY_A, current: false }]);
  const enc = sender.encryptor();
  const old = frame([...OPUS]);
  await sender.encrypt(enc, old, 'audio');
  // Step 1: everyone gets key 2; the sender still uses 1.
  await sender.handle({ type: 'setKey', index: 2, raw: KEY_B, current: false });
  await receiver.handle({ type: 'setKey', index: 2, raw: KEY_B, current: false });
  const still = frame([...OPUS]);
  await sender.encrypt(enc, still, 'audio');
  assert.equal(new Uint8Array(still.data).at(-2), 1);
  // Step 2: the sender switches.
  await sender.handle({ type: 'useKey', index: 2 });
  const next = frame([...OPUS]);
  await sender.encrypt(enc, next, 'audio');
  assert.equal(new Uint8Array(next.data).at(-2), 2);
  // Frames under both keys decrypt meanwhile.
  assert.equal(await receiver.decrypt(old), true);
  assert.equal(await receiver.decrypt(next), true);
  // Step 3: the old key goes; a late frame under it is dropped.
  await receiver.handle({ type: 'removeKey', index: 1 });
  assert.equal(await receiver.decrypt(still), false);
  assert.equal(receiver.stats.decryptFailed.unknown_key, 1);
  // Removing the current key stops sending.
  await sender.handle({ type: 'removeKey', index: 2 });
  assert.equal(await sender.encrypt(enc, frame([...OPUS]), 'audio'), false);
});

test('pipe: a sending transform emits only encrypted frames, a receiving one only decrypted ones', async () => {
  const sender = new E2eeCryptor();
  const receiver = await cryptorWith([{ type: 'setKey', index: 0, raw: KEY_A, current: true }]);
  const inputs = [frame([...VP8_KEY], { type: 'key' }), frame([...VP8_DELTA], { type: 'delta' }), frame([...VP8_DELTA], { type: 'delta' })];
  const sent: EncodedFrameLike[] = [];
  let i = 0;
  const readable = new ReadableStream<EncodedFrameLike>({
    pull: async (controller) => {
      const f = inputs[i];
      // The key arrives after the first frame: that one is dropped, never sent in the clear.
      if (i === 1) await sender.handle({ type: 'setKey', index: 0, raw: KEY_A, current: true });
      i += 1;
      if (f) controller.enqueue(f);
      else controller.close();
    },
  });
  await sender.pipe(readable, new WritableStream({ write: (f) => { sent.push(f); } }), { side: 'send', kind: 'video' });
  assert.equal(sent.length, 2);
  assert.equal(sender.stats.encryptFailed.no_key, 1);
  for (const f of sent) assert.ok(isEncryptedFrame(new Uint8Array(f.data)));

  const tampered = frame([...new Uint8Array(sent[1]!.data)]);
  new Uint8Array(tampered.data)[5]! ^= 1;
  const received: EncodedFrameLike[] = [];
  const incoming = [sent[0]!, tampered, frame([...VP8_DELTA])];
  await receiver.pipe(
    new ReadableStream({ start: (c) => { for (const f of incoming) c.enqueue(f); c.close(); } }),
    new WritableStream({ write: (f) => { received.push(f); } }),
    { side: 'receive', kind: 'video' },
  );
  assert.equal(received.length, 1);
  assert.deepEqual([...new Uint8Array(received[0]!.data)], VP8_DELTA);
  assert.equal(receiver.stats.decryptFailed.authentication_failed, 1);
  assert.equal(receiver.stats.decryptFailed.not_encrypted, 1);
});

test('codecs: audio is Opus, video by mimeType with VP8 when unsaid; VP8 first, H.264 and AV1 never offered', () => {
  assert.equal(codecOf('audio'), 'opus');
  assert.equal(codecOf('video'), 'vp8');
  assert.equal(codecOf('video', 'video/VP9'), 'vp9');
  assert.equal(codecOf('video', 'video/H264'), 'h264');
  assert.equal(codecOf('video', 'video/AV1'), 'av1');
  const caps = [
    { mimeType: 'video/H264', clockRate: 90000, sdpFmtpLine: 'profile-level-id=42e01f' },
    { mimeType: 'video/VP9', clockRate: 90000 },
    { mimeType: 'video/rtx', clockRate: 90000 },
    { mimeType: 'video/AV1', clockRate: 90000 },
    { mimeType: 'video/VP8', clockRate: 90000 },
    { mimeType: 'video/red', clockRate: 90000 },
  ];
  assert.deepEqual(videoCodecOrder(caps).map((c) => c.mimeType), ['video/VP8', 'video/VP9', 'video/rtx', 'video/red']);
  assert.deepEqual(videoCodecOrder([{ mimeType: 'video/H264', clockRate: 90000 }, { mimeType: 'video/rtx', clockRate: 90000 }]), []);
});

test('API choice: the standard transform when there, the encoded streams otherwise, or none', () => {
  assert.equal(chooseApi({ scriptTransform: true, encodedStreams: true }), 'script');
  assert.equal(chooseApi({ scriptTransform: false, encodedStreams: true }), 'streams');
  assert.equal(chooseApi({ scriptTransform: true, encodedStreams: true }, 'streams'), 'streams');
  assert.equal(chooseApi({ scriptTransform: false, encodedStreams: true }, 'script'), 'none');
  assert.equal(chooseApi({ scriptTransform: false, encodedStreams: false }), 'none');
});

test('key bookkeeping follows the ring: first key current, use, remove the current one', () => {
  const k = new KeyState();
  assert.equal(k.current, undefined);
  k.set(4, false);
  assert.equal(k.current, 4);
  k.set(5, false);
  assert.equal(k.current, 4);
  k.use(5);
  assert.equal(k.current, 5);
  assert.throws(() => k.use(9), RangeError);
  assert.equal(k.remove(4), true);
  assert.equal(k.remove(5), true);
  assert.equal(k.current, undefined);
  k.set(7, true);
  assert.deepEqual(k.indexes, [7]);
});

test('key bytes: raw keys are 16 or 32 bytes; material derives the documented key', async () => {
  assert.deepEqual(await keyBytes(KEY_A, undefined), KEY_A);
  await assert.rejects(keyBytes(new Uint8Array(20), false), RangeError);
  await assert.rejects(keyBytes('a string is material, not a key', false), TypeError);
  await assert.rejects(keyBytes('too short', true), RangeError);
  // docs/e2ee.md test vector 2.
  const derived = await keyBytes('platform secret for room standup', true);
  assert.equal(Buffer.from(derived).toString('hex'), '991b87e44ffe213ac8de460c24868c03');
  assert.equal((await keyBytes('platform secret for room standup', { bits: 256 })).length, 32);
});
