import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createCipheriv, randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";
import { RtpHeader, SrtpSession } from "werift";
import { useNativeSrtpGcm } from "../../agent/rtc/srtp.js";
import { loadAddon } from "../../agent/native/addon.js";

const AEAD_AES_128_GCM = 7;
const AES_CM_128_HMAC_SHA1_80 = 1;

function sessions(profile: number): { tx: SrtpSession; rx: SrtpSession } {
  const saltLen = profile === AEAD_AES_128_GCM ? 12 : 14;
  const k = { a: randomBytes(16), as: randomBytes(saltLen), b: randomBytes(16), bs: randomBytes(saltLen) };
  return {
    tx: new SrtpSession({ keys: { localMasterKey: k.a, localMasterSalt: k.as, remoteMasterKey: k.b, remoteMasterSalt: k.bs }, profile: profile as 7 }),
    rx: new SrtpSession({ keys: { localMasterKey: k.b, localMasterSalt: k.bs, remoteMasterKey: k.a, remoteMasterSalt: k.as }, profile: profile as 7 }),
  };
}

function header(seq: number, extensions = true): RtpHeader {
  return new RtpHeader({
    payloadType: 102, sequenceNumber: seq & 0xffff, timestamp: (seq * 3000) >>> 0, ssrc: 0x1234abcd, marker: seq % 7 === 0,
    ...(extensions ? { extension: true, extensions: [{ id: 1, payload: Buffer.from([0x30]) }, { id: 3, payload: Buffer.from([(seq >> 8) & 0xff | 1, seq & 0xff | 1]) }] } : {}),
  });
}

/** RFC 7714 section 8, written out with node:crypto: the reference the native path must match. */
function reference(key: Buffer, salt: Buffer, hdr: Buffer, payload: Buffer, ssrc: number, roc: number, seq: number): Buffer {
  const iv = Buffer.alloc(12);
  iv.writeUInt32BE(ssrc >>> 0, 2);
  iv.writeUInt32BE(roc >>> 0, 6);
  iv.writeUInt16BE(seq, 10);
  for (let i = 0; i < 12; i++) iv[i]! ^= salt[i]!;
  const c = createCipheriv("aes-128-gcm", key, iv);
  c.setAAD(hdr);
  const enc = Buffer.concat([c.update(payload), c.final()]);
  return Buffer.concat([hdr, enc, c.getAuthTag()]);
}

test("native SRTP AES-GCM is switched on where the addon is built", () => {
  const s = useNativeSrtpGcm();
  assert.deepEqual(s, { active: true });
  assert.equal(useNativeSrtpGcm(), s, "idempotent: the same state, the prototype wrapped once");
});

test("native SRTP AES-GCM: RFC 7714 byte for byte, across a sequence-number wrap, and werift decrypts every packet", () => {
  assert.equal(useNativeSrtpGcm().active, true);
  const { tx, rx } = sessions(AEAD_AES_128_GCM);
  const cipher = (tx.localContext as unknown as { cipher: { srtpSessionKey: Buffer; srtpSessionSalt: Buffer } }).cipher;
  let roc = 0;
  // From 65000 through the wrap to 66500: the rollover counter goes 0 -> 1 in the IV.
  for (let n = 65_000; n < 66_500; n++) {
    const seq = n & 0xffff;
    if (seq === 0) roc++;
    const h = header(n, n % 3 !== 0);
    const payload = randomBytes(1 + ((n * 37) % 1200));
    const want = reference(cipher.srtpSessionKey, cipher.srtpSessionSalt, h.serialize(h.serializeSize), payload, h.ssrc, roc, seq);
    const got = tx.encrypt(payload, h);
    assert.ok(got.equals(want), `packet ${n} (seq ${seq}, roc ${roc}) differs from RFC 7714`);
    const dec = rx.decrypt(got);
    assert.ok(dec.subarray(dec.length - payload.length).equals(payload), `werift could not decrypt packet ${n}`);
  }
});

test("native SRTP AES-GCM: a tampered packet fails werift's authentication", () => {
  assert.equal(useNativeSrtpGcm().active, true);
  const { tx, rx } = sessions(AEAD_AES_128_GCM);
  const enc = tx.encrypt(randomBytes(500), header(10));
  enc[enc.length - 20]! ^= 1;
  assert.throws(() => rx.decrypt(enc), /authenticate/i);
});

test("the AES-CM/HMAC-SHA1 profile keeps werift's own path and still round-trips", () => {
  assert.equal(useNativeSrtpGcm().active, true);
  const { tx, rx } = sessions(AES_CM_128_HMAC_SHA1_80);
  for (let n = 0; n < 50; n++) {
    const payload = randomBytes(900);
    const dec = rx.decrypt(tx.encrypt(payload, header(n)));
    assert.ok(dec.subarray(dec.length - payload.length).equals(payload));
  }
});

test("SrtpGcmSealer: wrong key or salt sizes and a wrong output size are refused; close() is idempotent and seal() then throws", () => {
  const { SrtpGcmSealer } = loadAddon();
  assert.throws(() => new SrtpGcmSealer(randomBytes(32), randomBytes(12)), RangeError);
  assert.throws(() => new SrtpGcmSealer(randomBytes(16), randomBytes(14)), RangeError);
  assert.throws(() => new SrtpGcmSealer("key" as unknown as Buffer, randomBytes(12)), TypeError);
  const s = new SrtpGcmSealer(randomBytes(16), randomBytes(12));
  assert.equal(s.seal(Buffer.alloc(12), Buffer.alloc(100), 1, 0, 1).length, 12 + 100 + 16);
  assert.throws(() => s.seal("h" as unknown as Buffer, Buffer.alloc(1), 1, 0, 1), TypeError);
  const hdr = randomBytes(16), payload = randomBytes(300);
  const out = Buffer.alloc(16 + 300 + 16);
  s.sealInto(out, hdr, payload, 7, 1, 9);
  assert.ok(out.equals(s.seal(hdr, payload, 7, 1, 9)), "sealInto and seal agree");
  assert.throws(() => s.sealInto(Buffer.alloc(16 + 300 + 15), hdr, payload, 7, 1, 9), RangeError);
  assert.equal(s.closed, false);
  s.close();
  s.close();
  assert.equal(s.closed, true);
  assert.throws(() => s.seal(Buffer.alloc(12), Buffer.alloc(100), 1, 0, 1), /closed/);
});

test("WL_WEBRTC_NATIVE_SRTP=0 keeps werift's path and says so", () => {
  const mod = fileURLToPath(new URL("../../agent/rtc/srtp.js", import.meta.url));
  const r = spawnSync(process.execPath, ["--input-type=module", "-e", `import { useNativeSrtpGcm } from ${JSON.stringify(mod)}; console.log(JSON.stringify(useNativeSrtpGcm()));`], {
    env: { ...process.env, WL_WEBRTC_NATIVE_SRTP: "0" },
    encoding: "utf8",
  });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { active: false, reason: "switched off by WL_WEBRTC_NATIVE_SRTP=0" });
});
