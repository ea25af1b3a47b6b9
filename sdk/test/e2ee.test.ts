// The frame format of docs/e2ee.md: round trips per codec, the clear prefix, failures as
// values, rotation, IV uniqueness, and the document's test vectors.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  FORMAT_V1,
  FrameEncryptor,
  OVERHEAD_BYTES,
  buildIv,
  clearBytes,
  decryptFrame,
  encryptFrameWith,
  isEncryptedFrame,
} from '../src/e2ee/frame.js';
import type { Codec, FrameInfo } from '../src/e2ee/frame.js';
import { KeyRing, deriveKeyBytes, importRawKey } from '../src/e2ee/keys.js';

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function fromHex(s: string): Uint8Array {
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) {
    out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  }
  return out;
}

function random(n: number): Uint8Array {
  const out = new Uint8Array(n);
  crypto.getRandomValues(out);
  return out;
}

async function ringWith(index: number, bytes = 16): Promise<KeyRing> {
  const ring = new KeyRing();
  await ring.setRawKey(index, random(bytes));
  return ring;
}

/** A frame of `codec` as an encoder would start it, then random bytes. */
function sampleFrame(codec: Codec, keyFrame: boolean, size = 200): Uint8Array {
  const frame = random(size);
  if (codec === 'vp8' && size >= 10) {
    // Frame tag: P bit (bit 0 of the first byte) 0 on a key frame; then start code and size.
    frame[0] = keyFrame ? 0x50 : 0x51;
    if (keyFrame) {
      frame.set([0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01], 3);
    }
  }
  return frame;
}

const info = (codec: Codec, keyFrame: boolean, timestamp = 3000): FrameInfo => ({
  codec,
  keyFrame,
  ssrc: 0x1234_5678,
  timestamp,
});

test('each codec round-trips and keeps its clear prefix untouched', async () => {
  const cases: [Codec, boolean, number][] = [
    ['vp8', true, 10],
    ['vp8', false, 3],
    ['opus', false, 1],
    ['vp9', true, 0],
    ['av1', false, 0],
  ];
  for (const [codec, keyFrame, clear] of cases) {
    assert.equal(clearBytes(codec, keyFrame), clear);
    const ring = await ringWith(3, 32);
    const encryptor = new FrameEncryptor(ring);
    const frame = sampleFrame(codec, keyFrame);
    const sealed = await encryptor.encrypt(frame, info(codec, keyFrame));
    assert.ok(sealed.ok, `${codec} encrypts`);
    assert.equal(sealed.data.length, frame.length + OVERHEAD_BYTES);
    assert.deepEqual(sealed.data.subarray(0, clear), frame.subarray(0, clear), `${codec} prefix`);
    assert.notDeepEqual(sealed.data.subarray(clear, frame.length), frame.subarray(clear));
    assert.equal(sealed.data[sealed.data.length - 1], FORMAT_V1);
    assert.equal(sealed.data[sealed.data.length - 2], 3, 'key index in the trailer');
    assert.equal(sealed.data[sealed.data.length - 3], clear, 'clear count in the trailer');
    assert.ok(isEncryptedFrame(sealed.data));
    const opened = await decryptFrame(sealed.data, ring);
    assert.ok(opened.ok, `${codec} decrypts`);
    assert.deepEqual(opened.data, frame);
    assert.equal(opened.keyIndex, 3);
  }
});

test('short frames keep what they have in the clear', async () => {
  const ring = await ringWith(0);
  const encryptor = new FrameEncryptor(ring);
  for (const size of [0, 1, 2, 9]) {
    const frame = sampleFrame('vp8', true, size);
    const sealed = await encryptor.encrypt(frame, info('vp8', true));
    assert.ok(sealed.ok);
    assert.equal(sealed.data[sealed.data.length - 3], size);
    const opened = await decryptFrame(sealed.data, ring);
    assert.ok(opened.ok);
    assert.deepEqual(opened.data, frame);
  }
});

test('H.264 is refused, not sent in the clear or broken', async () => {
  const encryptor = new FrameEncryptor(await ringWith(0));
  const sealed = await encryptor.encrypt(random(50), info('h264', true));
  assert.deepEqual(sealed, { ok: false, reason: 'unsupported_codec' });
});

test('no key, a wrong key, an unknown index and tampering fail as values', async () => {
  const empty = new FrameEncryptor(new KeyRing());
  assert.deepEqual(await empty.encrypt(random(20), info('opus', false)), {
    ok: false,
    reason: 'no_key',
  });
  const ring = await ringWith(5);
  const sealed = await new FrameEncryptor(ring).encrypt(
    sampleFrame('vp8', false),
    info('vp8', false),
  );
  assert.ok(sealed.ok);
  // Another key at the same index.
  const other = await ringWith(5);
  assert.deepEqual(await decryptFrame(sealed.data, other), {
    ok: false,
    reason: 'authentication_failed',
  });
  // No key at that index.
  assert.deepEqual(await decryptFrame(sealed.data, await ringWith(6)), {
    ok: false,
    reason: 'unknown_key',
  });
  // A flipped bit in the clear prefix (authenticated), in the body, in the IV.
  for (const at of [1, 20, sealed.data.length - 8]) {
    const altered: Uint8Array = new Uint8Array(sealed.data);
    altered[at] = (altered[at] ?? 0) ^ 0x01;
    assert.deepEqual(await decryptFrame(altered, ring), {
      ok: false,
      reason: 'authentication_failed',
    });
  }
  // A changed clear count (authenticated too).
  const recounted = new Uint8Array(sealed.data);
  recounted[recounted.length - 3] = 4;
  assert.equal((await decryptFrame(recounted, ring)).ok, false);
  // Not an encrypted frame at all: plain media, empty, truncated.
  for (const plain of [sampleFrame('vp8', true), new Uint8Array(0), sealed.data.subarray(0, 10)]) {
    assert.deepEqual(await decryptFrame(plain, ring), { ok: false, reason: 'not_encrypted' });
  }
});

