import { test } from "node:test";
import assert from "node:assert/strict";
import { request } from "node:http";
import { randomBytes } from "node:crypto";
import { WebSocket } from "ws";
import { startTestAgent } from "../helpers/agent.js";
import { hello, TestClient, withTimeout, type Closed } from "../helpers/ws-client.js";
import { CloseCode } from "../../agent/signaling/protocol.js";
import { addressGroup } from "../../agent/signaling/admission.js";
import { HostCheck } from "../../agent/signaling/host-check.js";

/**
 * Who gets in: connections that have not said hello have a budget of their own (signaling.max_pending,
 * signaling.max_pending_per_address) that cannot take the room of authenticated sessions, and the Host
 * header must name this agent (DNS rebinding). Every socket goes to 127.0.0.1; other loopback source
 * addresses (127.0.0.x) stand for other hosts, and a Host header is only a header (no DNS).
 */

interface Silent {
  status: Promise<number>;
  closed: Promise<Closed | undefined>;
  ws: WebSocket;
}

/** A WebSocket that connects from `localAddress` and never says anything. */
function silent(url: string, localAddress: string): Silent {
  const ws = new WebSocket(url, { localAddress });
  ws.on("error", () => undefined);
  const status = new Promise<number>((resolve) => {
    ws.once("open", () => resolve(101));
    ws.once("unexpected-response", (_req, res) => {
      resolve(res.statusCode ?? 0);
      ws.terminate();
    });
    ws.once("error", () => resolve(-1));
  });
  const closed = new Promise<Closed | undefined>((resolve) => ws.once("close", (code, reason) => resolve({ code, reason: reason.toString() })));
  return { status, closed, ws };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test("a flood of silent WebSockets from six loopback addresses: the owner connects 16 of 16 times, sessions keep their room", async (tc) => {
  const t = await startTestAgent();
  const sig = t.config.signaling;
  const flood: Silent[] = [];
  let stop = false;
  try {
    const { token } = await t.agent.tokens.mint({ role: "control", ttlS: 120, subject: "owner" });
    // Sessions opened before the flood keep working through it.
    const held = await Promise.all(Array.from({ length: 4 }, () => hello(t.wsUrl, token)));
    for (const h of held) assert.ok(h.welcome, "a session before the flood");

    let maxOpen = 0;
    let maxPending = 0;
    const sampler = setInterval(() => {
      maxOpen = Math.max(maxOpen, t.agent.signaling.connectionCount);
      maxPending = Math.max(maxPending, t.agent.signaling.pendingCount);
    }, 20);
    // 20 upgrades a second from 127.0.0.2..7 (3.3 a second each: under the per-address burst for 15 s),
    // never a hello: before the admission budget this filled the 64 open WebSockets within ~3 s (the
    // owner then got 503 on 6 of 16 tries here).
    const flooding = (async () => {
      for (let i = 0; !stop && i < 400; i++) {
        flood.push(silent(t.wsUrl, `127.0.0.${2 + (i % 6)}`));
        await sleep(50);
      }
    })();
    await sleep(3500);
    const results: string[] = [];
    for (let i = 0; i < 16; i++) {
      const c = new TestClient(t.wsUrl, undefined, { localAddress: "127.0.0.1" });
      try {
        await c.opened;
        c.send({ type: "hello", v: 1, token });
        const w = await Promise.race([c.next("welcome"), c.closed.then((cl) => ({ type: `closed ${cl.code} ${cl.reason}` }))]);
        results.push(String(w.type));
      } catch (err) {
        results.push((err as Error).message);
      }
      c.close();
      await sleep(300);
    }
    stop = true;
    await flooding;
    clearInterval(sampler);
    assert.deepEqual(results, Array(16).fill("welcome"), `the owner's 16 tries during the flood: ${results.join(", ")}`);

    for (const [i, h] of held.entries()) {
      h.client.send({ type: "ping", id: i });
      assert.equal((await h.client.next("pong")).id, i, "a session held through the flood still answers");
    }
    const opened = (await Promise.all(flood.map((f) => f.status))).filter((s) => s === 101).length;
    assert.ok(opened >= 100, `the flood was real: ${opened} of ${flood.length} silent WebSockets opened`);
    // Never more waiting for hello than the pending budget; in all, the sessions plus that budget plus the
    // few displaced ones still in their close handshake (before the budget: 64 from ~3 s on).
    assert.ok(maxPending <= sig.max_pending, `pending WebSockets peaked at ${maxPending}`);
    assert.ok(maxOpen <= held.length + sig.max_pending + 4, `open WebSockets peaked at ${maxOpen}`);
    const rejected = await t.agent.metrics.rejectedConnections.get();
    const evicted = rejected.values.find((v) => v.labels.reason === "pending-evicted")?.value ?? 0;
    assert.ok(evicted > 0, "silent connections were evicted to make room");
    tc.diagnostic(`flood: ${flood.length} upgrades, ${opened} opened, ${evicted} displaced; peak ${maxPending} pending, ${maxOpen} open`);
    for (const h of held) h.client.close();
  } finally {
    stop = true;
    for (const f of flood) f.ws.terminate();
    await t.close();
  }
});

test("per-address share: the 5th silent WebSocket from one address drops that address's oldest, with a reason", async () => {
  const t = await startTestAgent({ signaling: { max_pending: 8, max_pending_per_address: 4 } });
  const socks: Silent[] = [];
  try {
    for (let i = 0; i < 6; i++) {
      const s = silent(t.wsUrl, "127.0.0.9");
      socks.push(s);
      assert.equal(await s.status, 101);
    }
    const first = await withTimeout(socks[0]!.closed, 2000, "oldest dropped");
    assert.equal(first?.code, CloseCode.helloTimeout);
    assert.equal(first?.reason, "hello timeout: too many connections waiting for hello");
    assert.equal((await withTimeout(socks[1]!.closed, 2000, "second oldest dropped"))?.code, CloseCode.helloTimeout);
    await sleep(100);
    assert.deepEqual(socks.map((s) => s.ws.readyState === WebSocket.OPEN), [false, false, true, true, true, true]);
    // Another address is not affected by this one's share.
    const other = silent(t.wsUrl, "127.0.0.10");
    assert.equal(await other.status, 101);
    socks.push(other);
    await sleep(100);
    assert.equal(t.agent.signaling.connectionCount, 5);
  } finally {
    for (const s of socks) s.ws.terminate();
    await t.close();
  }
});

test("the pending budget is shared fairly: a newcomer displaces the address holding the most, never a lone one", async () => {
  const t = await startTestAgent({ signaling: { max_pending: 6, max_pending_per_address: 4 } });
  const socks: Silent[] = [];
  const open = async (addr: string): Promise<Silent> => {
    const s = silent(t.wsUrl, addr);
    socks.push(s);
    assert.equal(await s.status, 101, `upgrade from ${addr}`);
    return s;
  };
  try {
    const hog = [await open("127.0.0.20"), await open("127.0.0.20"), await open("127.0.0.20"), await open("127.0.0.20")];
    const lone = await open("127.0.0.21");
    await open("127.0.0.22");
    // Full (6). The next one displaces the hog's oldest, not the lone connections.
    await open("127.0.0.23");
    assert.equal((await withTimeout(hog[0]!.closed, 2000, "hog's oldest evicted"))?.code, CloseCode.helloTimeout);
    await sleep(100);
    assert.equal(lone.ws.readyState, WebSocket.OPEN, "a lone pending connection is not evicted while others hold more");
    assert.equal(t.agent.signaling.connectionCount, 6);
  } finally {
    for (const s of socks) s.ws.terminate();
    await t.close();
  }
});

test("address groups: IPv4 as is (mapped IPv6 unwrapped), IPv6 by /64, each loopback address its own", () => {
  assert.equal(addressGroup("::ffff:127.0.0.2"), "127.0.0.2");
  assert.notEqual(addressGroup("127.0.0.2"), addressGroup("127.0.0.3"));
  assert.equal(addressGroup("2001:db8:1:2:3:4:5:6"), addressGroup("2001:db8:1:2::9"));
  assert.equal(addressGroup("2001:0db8:0001:0002::1"), addressGroup("2001:db8:1:2:ffff::"));
  assert.notEqual(addressGroup("2001:db8:1:2::1"), addressGroup("2001:db8:1:3::1"));
  assert.equal(addressGroup("::1"), "0:0:0:0::/64");
});

test("Host check: names and literals", () => {
  const h = new HostCheck(["desk.example.org"], "127.0.0.1");
  for (const ok of ["127.0.0.1:8780", "10.1.2.3", "[::1]:8780", "[2001:db8::1]", "localhost", "localhost.:8780", "LocalHost:1", "desk.example.org:443", "DESK.example.org"])
    assert.equal(h.refusal(ok), undefined, ok);
  for (const bad of [undefined, "", "evil.example", "localhost.evil.example:8780", "desk.example.org.evil", "[::1", "[::1]x", "a:b:c"])
    assert.match(h.refusal(bad) ?? "", /^host: /, String(bad));
  assert.equal(new HostCheck(["*"], "127.0.0.1").refusal("evil.example"), undefined);
  assert.equal(new HostCheck([], "desk.lan").refusal("desk.lan:8780"), undefined, "the configured host name");
});

test("config: max_pending and max_pending_per_address are validated", async () => {
  const { parseConfig } = await import("../../agent/config/load.js");
  assert.throws(() => parseConfig({ signaling: { max_pending: 0 } }, "(t)"), /signaling\.max_pending/);
  assert.throws(() => parseConfig({ signaling: { max_pending: 4, max_pending_per_address: 5 } }, "(t)"), /signaling\.max_pending_per_address/);
  const c = parseConfig({}, "(t)");
  assert.equal(c.signaling.max_pending, 16);
  assert.equal(c.signaling.max_pending_per_address, 4);
});

// ---- DNS rebinding: the Host header must name this agent ----

/** One HTTP request to 127.0.0.1:port with the given Host (and other) headers: the status, and the body. */
function get(port: number, path: string, headers: Record<string, string>): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path, headers, agent: false }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

