import { test } from "node:test";
import assert from "node:assert/strict";
import { WebSocket } from "ws";
import { startTestAgent } from "../helpers/agent.js";
import { hello, TestClient, withTimeout } from "../helpers/ws-client.js";
import { CloseCode } from "../../agent/signaling/protocol.js";
import { TokenBucket, AddressRateLimiter } from "../../agent/signaling/limits.js";

test("token bucket: burst, then the sustained rate", () => {
  const b = new TokenBucket(10, 5, 0);
  let ok = 0;
  for (let i = 0; i < 20; i++) if (b.take(1, 0)) ok++;
  assert.equal(ok, 5);
  assert.equal(b.take(1, 50), false, "half a token after 50 ms");
  assert.equal(b.take(1, 100), true, "one token after 100 ms at 10/s");
});

test("address limiter memory stays bounded under a flood of distinct addresses", () => {
  const l = new AddressRateLimiter(1, 1, 100);
  for (let i = 0; i < 10_000; i++) l.take(`10.0.${i >> 8}.${i & 255}`, i);
  assert.ok(l.size <= 100, `size ${l.size}`);
});

test("a 1 MiB message closes that connection with 1009; others go on", async () => {
  const t = await startTestAgent();
  try {
    const { token } = await t.agent.tokens.mint({ role: "view", ttlS: 60, subject: "big" });
    const bystander = await hello(t.wsUrl, token);
    assert.ok(bystander.welcome);
    const big = await hello(t.wsUrl, token);
    assert.ok(big.welcome);
    big.client.send(JSON.stringify({ type: "offer", sdp: "x".repeat(1024 * 1024) }));
    const closed = await withTimeout(big.client.closed, 5000, "close after 1 MiB");
    assert.equal(closed.code, 1009);
    bystander.client.send({ type: "ping", id: 1 });
    assert.equal((await bystander.client.next("pong")).id, 1);
    bystander.client.close();
  } finally {
    await t.close();
  }
});

test("10 000 messages per second from one client: it is cut off (4429), a legitimate client still works", async () => {
  const t = await startTestAgent();
  try {
    const { token } = await t.agent.tokens.mint({ role: "view", ttlS: 60, subject: "flood" });
    const flooder = await hello(t.wsUrl, token);
    assert.ok(flooder.welcome);
    const start = Date.now();
    let sent = 0;
    // 10 000 messages in one second, in 10 ms slices.
    await new Promise<void>((resolve) => {
      const iv = setInterval(() => {
        for (let i = 0; i < 100 && flooder.client.ws.readyState === WebSocket.OPEN; i++, sent++) flooder.client.send({ type: "ping", id: sent });
        if (sent >= 10_000 || Date.now() - start > 1500 || flooder.client.ws.readyState !== WebSocket.OPEN) {
          clearInterval(iv);
          resolve();
        }
      }, 10);
    });
    const closed = await withTimeout(flooder.client.closed, 5000, "flooder closed");
    assert.equal(closed.code, CloseCode.rateLimited);
    const pongs = flooder.client.messages.filter((m) => m.type === "pong").length;
    assert.ok(pongs <= t.config.signaling.message_burst + t.config.signaling.messages_per_second * 2, `answered ${pongs} of ${sent}`);
    const legit = await hello(t.wsUrl, token);
    assert.ok(legit.welcome, "a legitimate client connects after the flood");
    legit.client.send({ type: "ping", id: 7 });
    assert.equal((await legit.client.next("pong")).id, 7);
    legit.client.close();
  } finally {
    await t.close();
  }
});

test("500 connection attempts in a burst: the excess is refused with 429, a legitimate client from another address connects during it", async () => {
  const t = await startTestAgent();
  try {
    const { token } = await t.agent.tokens.mint({ role: "control", ttlS: 60, subject: "legit" });
    const results = await Promise.all(
      Array.from({ length: 500 }, () =>
        new Promise<number>((resolve) => {
          const ws = new WebSocket(t.wsUrl);
          ws.on("unexpected-response", (_req, res) => {
            resolve(res.statusCode ?? 0);
            ws.terminate();
          });
          ws.on("open", () => resolve(101));
          ws.on("error", () => resolve(-1));
        }),
      ).concat([
        // A legitimate user from another address (127.0.0.2 reaches the same loopback listener).
        (async () => {
          const c = new TestClient(t.wsUrl, undefined, { localAddress: "127.0.0.2" });
          await c.opened;
          c.send({ type: "hello", v: 1, token });
          const w = await c.next("welcome");
          assert.equal(w.role, "control");
          c.close();
          return 1;
        })(),
      ]),
    );
    const legit = results.pop();
    assert.equal(legit, 1);
    const opened = results.filter((s) => s === 101).length;
    const limited = results.filter((s) => s === 429).length;
    assert.ok(opened <= t.config.signaling.connection_burst_per_address + 5, `opened ${opened}`);
    assert.ok(limited >= 450, `429s: ${limited}`);
    const rejected = (await t.agent.metrics.rejectedConnections.get()).values.find((v) => v.labels.reason === "address-rate")?.value;
    assert.equal(rejected, limited);
    // The ones that did open never said hello: they are all closed by the deadline.
    await withTimeout(
      (async () => {
        while (t.agent.signaling.connectionCount > 0) await new Promise((r) => setTimeout(r, 100));
      })(),
      t.config.signaling.hello_timeout_ms + 4000,
      "silent connections closed",
    );
  } finally {
    await t.close();
  }
});

