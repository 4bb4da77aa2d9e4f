import { RtpHeader, SrtpSession } from "werift";
import { loadAddon, type SrtpGcmSealer } from "../native/addon.js";
import { errorMessage } from "../util/errors.js";

/** RFC 7714's SRTP_AEAD_AES_128_GCM: werift's ProtectionProfileAeadAes128Gcm (not exported by name). */
const AEAD_AES_128_GCM = 7;

/** The part of werift's CipherAesGcm (one per SRTP session) that the fast path uses. */
interface GcmCipher {
  srtpSessionKey: Buffer;
  srtpSessionSalt: Buffer;
  encryptRtp(header: RtpHeader, payload: Buffer, rolloverCounter: number): Buffer;
}

export type NativeSrtpState = { active: true } | { active: false; reason: string };

let state: NativeSrtpState | undefined;

/**
 * Makes werift encrypt outgoing SRTP with AEAD_AES_128_GCM through the addon's SrtpGcmSealer: one
 * OpenSSL context per session with the key set up once, one call and one buffer per packet, instead of
 * a new node:crypto cipher per packet (werift's CipherAesGcm.encryptRtp: createCipheriv, setAAD, update,
 * final, getAuthTag, Buffer.concat: 7-9 us per packet). With ~600 packets/s per viewer at 6 Mbit/s that
 * was ~10 % of the agent's JS thread's busy time, after GC and the socket send (docs/streaming.md "Cost
 * per viewer"). werift itself is not edited: its GCM cipher's prototype method is wrapped once per process,
 * so every werift SRTP session in the agent gets it; werift's sequence and rollover bookkeeping, header
 * serialization, decryption and SRTCP stay werift's. The AES-CM/HMAC-SHA1 profile is untouched.
 *
 * Checked before it is switched on: a packet sealed both ways must come out byte for byte the same, else
 * werift's own path stays (a werift upgrade that changed its cipher is then only slower, never wrong).
 * Idempotent; returns what it did. WL_WEBRTC_NATIVE_SRTP=0 in the environment keeps werift's path.
 */
export function useNativeSrtpGcm(): NativeSrtpState {
  if (state !== undefined) return state;
  // For benches (before/after) and as a way out should the native path ever misbehave.
  if (process.env.WL_WEBRTC_NATIVE_SRTP === "0") return (state = { active: false, reason: "switched off by WL_WEBRTC_NATIVE_SRTP=0" });
  try {
    const { SrtpGcmSealer: Sealer } = loadAddon();
    if (typeof Sealer !== "function") return (state = { active: false, reason: "the native addon has no SrtpGcmSealer (rebuild it: npm run build:native)" });
    // A throwaway session with known keys, only to reach werift's GCM cipher class.
    const key = Buffer.from("000102030405060708090a0b0c0d0e0f", "hex");
    const salt = Buffer.from("a0a1a2a3a4a5a6a7a8a9aaab", "hex");
    const probe = new SrtpSession({ keys: { localMasterKey: key, localMasterSalt: salt, remoteMasterKey: key, remoteMasterSalt: salt }, profile: AEAD_AES_128_GCM });
    const cipher = (probe.localContext as unknown as { cipher: GcmCipher }).cipher;
    const proto = Object.getPrototypeOf(cipher) as GcmCipher;
    if (typeof proto.encryptRtp !== "function" || !Buffer.isBuffer(cipher.srtpSessionKey) || !Buffer.isBuffer(cipher.srtpSessionSalt)) {
      return (state = { active: false, reason: "werift's GCM cipher is not shaped as expected (encryptRtp, srtpSessionKey, srtpSessionSalt)" });
    }
    const original = proto.encryptRtp;
    const sealers = new WeakMap<GcmCipher, SrtpGcmSealer | null>();
    const seal = function (this: GcmCipher, header: RtpHeader, payload: Buffer, rolloverCounter: number): Buffer {
      let s = sealers.get(this);
      if (s === undefined) {
        try {
          // werift keeps a 14-byte session salt (its KDF's output) and XORs the IV with its first 12.
          s = new Sealer(this.srtpSessionKey, this.srtpSessionSalt.subarray(0, 12));
        } catch {
          s = null; // not AES-128 key and 96-bit salt: werift's own path for this session
        }
        sealers.set(this, s);
      }
      if (s === null) return original.call(this, header, payload, rolloverCounter);
      const hdr = header.serialize(header.serializeSize);
      // From Node's buffer pool: a buffer made in C++ costs ~1 us more per packet.
      const out = Buffer.allocUnsafe(hdr.length + payload.length + 16);
      s.sealInto(out, hdr, payload, header.ssrc >>> 0, rolloverCounter >>> 0, header.sequenceNumber & 0xffff);
      return out;
    };
    // The check: a header with extensions (as every packet of ours has), a rollover counter past 16 bits.
    const header = new RtpHeader({
      payloadType: 102, sequenceNumber: 0xfffe, timestamp: 0x89abcdef, ssrc: 0xdeadbeef, marker: true, extension: true,
      extensions: [{ id: 1, payload: Buffer.from([0x30]) }, { id: 3, payload: Buffer.from([0x12, 0x34]) }],
    });
    const payload = Buffer.from(Array.from({ length: 1187 }, (_, i) => (i * 31 + 7) & 0xff));
    const want = original.call(cipher, header, payload, 0x12345);
    const got = seal.call(cipher, header, payload, 0x12345);
    if (!sealers.get(cipher)) return (state = { active: false, reason: "the native sealer does not take werift's GCM session key and salt: werift's path kept" });
    if (!want.equals(got)) return (state = { active: false, reason: "the native AES-GCM output differs from werift's: werift's path kept" });
    proto.encryptRtp = seal;
    return (state = { active: true });
  } catch (err) {
    return (state = { active: false, reason: errorMessage(err) });
  }
}
