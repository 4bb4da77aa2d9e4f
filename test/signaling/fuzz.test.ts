import { test } from "node:test";
import assert from "node:assert/strict";
import { startTestAgent } from "../helpers/agent.js";
import { hello, withTimeout } from "../helpers/ws-client.js";
import { CloseCode } from "../../agent/signaling/protocol.js";

/** A small seeded PRNG (mulberry32): a failure can be replayed with the same seed. */
class Rng {
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

/**
 * At least 10 000 random and mutated signaling messages against a live server. Every bad message
 * must be answered with an error, valid ones with their reply; the server never crashes and no
 * promise rejection goes unhandled.
 */
const validMessages: unknown[] = [
  { type: "ping", id: 1 },
  { type: "offer", sdp: "v=0\r\n" },
  { type: "answer", sdp: "v=0\r\n" },
  { type: "candidate", candidate: { candidate: "candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host", sdpMid: "0", sdpMLineIndex: 0 } },
  { type: "candidate", candidate: null },
];

function mutate(rng: Rng, v: unknown, depth = 0): unknown {
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

function randomValue(rng: Rng, depth: number): unknown {
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

function rawMutation(rng: Rng, text: string): string {
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

test("10 000 random and mutated messages: every one answered, no crash, no unhandled rejection", async () => {
  const unhandled: unknown[] = [];
  const onUnhandled = (r: unknown) => unhandled.push(r);
  process.on("unhandledRejection", onUnhandled);
  const t = await startTestAgent({
    signaling: { messages_per_second: 100_000, message_burst: 100_000, max_bad_messages: 100_000 },
  });
  try {
    const { token } = await t.agent.tokens.mint({ role: "control", ttlS: 600, subject: "fuzz" });
    const rng = new Rng(20261121);
    const total = 10_000;
    const perConnection = 2_500;
    let sent = 0;
    let answered = 0;
    let byes = 0;
    while (sent < total) {
      const r = await hello(t.wsUrl, token);
      assert.ok(r.welcome, "fuzz connection accepted");
      const c = r.client;
      let expectClose = false;
      let batch = 0;
      for (; batch < perConnection && sent < total; batch++, sent++) {
        const base = validMessages[rng.nextInt(0, validMessages.length - 1)];
        let text: string;
        const kind = rng.nextInt(0, 9);
        if (kind < 5) text = JSON.stringify(mutate(rng, base));
        else if (kind < 9) text = rawMutation(rng, JSON.stringify(base));
        else text = JSON.stringify(base);
        let parsed: unknown;
        try {
          parsed = JSON.parse(text);
        } catch {
          parsed = undefined;
        }
        if ((parsed as { type?: unknown } | undefined)?.type === "bye" && typeof parsed === "object" && parsed !== null) {
          // A valid-looking bye would end the connection: count on it only if it validates.
          const keys = Object.keys(parsed);
          const p = parsed as { reason?: unknown; id?: unknown };
          if (keys.every((k) => ["type", "reason", "id"].includes(k)) && (p.reason === undefined || (typeof p.reason === "string" && p.reason.length <= 256)) && (p.id === undefined || (typeof p.id === "string" && p.id.length <= 64) || (typeof p.id === "number" && Number.isInteger(p.id)))) {
            c.send(text);
            expectClose = true;
            byes++;
            sent++;
            break;
          }
        }
        c.send(text);
      }
      const expected = batch;
      // Wait until every message sent on this connection got its answer (error, pong, or unavailable).
      await withTimeout(
        (async () => {
          while (c.messages.length < expected) await new Promise((res) => setTimeout(res, 20));
        })(),
        20_000,
        `answers on a connection (${c.messages.length}/${expected})`,
      );
      for (const m of c.messages) assert.ok(m.type === "error" || m.type === "pong", `unexpected reply ${JSON.stringify(m).slice(0, 200)}`);
      answered += c.messages.length;
      if (expectClose) assert.equal((await withTimeout(c.closed, 3000, "bye closes")).code, CloseCode.normal);
      else c.close();
    }
    assert.ok(sent >= total, `sent ${sent}`);
    assert.equal(answered + byes, sent, "every message got an answer (or was a valid bye)");
    // The server is still healthy.
    const r = await hello(t.wsUrl, token);
    assert.ok(r.welcome);
    r.client.close();
    await new Promise((res) => setTimeout(res, 100));
    assert.deepEqual(unhandled, []);
  } finally {
    process.off("unhandledRejection", onUnhandled);
    await t.close();
  }
});

test("300 random first messages (before hello): each answered with an error and a documented close", async () => {
  const t = await startTestAgent({ signaling: { connection_burst_per_address: 10_000, connections_per_second_per_address: 10_000 } });
  try {
    const rng = new Rng(7);
    const hellos: unknown[] = [{ type: "hello", v: 1, token: "a.b.c" }, { type: "hello", v: 1 }, ...validMessages];
    const codes = new Map<number, number>();
    for (let i = 0; i < 300; i++) {
      const base = hellos[rng.nextInt(0, hellos.length - 1)];
      const text = rng.nextInt(0, 1) === 0 ? JSON.stringify(mutate(rng, base)) : rawMutation(rng, JSON.stringify(base));
      const c = new (await import("../helpers/ws-client.js")).TestClient(t.wsUrl);
      await c.opened;
      c.send(text);
      const closed = await withTimeout(c.closed, 8000, `close after first message ${text.slice(0, 80)}`);
      codes.set(closed.code, (codes.get(closed.code) ?? 0) + 1);
      assert.ok(
        [CloseCode.badMessage, CloseCode.unauthorized, CloseCode.unsupportedVersion].includes(closed.code as 4400),
        `close code ${closed.code} for ${text.slice(0, 120)}`,
      );
      if (closed.code === CloseCode.badMessage || closed.code === CloseCode.unsupportedVersion)
        assert.equal(c.messages[0]?.type, "error", "told why before the close");
    }
    // The server forgets every one of them (its side of the close can trail the client's by a tick).
    await withTimeout(
      (async () => {
        while (t.agent.signaling.connectionCount > 0) await new Promise((res) => setTimeout(res, 10));
      })(),
      3000,
      "server forgot the closed connections",
    );
    assert.ok((codes.get(CloseCode.badMessage) ?? 0) > 100, JSON.stringify([...codes]));
  } finally {
    await t.close();
  }
});