test("a client that never says hello is closed at the deadline (4408)", async () => {
  const t = await startTestAgent({ signaling: { hello_timeout_ms: 300 } });
  try {
    const c = new TestClient(t.wsUrl);
    await c.opened;
    const start = Date.now();
    const closed = await withTimeout(c.closed, 3000, "hello deadline");
    assert.equal(closed.code, CloseCode.helloTimeout);
    assert.ok(Date.now() - start >= 250);
    assert.equal((c.messages[0] as { type?: string } | undefined)?.type, "error", "told why before the close");
  } finally {
    await t.close();
  }
});

test("a client that stops answering pings is dropped (4410 / terminated)", async () => {
  const t = await startTestAgent({ signaling: { idle_timeout_ms: 1000 } });
  try {
    const { token } = await t.agent.tokens.mint({ role: "view", ttlS: 60, subject: "idle" });
    const r = await hello(t.wsUrl, token);
    assert.ok(r.welcome);
    assert.equal(t.agent.signaling.registry.size, 1);
    // Stop reading: pings are never seen, so never answered.
    (r.client.ws as unknown as { _socket: { pause(): void } })._socket.pause();
    await withTimeout(
      (async () => {
        while (t.agent.signaling.registry.size > 0) await new Promise((res) => setTimeout(res, 50));
      })(),
      4000,
      "idle session dropped",
    );
    const idle = (await t.agent.metrics.rejectedConnections.get()).values.find((v) => v.labels.reason === "idle-timeout")?.value;
    assert.equal(idle, 1);
    r.client.ws.terminate();
  } finally {
    await t.close();
  }
});

test("max sessions: the one over the limit is refused (4503), the others keep working", async () => {
  const t = await startTestAgent({ signaling: { max_sessions: 2 } });
  try {
    const { token } = await t.agent.tokens.mint({ role: "view", ttlS: 60, subject: "many" });
    const a = await hello(t.wsUrl, token);
    const b = await hello(t.wsUrl, token);
    const c = await hello(t.wsUrl, token);
    assert.ok(a.welcome && b.welcome);
    assert.equal(c.closed?.code, CloseCode.serverFull);
    a.client.send({ type: "ping", id: 1 });
    assert.equal((await a.client.next("pong")).id, 1);
    a.client.close();
    await a.client.closed;
    await new Promise((r) => setTimeout(r, 50));
    const d = await hello(t.wsUrl, token);
    assert.ok(d.welcome, "a freed slot can be used again");
    b.client.close();
    d.client.close();
  } finally {
    await t.close();
  }
});

test("origin allow-list: a foreign origin is refused with 403, the agent's own and listed ones pass", async () => {
  const t = await startTestAgent({ server: { allowed_origins: ["https://desk.example.org"] } });
  try {
    const host = new URL(t.httpUrl).host;
    const status = (origin: string) =>
      new Promise<number>((resolve) => {
        const ws = new WebSocket(t.wsUrl, { origin });
        ws.on("unexpected-response", (_q, res) => {
          resolve(res.statusCode ?? 0);
          ws.terminate();
        });
        ws.on("open", () => {
          resolve(101);
          ws.close();
        });
        ws.on("error", () => resolve(-1));
      });
    assert.equal(await status("https://evil.example.com"), 403);
    assert.equal(await status(`http://${host}`), 101);
    assert.equal(await status("https://desk.example.org"), 101);
  } finally {
    await t.close();
  }
});

test("a slow reader cannot make the agent buffer without bound", async () => {
  const t = await startTestAgent({ signaling: { messages_per_second: 100_000, message_burst: 100_000 } });
  try {
    const { token } = await t.agent.tokens.mint({ role: "view", ttlS: 60, subject: "slow" });
    const r = await hello(t.wsUrl, token);
    assert.ok(r.welcome);
    const session = t.agent.signaling.registry.list()[0]!;
    (r.client.ws as unknown as { _socket: { pause(): void } })._socket.pause();
    // The agent pushes ~40 MiB of candidates at a client that does not read.
    const cand = { candidate: `candidate:1 1 udp 1 127.0.0.1 9 typ host ${"x".repeat(900)}`, sdpMid: "0", sdpMLineIndex: 0 };
    let accepted = 0;
    for (let i = 0; i < 40_000; i++) {
      if (!session.send({ type: "candidate", candidate: cand })) break;
      accepted++;
      if (i % 500 === 0) await new Promise((res) => setImmediate(res));
    }
    assert.ok(session.closed, `session still open after ${accepted} messages`);
    assert.ok(accepted < 40_000);
    r.client.ws.terminate();
  } finally {
    await t.close();
  }
});
