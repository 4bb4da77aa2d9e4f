import { isIP } from "node:net";
import { WlError } from "../util/errors.js";

/**
 * Bounds and checks for a browser's SDP offer, applied before werift sees it. werift's parse and answer
 * grow faster than the offer: 500 m-sections blocked the event loop ~0.7 s (1000: 3.7 s), 1000 candidates
 * 0.6 s, and every viewer's stream stalls meanwhile. A browser's offer for this agent (video, data
 * channels, later audio) has 2-3 m-sections, a few kilobytes and at most a handful of candidates, so the
 * bounds below leave ample room for it and keep werift's work per offer to a few milliseconds.
 * Malformed values werift would stumble over (its exception text means nothing to a client) are refused
 * here with a reason of ours, as `bad-message`.
 */
export const OFFER_LIMITS = {
  /** Bytes of SDP (a Chrome offer with audio, video and data is ~6-10 KB). */
  maxBytes: 32 * 1024,
  /** Bytes per line (the longest real ones, fingerprints and candidates, are ~200). */
  maxLineBytes: 1024,
  /** m-sections (video + data today; audio and a camera would make 4). */
  maxMSections: 8,
  /** Candidates inside the offer (browsers trickle them; a non-trickling one sends a few per interface). */
  maxCandidates: 32,
  /** Payload types per m-line (Chrome offers ~20 video payload types). */
  maxFormats: 64,
  /** Lines of one kind (rtpmap, fmtp, rtcp-fb, extmap, ssrc) per m-section. */
  maxPerKind: 128,
} as const;

/** Candidates a viewer may trickle after each answered offer (each costs ICE checks to an address the client chose). */
export const MAX_TRICKLED_CANDIDATES = 64;

/** An offer (or candidate) that does not follow the protocol: answered `bad-message` with this reason. */
export class BadOfferError extends WlError {
  constructor(message: string) {
    super("bad-offer", message);
  }
}

/** What a later offer of the same session must keep: its m-sections (kind and mid, in order) and BUNDLE group. */
export interface OfferShape {
  sections: { kind: string; mid: string }[];
  bundle: string[];
}

const ICE_CHARS = /^[A-Za-z0-9+/]+$/;
const TOKEN = /^[A-Za-z0-9!#$%&'*+.^_`{|}~-]+$/;
const HASH_BYTES: Record<string, number> = { "sha-1": 20, "sha-224": 28, "sha-256": 32, "sha-384": 48, "sha-512": 64 };
const KINDS = new Set(["audio", "video", "application"]);
const CANDIDATE_TYPES = new Set(["host", "srflx", "prflx", "relay"]);
// Unsafe characters: C0 controls other than CR/LF, and DEL (byte flips; werift's parser does odd things with them).
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u0009\u000b\u000c\u000e-\u001f\u007f]/;

/** An unsigned decimal integer in [min, max]; undefined otherwise (no signs, exponents or 20-digit values). */
function uint(s: string | undefined, min: number, max: number): number | undefined {
  if (s === undefined || !/^\d{1,10}$/.test(s)) return undefined;
  const n = Number(s);
  return n >= min && n <= max ? n : undefined;
}

/**
 * An address in a candidate: an IP literal, or an mDNS name (RFC 8828: browsers hide local addresses as
 * "<uuid>.local"). Other host names are refused: the agent would resolve names a client chose.
 */
export function candidateAddressOk(a: string): boolean {
  if (isIP(a) !== 0) return true;
  return /^[A-Za-z0-9-]{1,63}\.local$/.test(a);
}

/** Checks one `candidate:` attribute value (RFC 8839 5.1); returns the reason it is refused, or undefined. */
export function candidateProblem(value: string): string | undefined {
  const v = value.startsWith("a=") ? value.slice(2) : value;
  const f = v.split(" ");
  if (!/^candidate:[A-Za-z0-9+/]{1,32}$/.test(f[0] ?? "")) return "candidate: bad foundation";
  if (uint(f[1], 1, 256) === undefined) return "candidate: component must be 1-256";
  if (!/^(udp|tcp)$/i.test(f[2] ?? "")) return "candidate: transport must be udp or tcp";
  if (uint(f[3], 0, 2 ** 32 - 1) === undefined) return "candidate: priority must be 0-4294967295";
  if (!candidateAddressOk(f[4] ?? "")) return "candidate: the address must be an IP address or an mDNS .local name";
  if (uint(f[5], 0, 65535) === undefined) return "candidate: port must be 0-65535";
  if (f[6] !== "typ" || !CANDIDATE_TYPES.has(f[7] ?? "")) return "candidate: typ must be host, srflx, prflx or relay";
  for (let i = 8; i + 1 < f.length; i += 2) {
    const [k, x] = [f[i]!, f[i + 1]!];
    if (k === "raddr" && !candidateAddressOk(x)) return "candidate: bad raddr";
    if (k === "rport" && uint(x, 0, 65535) === undefined) return "candidate: bad rport";
    if ((k === "generation" || k === "network-id" || k === "network-cost") && uint(x, 0, 2 ** 32 - 1) === undefined) return `candidate: bad ${k}`;
    if (k === "ufrag" && !(ICE_CHARS.test(x) && x.length <= 256)) return "candidate: bad ufrag";
  }
  if (f.length > 8 && (f.length - 8) % 2 !== 0) return "candidate: extensions must be name value pairs";
  return undefined;
}

