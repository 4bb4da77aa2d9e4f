import { isIP } from "node:net";

/** A small seeded PRNG (mulberry32): a failure can be replayed with the same seed. */
export class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  nextDouble(): number {
    this.#s = (this.#s + 0x6d2b79f5) >>> 0;
    let t = this.#s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** An integer in [min, max]. */
  nextInt(min: number, max: number): number {
    return min + Math.floor(this.nextDouble() * (max - min + 1));
  }
}

export const validMessages: unknown[] = [
  { type: "ping", id: 1 },
  { type: "offer", sdp: "v=0\r\n" },
  { type: "answer", sdp: "v=0\r\n" },
  { type: "candidate", candidate: { candidate: "candidate:1 1 udp 2122260223 127.0.0.1 54400 typ host", sdpMid: "0", sdpMLineIndex: 0 } },
  { type: "candidate", candidate: null },
];

export function mutate(rng: Rng, v: unknown, depth = 0): unknown {
  const r = rng.nextInt(0, 9);
  if (v !== null && typeof v === "object" && !Array.isArray(v) && depth < 4) {
    const o: Record<string, unknown> = { ...(v as Record<string, unknown>) };
    const keys = Object.keys(o);
    const k = keys[rng.nextInt(0, Math.max(0, keys.length - 1))];
    if (r < 3 && k !== undefined) o[k] = mutate(rng, o[k], depth + 1);
    else if (r < 5 && k !== undefined) delete o[k];
    else if (r < 7) o[["__proto__", "constructor", "extra", "type", "sdp", "v"][rng.nextInt(0, 5)]!] = randomValue(rng, depth + 1);
    else if (k !== undefined) o[k] = randomValue(rng, depth + 1);
    return o;
  }
  return randomValue(rng, depth + 1);
}

export function randomValue(rng: Rng, depth: number): unknown {
  switch (rng.nextInt(0, depth > 3 ? 6 : 8)) {
    case 0: return null;
    case 1: return rng.nextInt(-1e9, 1e9);
    case 2: return rng.nextDouble() * 1e300;
    case 3: return ["hello", "offer", "answer", "candidate", "bye", "ping", "welcome", "", "OFFER"][rng.nextInt(0, 8)];
    case 4: return "x".repeat(rng.nextInt(0, 300));
    case 5: return true;
    case 6: return String.fromCharCode(...Array.from({ length: rng.nextInt(0, 20) }, () => rng.nextInt(0, 0xffff)));
    case 7: return [randomValue(rng, depth + 1), randomValue(rng, depth + 1)];
    default: return { type: randomValue(rng, depth + 1), sdp: randomValue(rng, depth + 1) };
  }
}

export function rawMutation(rng: Rng, text: string): string {
  const chars = [...text];
  const n = rng.nextInt(1, 4);
  for (let i = 0; i < n && chars.length > 0; i++) {
    const at = rng.nextInt(0, chars.length - 1);
    const op = rng.nextInt(0, 2);
    if (op === 0) chars.splice(at, 1);
    else if (op === 1) chars.splice(at, 0, String.fromCharCode(rng.nextInt(0, 127)));
    else chars[at] = String.fromCharCode(rng.nextInt(0, 0xffff));
  }
  return chars.join("");
}

/** Every IPv4 or IPv6 literal in a text (what an agent could take for an address). */
export function addressesIn(text: string): string[] {
  const out: string[] = [];
  for (const m of text.matchAll(/\d{1,3}(?:\.\d{1,3}){3}/g)) out.push(m[0]);
  for (const tok of text.split(/[^0-9A-Fa-f:.]+/)) if (tok.includes(":") && isIP(tok) === 6) out.push(tok);
  return out;
}

/**
 * True when a fuzzed message can only make the agent send to 127.0.0.0/8: every address literal in it is
 * on loopback, and no mDNS name (".local": the agent would ask the whole LAN) appears. Fuzzers send a
 * message only if this holds, and replace it by its unmutated base otherwise.
 */
export function staysOnLoopback(text: string): boolean {
  if (/\.local\b/i.test(text)) return false;
  return addressesIn(text).every((a) => /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(a) && a.split(".").every((o) => Number(o) <= 255));
}
