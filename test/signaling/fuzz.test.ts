import { test } from "node:test";
import assert from "node:assert/strict";
import { startTestAgent } from "../helpers/agent.js";
import { hello, withTimeout } from "../helpers/ws-client.js";
import { CloseCode } from "../../agent/signaling/protocol.js";
import { Rng, addressesIn, mutate, rawMutation, staysOnLoopback, validMessages } from "../helpers/fuzz.js";

/**
 * At least 10 000 random and mutated signaling messages against a live server. Every bad message
 * must be answered with an error, valid ones with their reply; the server never crashes and no
 * promise rejection goes unhandled.
 */
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
    const addresses = new Set<string>();
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
        // Traffic stays home: a mutation that names an address off loopback (or an mDNS name) is not sent.
        if (!staysOnLoopback(text)) text = JSON.stringify(base);
        for (const a of addressesIn(text)) addresses.add(a);
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
    assert.ok(addresses.has("127.0.0.1"), "candidates were sent");
    for (const a of addresses) assert.match(a, /^127\./, `the fuzzer named ${a}`);
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
      let text = rng.nextInt(0, 1) === 0 ? JSON.stringify(mutate(rng, base)) : rawMutation(rng, JSON.stringify(base));
      if (!staysOnLoopback(text)) text = JSON.stringify(base);
      assert.ok(staysOnLoopback(text));
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

test("the fuzzers' address guard: only 127.0.0.0/8 literals pass", () => {
  assert.ok(staysOnLoopback(JSON.stringify(validMessages[3])));
  for (const bad of ["candidate:1 1 udp 1 192.0.2.1 5 typ host", "candidate:1 1 udp 1 107.0.0.1 5 typ host", "x 27.0.0.1 y", "a 127.0.0.1 b 10.0.0.1", "fe80::1 here", "::1", "abc.local", "127.0.0.256"])
    assert.equal(staysOnLoopback(bad), false, bad);
  // Raw mutations of the loopback candidate do produce other addresses: the guard is what stops them.
  const rng = new Rng(1);
  let caught = 0;
  for (let i = 0; i < 20_000; i++) if (!staysOnLoopback(rawMutation(rng, JSON.stringify(validMessages[3])))) caught++;
  assert.ok(caught > 0, "some mutations named another address");
});