/**
 * Checks an offer; returns its shape, or throws BadOfferError with the first problem found. With
 * `previous` (a renegotiation or ICE restart), the offer must keep the earlier m-sections and BUNDLE
 * group: werift cannot move transports between groups (it left the replaced ones open) and our viewer
 * has nothing to renegotiate but ICE.
 */
export function checkOffer(sdp: string, previous?: OfferShape): OfferShape {
  const bad = (why: string): never => {
    throw new BadOfferError(`offer refused: ${why}`);
  };
  if (Buffer.byteLength(sdp) > OFFER_LIMITS.maxBytes) bad(`larger than ${OFFER_LIMITS.maxBytes} bytes`);
  if (CONTROL.test(sdp)) bad("control characters in the SDP");
  const lines = sdp.split(/\r?\n/);
  while (lines.length > 0 && lines[lines.length - 1] === "") lines.pop();
  if (lines[0] !== "v=0") bad("the SDP must start with v=0");

  interface Section {
    kind: string;
    mid?: string;
    ufrag?: string;
    pwd?: string;
    fingerprint: boolean;
    counts: Map<string, number>;
  }
  const session: Section = { kind: "session", fingerprint: false, counts: new Map() };
  const sections: Section[] = [];
  let cur = session;
  let candidates = 0;
  let bundle: string[] = [];

  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    const where = cur === session ? `line ${i + 1}` : `m-section ${sections.length - 1} (line ${i + 1})`;
    const fail = (why: string): never => bad(`${where}: ${why}`);
    if (Buffer.byteLength(line) > OFFER_LIMITS.maxLineBytes) fail(`longer than ${OFFER_LIMITS.maxLineBytes} bytes`);
    if (!/^[a-z]=/.test(line)) fail("not a <letter>=<value> line");
    const type = line[0]!;
    const value = line.slice(2);
    if (type === "m") {
      if (sections.length >= OFFER_LIMITS.maxMSections) bad(`more than ${OFFER_LIMITS.maxMSections} m-sections`);
      const f = value.split(" ");
      const kind = f[0] ?? "";
      if (!KINDS.has(kind)) fail(`media kind must be audio, video or application, not ${JSON.stringify(kind.slice(0, 16))}`);
      if (!/^\d{1,5}(\/\d{1,2})?$/.test(f[1] ?? "") || Number((f[1] ?? "").split("/")[0]) > 65535) fail("bad port in the m-line");
      if (!/^[A-Za-z/]{1,32}$/.test(f[2] ?? "")) fail("bad protocol in the m-line");
      const fmts = f.slice(3);
      if (fmts.length === 0) fail("the m-line names no format");
      if (fmts.length > OFFER_LIMITS.maxFormats) fail(`more than ${OFFER_LIMITS.maxFormats} formats in the m-line`);
      if (kind === "application") {
        if (!fmts.every((x) => x === "webrtc-datachannel" || uint(x, 0, 65535) !== undefined)) fail("application formats must be webrtc-datachannel");
      } else if (!fmts.every((x) => uint(x, 0, 127) !== undefined)) fail("payload types must be 0-127");
      cur = { kind, fingerprint: false, counts: new Map() };
      sections.push(cur);
      continue;
    }
    if (type === "c") {
      const f = value.split(" ");
      if (f.length !== 3 || f[0] !== "IN" || !((f[1] === "IP4" && isIP(f[2]!.split("/")[0]!) === 4) || (f[1] === "IP6" && isIP(f[2]!) === 6))) fail("bad c= line");
      continue;
    }
    if (type !== "a") continue;
    const colon = value.indexOf(":");
    const name = colon < 0 ? value : value.slice(0, colon);
    const arg = colon < 0 ? "" : value.slice(colon + 1);
    const n = (cur.counts.get(name) ?? 0) + 1;
    cur.counts.set(name, n);
    if (n > OFFER_LIMITS.maxPerKind) fail(`more than ${OFFER_LIMITS.maxPerKind} a=${name.slice(0, 32)} lines`);
    const pt = (s: string | undefined): boolean => uint(s, 0, 127) !== undefined;
    switch (name) {
      case "group": {
        const f = arg.split(" ");
        if (f[0] === "BUNDLE") {
          if (cur !== session) fail("a=group belongs at session level");
          bundle = f.slice(1);
          if (bundle.length > OFFER_LIMITS.maxMSections) fail("too many mids in the BUNDLE group");
        }
        break;
      }
      case "mid":
        if (cur === session) fail("a=mid outside an m-section");
        if (!TOKEN.test(arg) || arg.length > 32) fail("a=mid must be a token of at most 32 characters");
        if (cur.mid !== undefined) fail("two a=mid lines");
        cur.mid = arg;
        break;
      case "ice-ufrag":
        if (!ICE_CHARS.test(arg) || arg.length < 4 || arg.length > 256) fail("a=ice-ufrag must be 4-256 ICE characters (RFC 8839)");
        cur.ufrag = arg;
        break;
      case "ice-pwd":
        if (!ICE_CHARS.test(arg) || arg.length < 22 || arg.length > 256) fail("a=ice-pwd must be 22-256 ICE characters (RFC 8839)");
        cur.pwd = arg;
        break;
      case "fingerprint": {
        const [hash, hex, extra] = arg.split(" ");
        const bytes = HASH_BYTES[(hash ?? "").toLowerCase()];
        if (bytes === undefined) fail("a=fingerprint: the hash must be sha-1, sha-224, sha-256, sha-384 or sha-512");
        if (extra !== undefined || !new RegExp(`^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){${bytes! - 1}}$`).test(hex ?? "")) fail(`a=fingerprint: expected ${bytes} hex bytes separated by colons`);
        cur.fingerprint = true;
        break;
      }
      case "setup":
        if (!["actpass", "active", "passive"].includes(arg)) fail("a=setup must be actpass, active or passive");
        break;
      case "candidate": {
        if (cur === session) fail("a=candidate outside an m-section");
        if (++candidates > OFFER_LIMITS.maxCandidates) bad(`more than ${OFFER_LIMITS.maxCandidates} candidates`);
        const p = candidateProblem(value);
        if (p !== undefined) fail(p);
        break;
      }
      case "rtpmap": {
        const m = /^(\d{1,3}) ([A-Za-z0-9_.-]{1,32})\/(\d{1,10})(\/(\d{1,2}))?$/.exec(arg);
        if (!m || !pt(m[1]) || uint(m[3], 1, 2 ** 32 - 1) === undefined || (m[5] !== undefined && uint(m[5], 1, 16) === undefined)) fail("bad a=rtpmap");
        break;
      }
      case "fmtp":
      case "rtcp-fb": {
        const [p] = arg.split(" ");
        if (!(pt(p) || (name === "rtcp-fb" && p === "*"))) fail(`a=${name}: payload type must be 0-127`);
        break;
      }
      case "extmap": {
        const m = /^(\d{1,3})(\/(sendrecv|sendonly|recvonly|inactive))? (\S{1,256})( .*)?$/.exec(arg);
        if (!m || uint(m[1], 1, 255) === undefined) fail("bad a=extmap (id 1-255, then a URI)");
        break;
      }
      case "ssrc":
      case "ssrc-group": {
        const ids = name === "ssrc" ? [arg.split(" ")[0]] : arg.split(" ").slice(1);
        if (ids.length === 0 || !ids.every((x) => uint(x, 0, 2 ** 32 - 1) !== undefined)) fail(`a=${name}: SSRCs must be 0-4294967295`);
        break;
      }
      case "rtcp":
        if (uint(arg.split(" ")[0], 0, 65535) === undefined) fail("a=rtcp: port must be 0-65535");
        break;
      case "sctp-port":
        if (uint(arg, 1, 65535) === undefined) fail("a=sctp-port must be 1-65535");
        break;
      case "max-message-size":
        if (uint(arg, 0, 2 ** 32 - 1) === undefined) fail("a=max-message-size must be 0-4294967295");
        break;
    }
  }

  if (sections.length === 0) bad("no m-section");
  const mids = new Set<string>();
  sections.forEach((s, i) => {
    if (s.mid === undefined) bad(`m-section ${i} has no a=mid`);
    if (mids.has(s.mid!)) bad(`a=mid ${JSON.stringify(s.mid)} appears twice`);
    mids.add(s.mid!);
    if ((s.ufrag ?? session.ufrag) === undefined || (s.pwd ?? session.pwd) === undefined) bad(`m-section ${i} has no ICE credentials (a=ice-ufrag, a=ice-pwd)`);
    if (!s.fingerprint && !session.fingerprint) bad(`m-section ${i} has no a=fingerprint`);
  });
  for (const m of bundle) if (!mids.has(m)) bad(`the BUNDLE group names mid ${JSON.stringify(m.slice(0, 32))}, which no m-section has`);
  const shape: OfferShape = { sections: sections.map((s) => ({ kind: s.kind, mid: s.mid! })), bundle };
  if (previous) {
    const same = previous.sections.length === shape.sections.length
      && previous.sections.every((p, i) => shape.sections[i]?.kind === p.kind && shape.sections[i]?.mid === p.mid)
      && previous.bundle.length === bundle.length && previous.bundle.every((m, i) => bundle[i] === m);
    if (!same) bad("a new offer in a session must keep the m-sections (kind and mid, in order) and the BUNDLE group of the first");
  }
  return shape;
}