/** A WebSocket upgrade to 127.0.0.1:port/signal with the given Host and Origin: 101, or the refusal's status and body. */
function upgrade(port: number, host: string, origin?: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({
      host: "127.0.0.1",
      port,
      path: "/signal",
      agent: false,
      headers: {
        host,
        connection: "Upgrade",
        upgrade: "websocket",
        "sec-websocket-version": "13",
        "sec-websocket-key": randomBytes(16).toString("base64"),
        ...(origin !== undefined ? { origin } : {}),
      },
    });
    req.on("upgrade", (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode ?? 0, body: "" });
    });
    req.on("response", (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

test("DNS rebinding: the page and the WebSocket are refused for a foreign Host, served for the agent's own names", async () => {
  const t = await startTestAgent({ server: { allowed_hosts: ["desk.example.org"] } });
  try {
    const port = t.agent.signaling.address.port;
    // The attacker's page, its name now resolving to 127.0.0.1: Host and Origin are both its own.
    const page = await get(port, "/", { host: `evil.example:${port}` });
    assert.equal(page.status, 421, "page for a foreign Host");
    assert.match(page.body, /evil\.example.*server\.allowed_hosts/);
    assert.equal((await get(port, "/app.js", { host: `evil.example:${port}` })).status, 421, "static file for a foreign Host");
    const ws = await upgrade(port, `evil.example:${port}`, `http://evil.example:${port}`);
    assert.equal(ws.status, 421, "upgrade for a foreign Host");
    assert.match(ws.body, /host/);
    // Names that merely contain a loopback name are foreign too.
    assert.equal((await get(port, "/", { host: `localhost.evil.example:${port}` })).status, 421);
    assert.equal((await get(port, "/", { host: `127.0.0.1.evil.example:${port}` })).status, 421);

    for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, `LOCALHOST:${port}`, `[::1]:${port}`, `desk.example.org:${port}`, `desk.example.org`]) {
      assert.equal((await get(port, "/", { host })).status, 200, `page for Host ${host}`);
      const origin = `http://${host}`;
      assert.equal((await upgrade(port, host, origin)).status, 101, `upgrade for Host ${host}`);
    }
    // The Origin check still holds with an allowed Host.
    assert.equal((await upgrade(port, `127.0.0.1:${port}`, `http://evil.example:${port}`)).status, 403);
    const refused = (await t.agent.metrics.rejectedConnections.get()).values.find((v) => v.labels.reason === "host")?.value;
    assert.ok((refused ?? 0) >= 5, `host refusals counted: ${refused}`);
  } finally {
    await t.close();
  }
});

test("DNS rebinding: the metrics listener refuses a foreign Host too", async () => {
  const t = await startTestAgent({ metrics: { enabled: true } });
  try {
    const port = t.agent.metricsServer!.address.port;
    assert.equal((await get(port, "/metrics", { host: `evil.example:${port}` })).status, 421);
    assert.equal((await get(port, "/readyz", { host: `evil.example:${port}` })).status, 421);
    assert.equal((await get(port, "/metrics", { host: `127.0.0.1:${port}` })).status, 200);
    assert.equal((await get(port, "/healthz", { host: `localhost:${port}` })).status, 200);
  } finally {
    await t.close();
  }
});

test("config: server.allowed_hosts is validated", async () => {
  const { parseConfig } = await import("../../agent/config/load.js");
  assert.throws(() => parseConfig({ server: { allowed_hosts: ["http://desk.example.org"] } }, "(t)"), /server\.allowed_hosts/);
  assert.throws(() => parseConfig({ server: { allowed_hosts: ["desk example"] } }, "(t)"), /server\.allowed_hosts/);
  assert.deepEqual(parseConfig({ server: { allowed_hosts: ["desk.example.org", "*"] } }, "(t)").server.allowed_hosts, ["desk.example.org", "*"]);
});
