/**
 * H.264 facts the rtc stage needs: what profile a profile-level-id means (the same table libwebrtc uses
 * to match codecs), and which of the H.264 payload types in a browser's offer can carry what the
 * encoder really produces.
 */

export type H264Profile = "constrained-baseline" | "baseline" | "main" | "constrained-high" | "high" | "predictive-high-444";

export interface ProfileLevel {
  profile: H264Profile;
  /** level_idc (31 = 3.1); 9 stands for level 1b. */
  level: number;
}

// libwebrtc's h264_profile_level_id.cc: profile_idc, a bit pattern on the constraint byte ('x' = any).
const PATTERNS: [number, string, H264Profile][] = [
  [0x42, "x1xx0000", "constrained-baseline"],
  [0x4d, "1xxx0000", "constrained-baseline"],
  [0x58, "11xx0000", "constrained-baseline"],
  [0x42, "x0xx0000", "baseline"],
  [0x58, "10xx0000", "baseline"],
  [0x4d, "0x0x0000", "main"],
  [0x64, "00000000", "high"],
  [0x64, "00001100", "constrained-high"],
  [0xf4, "00000000", "predictive-high-444"],
];

function matches(pattern: string, byte: number): boolean {
  for (let i = 0; i < 8; i++) {
    const bit = (byte >> (7 - i)) & 1;
    const p = pattern[i];
    if (p !== "x" && Number(p) !== bit) return false;
  }
  return true;
}

/** Parses a 6-hex-digit profile-level-id; undefined when it names no profile a browser knows. */
export function parseProfileLevelId(id: string): ProfileLevel | undefined {
  if (!/^[0-9a-fA-F]{6}$/.test(id)) return undefined;
  const profileIdc = parseInt(id.slice(0, 2), 16);
  const constraints = parseInt(id.slice(2, 4), 16);
  let level = parseInt(id.slice(4, 6), 16);
  const hit = PATTERNS.find(([idc, pat]) => idc === profileIdc && matches(pat, constraints));
  if (!hit) return undefined;
  // Level 1b is level_idc 11 with constraint_set3 in the baseline-family and main profiles.
  if (level === 11 && (constraints & 0x10) !== 0 && (hit[2] === "constrained-baseline" || hit[2] === "baseline" || hit[2] === "main")) level = 9;
  return { profile: hit[2], level };
}

/** profile-level-id of a stream, read from its SPS NAL unit (header byte included). */
export function spsProfileLevelId(sps: Buffer): string | undefined {
  if (sps.length < 4 || (sps[0]! & 0x1f) !== 7) return undefined;
  return sps.subarray(1, 4).toString("hex");
}

/** Splits Annex-B data into NAL units (start codes removed). */
export function splitAnnexB(data: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let i = 0;
  let start = -1;
  const n = data.length;
  while (i + 2 < n) {
    if (data[i] === 0 && data[i + 1] === 0 && data[i + 2] === 1) {
      if (start >= 0) {
        let end = i;
        if (end > start && data[end - 1] === 0) end--; // the leading zero of a 4-byte start code
        out.push(data.subarray(start, end));
      }
      i += 3;
      start = i;
      continue;
    }
    i++;
  }
  if (start >= 0 && start < n) out.push(data.subarray(start));
  return out.filter((nal) => nal.length > 0);
}

export interface OfferedH264 {
  payloadType: number;
  /** The profile-level-id string exactly as offered (werift matches it byte for byte). */
  profileLevelId: string;
  /** The whole fmtp line value, as offered. */
  fmtp: string;
}

/** H.264 payload types with packetization-mode=1 in the first video m-section of an SDP. */
export function offeredH264(sdp: string): OfferedH264[] {
  const lines = sdp.split(/\r?\n/);
  const start = lines.findIndex((l) => l.startsWith("m=video"));
  if (start < 0) return [];
  let end = lines.findIndex((l, i) => i > start && l.startsWith("m="));
  if (end < 0) end = lines.length;
  const section = lines.slice(start, end);
  const h264 = new Set<number>();
  for (const l of section) {
    const m = /^a=rtpmap:(\d+) H264\/90000/i.exec(l);
    if (m) h264.add(Number(m[1]));
  }
  const out: OfferedH264[] = [];
  for (const l of section) {
    const m = /^a=fmtp:(\d+) (.*)$/.exec(l);
    if (!m || !h264.has(Number(m[1]))) continue;
    const params = new Map(m[2]!.split(";").map((kv) => {
      const [k, v] = kv.trim().split("=");
      return [k ?? "", v ?? ""] as const;
    }));
    if (params.get("packetization-mode") !== "1") continue;
    const plid = params.get("profile-level-id") ?? "42000a"; // RFC 6184 default
    out.push({ payloadType: Number(m[1]), profileLevelId: plid, fmtp: m[2]! });
  }
  return out;
}

/**
 * The offered H.264 payload type that can carry `produced`: same profile (libwebrtc's rule), the
 * highest offered level first. Levels may differ: the answer says level-asymmetry-allowed=1 and the
 * real level, and decoders accept any level of the profile they were set up for.
 */
export function chooseOfferedH264(offered: OfferedH264[], produced: string): OfferedH264 | undefined {
  const want = parseProfileLevelId(produced);
  if (!want) return undefined;
  const same = offered.filter((o) => parseProfileLevelId(o.profileLevelId)?.profile === want.profile);
  same.sort((a, b) => (parseProfileLevelId(b.profileLevelId)?.level ?? 0) - (parseProfileLevelId(a.profileLevelId)?.level ?? 0));
  return same[0];
}

/** Rewrites one payload type's profile-level-id in an SDP (the answer announces what is really sent). */
export function rewriteProfileLevelId(sdp: string, payloadType: number, profileLevelId: string): string {
  const re = new RegExp(`^(a=fmtp:${payloadType} .*?profile-level-id=)[0-9a-fA-F]{6}`, "m");
  return sdp.replace(re, `$1${profileLevelId}`);
}

/**
 * Keeps only `payloadType` in the first video m-section of an SDP (m= list, rtpmap, fmtp, rtcp-fb).
 * werift answers with the first offered payload type of a matching MIME type, whatever its profile;
 * showing it only the one we chose makes it answer that one.
 */
export function keepOnlyVideoPayload(sdp: string, payloadType: number): string {
  const eol = sdp.includes("\r\n") ? "\r\n" : "\n";
  const lines = sdp.split(/\r?\n/);
  const start = lines.findIndex((l) => l.startsWith("m=video"));
  if (start < 0) return sdp;
  let end = lines.findIndex((l, i) => i > start && l.startsWith("m="));
  if (end < 0) end = lines.length;
  const out: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i]!;
    if (i < start || i >= end) {
      out.push(l);
      continue;
    }
    if (i === start) {
      const parts = l.split(" ");
      out.push([...parts.slice(0, 3), String(payloadType)].join(" "));
      continue;
    }
    const m = /^a=(rtpmap|fmtp|rtcp-fb):(\d+|\*)[ ]/.exec(l);
    if (m && m[2] !== "*" && Number(m[2]) !== payloadType) continue;
    out.push(l);
  }
  return out.join(eol);
}