test('rotation: frames under the old and the new index both decrypt while both are held', async () => {
  const sender = new KeyRing();
  const receiver = new KeyRing();
  const [k1, k2] = [random(16), random(16)];
  await sender.setRawKey(1, k1);
  await receiver.setRawKey(1, k1);
  const encryptor = new FrameEncryptor(sender);
  const before = await encryptor.encrypt(sampleFrame('vp8', false), info('vp8', false, 1));
  // The new key reaches everyone first, then the sender switches.
  await receiver.setRawKey(2, k2);
  await sender.setRawKey(2, k2, true);
  assert.equal(sender.current?.index, 2);
  const after = await encryptor.encrypt(sampleFrame('vp8', false), info('vp8', false, 2));
  assert.ok(before.ok && after.ok);
  assert.equal(before.keyIndex, 1);
  assert.equal(after.keyIndex, 2);
  assert.ok((await decryptFrame(before.data, receiver)).ok, 'a late frame under the old key');
  assert.ok((await decryptFrame(after.data, receiver)).ok);
  // The old key retired: its frames no longer decrypt; the current key cannot be removed.
  assert.ok(receiver.removeKey(1));
  assert.deepEqual(await decryptFrame(before.data, receiver), { ok: false, reason: 'unknown_key' });
  // Without a current key a sender sends nothing rather than something in the clear.
  assert.ok(sender.removeKey(2));
  assert.equal(sender.current, undefined);
  assert.deepEqual(await encryptor.encrypt(random(9), info('vp8', false)), {
    ok: false,
    reason: 'no_key',
  });
  assert.throws(() => sender.setCurrent(9), RangeError);
  assert.throws(() => sender.setKey(256, {} as CryptoKey), RangeError);
  await assert.rejects(sender.setRawKey(0, random(24)), RangeError);
});

test('the IV never repeats, also across the counter wrapping and many frames', async () => {
  const ring = await ringWith(0);
  // Start just below the wrap: the counter goes on at 0.
  const encryptor = new FrameEncryptor(ring, 0xffff_fff0);
  const seen = new Set<string>();
  for (let i = 0; i < 3000; i++) {
    // Same SSRC and timestamp for runs of frames (e.g. simulcast layers or audio bursts).
    const sealed = await encryptor.encrypt(random(4), info('opus', false, Math.floor(i / 10)));
    assert.ok(sealed.ok);
    const iv = hex(sealed.iv);
    assert.ok(!seen.has(iv), `IV ${iv} repeated at frame ${i}`);
    seen.add(iv);
  }
  assert.equal(seen.size, 3000);
  // Two encryptors on one key start at random counters.
  const a = await new FrameEncryptor(ring).encrypt(random(4), info('opus', false));
  const b = await new FrameEncryptor(ring).encrypt(random(4), info('opus', false));
  assert.ok(a.ok && b.ok);
  assert.notEqual(hex(a.iv), hex(b.iv));
});

test('invalid frame information is refused', async () => {
  const encryptor = new FrameEncryptor(await ringWith(0));
  for (const bad of [-1, 2 ** 32, 1.5, Number.NaN]) {
    assert.deepEqual(await encryptor.encrypt(random(4), { ...info('opus', false), ssrc: bad }), {
      ok: false,
      reason: 'invalid_input',
    });
  }
});

// The test vectors of docs/e2ee.md ("Test vectors"): any implementation must produce these.
test('docs/e2ee.md test vector 1: a VP8 delta frame under AES-128-GCM', async () => {
  const key = await importRawKey(fromHex('000102030405060708090a0b0c0d0e0f'));
  const iv = buildIv(0x11223344, 0x55667788, 1);
  assert.equal(hex(iv), '112233445566778800000001');
  const frame = fromHex('310200727463642065326565207631');
  const sealed = await encryptFrameWith(frame, 'vp8', false, key, 7, iv);
  assert.ok(sealed.ok);
  assert.equal(
    hex(sealed.data),
    '310200bdf5d4e7e6fbfaef21d1c523975966193e6a2c784f93ca8046ad4a87' +
      '1122334455667788000000010307e1',
  );
  const ring = new KeyRing();
  ring.setKey(7, key);
  const opened = await decryptFrame(sealed.data, ring);
  assert.ok(opened.ok);
  assert.equal(hex(opened.data), hex(frame));
});

test('docs/e2ee.md test vector 2: HKDF-SHA-256 key derivation', async () => {
  const material = new TextEncoder().encode('platform secret for room standup');
  assert.equal(hex(await deriveKeyBytes(material)), '991b87e44ffe213ac8de460c24868c03');
  const ring = new KeyRing();
  await ring.setDerivedKey(0, material);
  const raw = new KeyRing();
  await raw.setRawKey(0, fromHex('991b87e44ffe213ac8de460c24868c03'));
  const sealed = await new FrameEncryptor(ring).encrypt(random(30), info('opus', false));
  assert.ok(sealed.ok);
  assert.ok((await decryptFrame(sealed.data, raw)).ok, 'derived and raw keys are the same key');
});
