import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Page } from "playwright-core";
import { TestBrowser } from "../helpers/browser.js";
import { TurnServer, freePort } from "../helpers/turn.js";
import { startRtcAgent, type RtcFixture } from "./fixture.js";
import { until } from "../helpers/wait.js";

/**
 * ICE with real parts: a coturn `turnserver` started by the test (REST-style shared secret, and a static
 * user), a real Chromium forced to relay-only, and the agent's UDP port range.
 */

// Browser-side globals, typed just enough for page.evaluate callbacks (the test tsconfig has no DOM lib).
declare const window: { wl: { pc?: { getStats(): Promise<{ forEach(cb: (s: Record<string, unknown>) => void): void }> }; state: string; failure?: string } };

let browser: TestBrowser;
let dir: string;
/**
 * The agent's end of the browser's test link (TestBrowser runs Chromium in a network namespace): the agent,
 * its ICE candidates and coturn all live on it, so no test packet goes to the machine's own LAN address.
 */
let hostIp: string;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "wl-ice-test-"));
  browser = await TestBrowser.launch();
  hostIp = browser.agentHost;
});

after(async () => {
  try {
    await browser?.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

interface PathInfo {
  framesDecoded: number;
  local: { type: string; address: string; port: number } | undefined;
  remote: { type: string; address: string; port: number } | undefined;
  remoteCandidates: { type: string; address: string; port: number }[];
}

/** Runs a TURN test's body; on failure prints the end of coturn's log; closes the agent, then coturn. */
async function withTurnLog(turn: TurnServer, fx: RtcFixture, body: () => Promise<void>): Promise<void> {
  try {
    await body();
  } catch (err) {
    console.log(turn.log.slice(-3000));
    throw err;
  } finally {
    await fx.close();
    await turn.close();
  }
}

/** The selected candidate pair (both ends) and every candidate the agent offered, from the browser's getStats. */
async function pathInfo(page: Page): Promise<PathInfo> {
  return page.evaluate(async () => {
    const out: PathInfo = { framesDecoded: 0, local: undefined, remote: undefined, remoteCandidates: [] };
    const pc = window.wl.pc;
    if (!pc) return out;
    const r = await pc.getStats();
    const byId = new Map<string, Record<string, unknown>>();
    let pairId = "";
    r.forEach((s) => {
      byId.set(String(s.id), s);
      if (s.type === "inbound-rtp" && s.kind === "video") out.framesDecoded = Number(s.framesDecoded ?? 0);
      if (s.type === "transport" && typeof s.selectedCandidatePairId === "string") pairId = s.selectedCandidatePairId;
      if (s.type === "remote-candidate") out.remoteCandidates.push({ type: String(s.candidateType), address: String(s.address), port: Number(s.port) });
    });
    const cand = (id: unknown): PathInfo["local"] => {
      const c = byId.get(String(id));
      return c ? { type: String(c.candidateType), address: String(c.address), port: Number(c.port) } : undefined;
    };
    const pair = byId.get(pairId);
    if (pair) {
      out.local = cand(pair.localCandidateId);
      out.remote = cand(pair.remoteCandidateId);
    }
    return out;
  });
}

async function openPage(f: RtcFixture, extra = ""): Promise<{ page: Page; welcome: Promise<Record<string, unknown>> }> {
  const page = await browser.context.newPage();
  // The welcome message as the page received it (the ICE servers the agent gave this browser).
  const welcome = new Promise<Record<string, unknown>>((resolve) => {
    page.on("websocket", (ws) => ws.on("framereceived", (fr) => {
      const m = JSON.parse(String(fr.payload)) as Record<string, unknown>;
      if (m.type === "welcome") resolve(m);
    }));
  });
  await page.goto(`${f.httpUrl.replace("127.0.0.1", hostIp)}/#token=${await f.token("view")}${extra}`);
  return { page, welcome };
}

test("TURN relay: a relay-only Chromium streams through a coturn started here, with REST credentials from the agent", async () => {
  const secret = "wl-test-" + Math.random().toString(36).slice(2);
  const secretFile = join(dir, "turn-secret");
  writeFileSync(secretFile, secret + "\n", { mode: 0o600 });
  const turn = await TurnServer.start({ ip: hostIp, secret, relayPorts: [50_100, 50_199] });
  const fx = await startRtcAgent({ server: { host: hostIp }, rtc: { ice_host_addresses: [hostIp], turn_servers: [turn.url], turn_secret_file: secretFile, turn_credential_ttl_s: 600 } });
  await withTurnLog(turn, fx, async () => {
    const { page, welcome } = await openPage(fx, "&ice=relay");
    const w = await welcome;
    const servers = w.iceServers as { urls: string; username?: string; credential?: string }[];
    assert.equal(servers.length, 1);
    assert.equal(servers[0]!.urls, turn.url);
    const [expiry, name] = servers[0]!.username!.split(":");
    const now = Date.now() / 1000;
    assert.ok(Number(expiry) > now + 590 && Number(expiry) < now + 610, `expiry ${expiry} is ~600 s from now`);
    assert.equal(name, "test", "the token's subject names the browser's TURN user");
    assert.ok(!servers[0]!.credential!.includes(secret), "the secret itself never reaches the browser");

    const p = await until("frames decoded over the relay", async () => {
      const s = await pathInfo(page);
      return s.framesDecoded > 20 ? s : undefined;
    }, 30_000);
    console.log("# relay path:", JSON.stringify({ local: p.local, remote: p.remote }));
    assert.equal(p.local?.type, "relay", "the browser's side of the selected pair is a relay candidate");
    assert.equal(p.local?.address, hostIp);
    assert.ok(p.local!.port >= 50_100 && p.local!.port <= 50_199, `relay port ${p.local?.port} from coturn's range`);
    // The agent gathered a relay candidate of its own too (its REST credential works).
    assert.ok(p.remoteCandidates.some((c) => c.type === "relay" && c.port >= 50_100 && c.port <= 50_199), `agent candidates: ${JSON.stringify(p.remoteCandidates)}`);
    const f0 = p.framesDecoded;
    await sleep(1500);
    assert.ok((await pathInfo(page)).framesDecoded > f0 + 20, "video keeps flowing through the relay");
    // coturn saw both users: the browser's (subject "test") and the agent's.
    assert.match(turn.log, /user <\d+:test>/);
    assert.match(turn.log, /user <\d+:wl-webrtc-agent>/);
    await page.close();
  });
});

test("TURN with a static user: the agent relays with it, and the password never goes to browsers", async () => {
  const password = "pw-" + Math.random().toString(36).slice(2);
  const pwFile = join(dir, "turn-password");
  writeFileSync(pwFile, password, { mode: 0o600 });
  const turn = await TurnServer.start({ ip: hostIp, user: `agent:${password}`, relayPorts: [50_200, 50_299] });
  const fx = await startRtcAgent({ server: { host: hostIp }, rtc: { ice_host_addresses: [hostIp], turn_servers: [turn.url], turn_username: "agent", turn_password_file: pwFile } });
  await withTurnLog(turn, fx, async () => {
    const { page, welcome } = await openPage(fx);
    assert.deepEqual((await welcome).iceServers, [], "no TURN for the browser without a shared secret (the static password stays on the host)");
    // A page that insists on relays says at once why it cannot have them.
    const { page: relayOnly } = await openPage(fx, "&ice=relay");
    await until("relay-only refusal shown", async () => (await relayOnly.evaluate(() => window.wl.failure)) === "ice");
    assert.match((await relayOnly.locator("#status").textContent()) ?? "", /asks for relayed connections only \(#ice=relay\), but the agent gives browsers no TURN server/);
    await relayOnly.close();
    const p = await until("frames decoded and the agent's relay candidate seen", async () => {
      const s = await pathInfo(page);
      return s.framesDecoded > 10 && s.remoteCandidates.some((c) => c.type === "relay") ? s : undefined;
    }, 30_000);
    const relay = p.remoteCandidates.find((c) => c.type === "relay")!;
    assert.equal(relay.address, hostIp);
    assert.ok(relay.port >= 50_200 && relay.port <= 50_299, `relay port ${relay.port}`);
    assert.match(turn.log, /user <agent>/);
    await page.close();
  });
});

test("UDP port range: every host candidate uses a port in it; the viewer with no port left gets a clear error, the others go on", async () => {
  const [min, max] = [51_300, 51_301];
  const fx = await startRtcAgent({ server: { host: hostIp }, rtc: { ice_host_addresses: [hostIp], udp_port_min: min, udp_port_max: max } });
  const pages: Page[] = [];
  try {
    // Each viewer takes one port per host address (one here: the link's), so viewers join until one
    // is refused (at most one per port, plus the refused one).
    let refused: Page | undefined;
    for (let i = 0; i <= max - min + 1 && !refused; i++) {
      const { page } = await openPage(fx);
      pages.push(page);
      const r = await until(`viewer ${i + 1} streams or is refused`, async () => {
        const s = await page.evaluate(() => ({ state: window.wl.state, failure: window.wl.failure }));
        if (s.failure === "stream") return "refused";
        return (await pathInfo(page)).framesDecoded > 5 ? "streaming" : undefined;
      }, 30_000);
      if (r === "refused") refused = page;
    }
    assert.ok(refused, "a viewer beyond the range was refused");
    const streaming = pages.filter((p) => p !== refused);
    assert.ok(streaming.length >= 1, "at least one viewer fits in two ports");
    const text = await refused.locator("#status").textContent();
    assert.match(text ?? "", /The agent cannot stream: no free UDP port for this viewer in rtc\.udp_port_min\.\.udp_port_max \(51300-51301/);
    assert.equal(fx.agent.rtc!.viewerCount, streaming.length, "the refused viewer holds no peer connection");
    for (const page of streaming) {
      const s = await pathInfo(page);
      const hosts = s.remoteCandidates.filter((c) => c.type === "host");
      assert.ok(hosts.length > 0);
      for (const c of hosts) assert.ok(c.port >= min && c.port <= max, `host candidate ${c.address}:${c.port} in ${min}-${max}`);
      assert.ok(s.remote!.port >= min && s.remote!.port <= max);
    }
    // The others go on.
    const before = await Promise.all(streaming.map(async (p) => (await pathInfo(p)).framesDecoded));
    await sleep(1500);
    const later = await Promise.all(streaming.map(async (p) => (await pathInfo(p)).framesDecoded));
    later.forEach((n, i) => assert.ok(n > before[i]! + 15, `viewer ${i + 1} keeps decoding: ${before[i]} -> ${n}`));
    console.log(`# port range ${min}-${max}: ${streaming.length} viewer(s) streaming, the next refused`);
  } finally {
    for (const p of pages) await p.close();
    await fx.close();
  }
});

test("TURN: werift uses one TURN URL; with a dead first URL the agent picks the next that allocates, and a relay-only viewer streams through it", async () => {
  const secret = "wl-test-" + Math.random().toString(36).slice(2);
  const secretFile = join(dir, "turn-secret-2");
  writeFileSync(secretFile, secret + "\n", { mode: 0o600 });
  const turn = await TurnServer.start({ ip: hostIp, secret, relayPorts: [50_300, 50_399] });
  // Nothing listens there (a port just taken and released): the first URL is dead. Its TCP twice too,
  // so that werift's own UDP -> TCP fallback cannot rescue it.
  const dead = `turn:${hostIp}:${await freePort(hostIp)}?transport=udp`;
  const fx = await startRtcAgent({ server: { host: hostIp }, rtc: { ice_host_addresses: [hostIp], turn_servers: [dead, `turn:${hostIp}:${turn.port}?transport=tcp`, turn.url], turn_secret_file: secretFile, turn_credential_ttl_s: 600 } });
  await withTurnLog(turn, fx, async () => {
    const t0 = performance.now();
    // Relay only: the browser gets all three URLs and finds the working one itself.
    const { page } = await openPage(fx, "&ice=relay");
    const p = await until("frames decoded over a relay and the agent's relay candidate seen", async () => {
      const s = await pathInfo(page);
      return s.framesDecoded > 10 && s.remoteCandidates.some((c) => c.type === "relay") ? s : undefined;
    }, 30_000);
    const firstViewerS = (performance.now() - t0) / 1000;
    assert.equal(p.local?.type, "relay", "the relay-only browser streams through a relay");
    // UDP before TCP: the working UDP URL, listed last, wins over the TCP one listed before it.
    assert.equal(fx.agent.rtc!.turnServerInUse, turn.url);
    const relay = p.remoteCandidates.find((c) => c.type === "relay")!;
    assert.ok(relay.port >= 50_300 && relay.port <= 50_399, `relay port ${relay.port} from the working server`);
    // A second viewer: the choice is kept, nothing is checked again (the dead server costs nothing more).
    const t1 = performance.now();
    const { page: second } = await openPage(fx);
    await until("the second viewer has a relay candidate of the agent", async () => {
      const s = await pathInfo(second);
      return s.framesDecoded > 5 && s.remoteCandidates.some((c) => c.type === "relay" && c.port >= 50_300 && c.port <= 50_399) ? s : undefined;
    }, 30_000);
    const secondViewerS = (performance.now() - t1) / 1000;
    console.log("# dead first TURN URL:", JSON.stringify({ chosen: fx.agent.rtc!.turnServerInUse, firstViewerS: Number(firstViewerS.toFixed(2)), secondViewerS: Number(secondViewerS.toFixed(2)) }));
    assert.match(turn.log, /user <\d+:wl-webrtc-agent>/);
    await page.close();
    await second.close();
  });
});

test("UDP port range: viewers connecting at the same moment get distinct ports, all inside the range, and all stream", async () => {
  // werift binds one socket per host address (one here: the link's); enough ports for every viewer, few to spare.
  const perViewer = 1;
  const viewers = 4;
  const min = 51_400, max = min + viewers * perViewer + 1;
  const fx = await startRtcAgent({ server: { host: hostIp }, rtc: { ice_host_addresses: [hostIp], udp_port_min: min, udp_port_max: max } });
  const pages: Page[] = [];
  try {
    pages.push(...(await Promise.all([...Array(viewers)].map(async () => (await openPage(fx)).page))));
    const infos = await Promise.all(pages.map((page, i) => until(`viewer ${i + 1} streams`, async () => {
      const s = await pathInfo(page);
      return s.framesDecoded > 5 ? s : undefined;
    }, 40_000)));
    const ports = infos.flatMap((s) => s.remoteCandidates.filter((c) => c.type === "host").map((c) => `${c.address.includes(":") ? "v6" : "v4"}:${c.port}`));
    console.log(`# ${viewers} viewers at once on ${min}-${max} (${perViewer} host addresses each): ${ports.join(" ")}`);
    for (const pt of ports) {
      const port = Number(pt.split(":")[1]);
      assert.ok(port >= min && port <= max, `${pt} in ${min}-${max}`);
    }
    // Per address family a port is one socket's: no two viewers share one.
    assert.equal(new Set(ports).size, ports.length, `distinct ports: ${ports.join(" ")}`);
    assert.equal(fx.agent.rtc!.viewerCount, viewers);
  } finally {
    for (const p of pages) await p.close();
    await fx.close();
  }
});
