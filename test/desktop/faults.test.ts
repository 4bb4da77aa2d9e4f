import { test, before, after, describe } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseConfig } from "../../agent/config/load.js";
import { DesktopCapture } from "../../agent/capture/desktop-capture.js";
import type { Page } from "playwright-core";
import { TestBrowser } from "../helpers/browser.js";
import { startTestAgent, testConfig, type TestAgent } from "../helpers/agent.js";
import { Agent } from "../../agent/agent.js";
import { HeadlessDesktop as Desktop } from "../../agent/desktop/index.js";
import { silentLogger } from "../../agent/log/logger.js";
import { hello } from "../helpers/ws-client.js";
import { RTCPeerConnection, useH264, useSdesMid } from "werift";
import { iceHostOptions } from "../../agent/rtc/peer.js";
import { isAlive, processesWithEnv } from "../../agent/desktop/procs.js";
import type { HeadlessDesktop } from "../../agent/desktop/index.js";

/**
 * Parts of the agent's own headless desktop killed (SIGKILL) while a real Chromium watches through the
 * web client: the viewer hears the real reason at once, /readyz is 503 while the part is down and 200
 * once it is back, the same page (which reconnects by itself) streams again, and nothing leaks. A part
 * that keeps dying ends in a desktop that stays down, and /readyz and every viewer say why.
 */

declare const window: {
  wl: { state: string; pc?: { getStats(): Promise<{ forEach(cb: (s: Record<string, unknown>) => void): void }> } };
  __statusLog: Array<{ t: number; text: string }>;
};
declare const document: { getElementById(id: string): { textContent: string | null } | null };
declare const MutationObserver: new (cb: () => void) => { observe(n: unknown, o: unknown): void };

/** The viewer may wait this long for the reason (the issue: 12 s, and not the reason). */
const REASON_MS = 2000;
/** A new viewer streams within this long of the kill. */
const BACK_MS = 10_000;

let browser: TestBrowser;

before(async () => {
  browser = await TestBrowser.launch();
});
after(async () => {
  await browser?.close();
});

async function until<T>(what: string, fn: () => Promise<T | undefined> | T | undefined, timeoutMs: number, stepMs = 50): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, stepMs));
  }
}

async function framesDecoded(page: Page): Promise<number> {
  return page.evaluate(async () => {
    const pc = window.wl.pc;
    if (!pc) return 0;
    const r = await pc.getStats();
    let n = 0;
    r.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") n = Number(s.framesDecoded ?? 0);
    });
    return n;
  });
}

/** Opens the web client and records every status text it shows (the page's own words to the user). */
async function openViewer(t: TestAgent, subject: string): Promise<Page> {
  const { token } = await t.agent.tokens.mint({ role: "view", ttlS: 600, subject });
  const page = await browser.context.newPage();
  await page.goto(`${t.httpUrl}/#token=${token}`);
  await page.evaluate(() => {
    window.__statusLog = [];
    const el = document.getElementById("status")!;
    const note = (): void => void window.__statusLog.push({ t: Date.now(), text: el.textContent ?? "" });
    note();
    new MutationObserver(note).observe(el, { childList: true, characterData: true, subtree: true });
  });
  return page;
}

async function streaming(page: Page, timeoutMs: number): Promise<void> {
  try {
    await until("a decoded frame", async () => ((await page.evaluate(() => window.wl.state)) === "streaming" && (await framesDecoded(page)) > 0) || undefined, timeoutMs, 100);
  } catch (err) {
    const seen = await page.evaluate(() => ({ state: window.wl.state, log: window.__statusLog }));
    throw new Error(`${(err as Error).message}; page: ${JSON.stringify(seen)}`, { cause: err });
  }
}

/** Polls /readyz every 20 ms until stopped; keeps what it saw. */
function readyzPoller(url: string): { seen: Array<{ status: number; body: string }>; stop: () => Promise<void> } {
  const seen: Array<{ status: number; body: string }> = [];
  let on = true;
  const loop = (async () => {
    while (on) {
      try {
        const r = await fetch(`${url}/readyz`);
        seen.push({ status: r.status, body: await r.text() });
      } catch (err) {
        seen.push({ status: 0, body: String(err) });
      }
      await new Promise((res) => setTimeout(res, 20));
    }
  })();
  return {
    seen,
    stop: async () => {
      on = false;
      await loop;
    },
  };
}

function fdCount(): number {
  return readdirSync("/proc/self/fd").length;
}

/** The animating terminal and its shell loop, and short-lived helpers: not parts of the desktop. */
const NOT_PARTS = new Set(["foot", "sh", "sleep", "date", "swaymsg", "pw-cli"]);

/** Processes of the desktop: its parts and what its bus activated (all carry its runtime dir). */
function desktopProcesses(d: HeadlessDesktop): number[] {
  return processesWithEnv("XDG_RUNTIME_DIR", d.env.XDG_RUNTIME_DIR!).filter((pid) => {
    try {
      return isAlive(pid) && !NOT_PARTS.has(readFileSync(`/proc/${pid}/comm`, "utf8").trim());
    } catch {
      return false;
    }
  });
}

/** Something that changes the screen (a static screen sends no frames): a terminal printing the time. */
async function animate(d: HeadlessDesktop): Promise<{ pid: number; exited: boolean }> {
  const foot = await d.spawnClient("foot", ["sh", "-c", "while :; do date +%T.%N; sleep 0.05; done"], { name: "animate" });
  const state = { pid: foot.pid!, exited: false };
  foot.once("exit", () => (state.exited = true));
  return state;
}

describe("a killed part of the headless desktop comes back; the viewer hears why at once", { timeout: 120_000 }, () => {
  let t: TestAgent;
  let page: Page;
  let term: { pid: number; exited: boolean } | undefined;

  before(async () => {
    t = await startTestAgent({ ...browser.agentOverrides(), desktop: { mode: "headless", width: 1280, height: 720, refresh_hz: 30 }, metrics: { enabled: true } });
    term = await animate(t.agent.desktop!.headless!);
    page = await openViewer(t, "faults");
    await streaming(page, 20_000);
  });
  after(async () => {
    await page?.close();
    await t?.close();
  });

  for (const victim of ["pipewire", "xdpw", "sway"] as const) {
    test(`${victim} killed with SIGKILL while a viewer watches`, async () => {
      const d = t.agent.desktop!.headless!;
      const metrics = t.agent.metricsServer!.url;
      // sway takes its clients with it.
      if (term?.exited) term = await animate(d);
      await streaming(page, BACK_MS);
      assert.equal((await fetch(`${metrics}/readyz`)).status, 200);
      const procsBefore = desktopProcesses(d).length;
      const fdsBefore = fdCount();
      const reconnectsBefore = await page.evaluate(() => (window.wl as unknown as { reconnects: number }).reconnects);
      const oldPid = d.pids.get(victim)!;
      const poll = readyzPoller(metrics);
      const killedAt = Date.now();
      process.kill(oldPid, "SIGKILL");

      // The viewer is told, in words that name the part, well before any ICE timeout.
      const why = await until(
        "the viewer's page to show why",
        async () => (await page.evaluate(() => window.__statusLog)).find((s) => s.t >= killedAt && new RegExp(`${victim} exited`).test(s.text)),
        REASON_MS + 3000,
      ).catch(async (err: Error) => {
        await poll.stop();
        throw new Error(`${err.message}; the page showed ${JSON.stringify((await page.evaluate(() => window.__statusLog)).filter((s) => s.t >= killedAt))}`, { cause: err });
      });
      const reasonMs = why.t - killedAt;
      // The same page reconnects by itself (the web client's backoff): a new viewer session, a new peer.
      await until("the page to reconnect", async () => ((await page.evaluate(() => (window.wl as unknown as { reconnects: number }).reconnects)) > reconnectsBefore) || undefined, BACK_MS);
      // sway took the terminal with it: a new one, as a user would start it again.
      if (term?.exited) term = await animate(d);
      await streaming(page, BACK_MS - (Date.now() - killedAt));
      const backMs = Date.now() - killedAt;
      await until("/readyz 200", () => (poll.seen.at(-1)?.status === 200 ? true : undefined), 5000);
      await poll.stop();

      const notReady = poll.seen.filter((s) => s.status === 503);
      console.log(`# ${victim}: reason shown after ${reasonMs} ms ("${why.text}"); streaming again after ${backMs} ms; /readyz 503 x${notReady.length}: ${notReady[0]?.body.trim()}`);
      assert.ok(reasonMs <= REASON_MS, `the viewer heard why after ${reasonMs} ms (at most ${REASON_MS})`);
      assert.ok(backMs <= BACK_MS, `streaming again after ${backMs} ms (at most ${BACK_MS})`);
      assert.ok(notReady.length > 0, "/readyz answered 503 while the part was down");
      assert.match(notReady[0]!.body, new RegExp(`desktop: .*${victim} exited`), "/readyz names the dead part");
      assert.equal(poll.seen.at(-1)!.status, 200);

      // A new part, the old one gone, as many desktop processes as before; the agent's fds flat.
      assert.notEqual(d.pids.get(victim), oldPid);
      assert.equal(isAlive(oldPid), false);
      for (const [part, pid] of d.pids) assert.ok(isAlive(pid), `${part} (${pid}) runs`);
      await until("the desktop's process count to settle", () => (desktopProcesses(d).length === procsBefore ? true : undefined), 5000).catch(() => undefined);
      assert.equal(desktopProcesses(d).length, procsBefore, `desktop processes: ${procsBefore} before, ${desktopProcesses(d).join(",")} after`);
      const fdsAfter = fdCount();
      console.log(`# ${victim}: agent fds ${fdsBefore} before, ${fdsAfter} after; desktop processes ${procsBefore}`);
      assert.ok(fdsAfter <= fdsBefore + 2, `agent fds ${fdsBefore} -> ${fdsAfter}`);
    });
  }
});

test("a part that keeps dying: the desktop gives up, /readyz and every viewer say why", { timeout: 120_000 }, async () => {
  const t = await startTestAgent({
    ...browser.agentOverrides(),
    desktop: { mode: "headless", width: 1280, height: 720, refresh_hz: 30, restart_limit: 2, restart_window_s: 600 },
    metrics: { enabled: true },
  });
  let page: Page | undefined;
  try {
    const d = t.agent.desktop!.headless!;
    const metrics = t.agent.metricsServer!.url;
    await animate(d);
    page = await openViewer(t, "crash-loop");
    await streaming(page, 20_000);
    // Two deaths are restarted (the budget); the third gives up.
    for (let i = 1; i <= 3; i++) {
      await d.whenRunning(15_000);
      const pid = d.pids.get("sway")!;
      process.kill(pid, "SIGKILL");
      await until(`sway ${pid} gone`, () => (isAlive(pid) ? undefined : true), 5000);
      await until("the desktop to notice", () => (d.status.state !== "running" ? true : undefined), 5000, 10);
    }
    const killedAt = Date.now();
    await until("the desktop to give up", () => (d.status.state === "failed" ? true : undefined), 15_000);
    const r = await fetch(`${metrics}/readyz`);
    const body = await r.text();
    console.log(`# crash loop: gave up ${Date.now() - killedAt} ms after the 3rd death; /readyz ${r.status}: ${body.trim()}`);
    assert.equal(r.status, 503);
    assert.match(body, /desktop: the headless desktop is down: sway exited \(killed by SIGKILL\).*gave up restarting it/);
    // Nothing of the desktop runs any more: no part is restarted in a loop.
    await until("every desktop process to end", () => (desktopProcesses(d).length === 0 ? true : undefined), 5000).catch(() => undefined);
    assert.deepEqual(desktopProcesses(d), []);
    await new Promise((res) => setTimeout(res, 1500));
    assert.equal(d.status.state, "failed", "it stays down");
    assert.deepEqual(desktopProcesses(d), [], "nothing restarted later");

    // The page was told (and its reconnects are told again, at once).
    await until("the page to show the give-up", async () => (await page!.evaluate(() => window.__statusLog)).find((s) => /gave up restarting/.test(s.text)), 10_000);
    // A new viewer (a plain signaling client) asks for video and hears why at once.
    const { token } = await t.agent.tokens.mint({ role: "view", ttlS: 60, subject: "late" });
    const { client } = await hello(t.wsUrl, token);
    // A well-formed offer (a malformed one is refused as such first); made, never applied: no packet.
    const pc = new RTCPeerConnection({ iceServers: [], codecs: { video: [useH264()], audio: [] }, headerExtensions: { video: [useSdesMid()], audio: [] }, ...iceHostOptions(["127.0.0.1"]) });
    pc.addTransceiver("video", { direction: "recvonly" });
    const offer = await pc.createOffer();
    await pc.close();
    const t0 = Date.now();
    client.send({ type: "offer", sdp: offer.sdp, id: 1 });
    const err = await client.next("error", 5000);
    const ms = Date.now() - t0;
    client.close();
    console.log(`# crash loop: a new viewer's offer answered in ${ms} ms: ${String(err.message)}`);
    assert.equal(err.code, "unavailable");
    assert.match(String(err.message), /gave up restarting/);
    assert.ok(ms < 1000, `answered in ${ms} ms`);
  } finally {
    await page?.close();
    await t.close();
  }
});

test("the user's session (not ours to restart): its PipeWire killed, the viewer and /readyz say why at once", { timeout: 120_000 }, async () => {
  // A desktop the agent does not own, found the way a user's session is: through the environment.
  const session = await Desktop.start({ width: 1280, height: 720, refreshHz: 30 });
  const { config, cleanup } = testConfig({ ...browser.agentOverrides(), desktop: { mode: "session" }, metrics: { enabled: true } });
  let agent: Agent | undefined;
  let page: Page | undefined;
  try {
    await animate(session);
    agent = await Agent.start({ config, log: silentLogger(), env: { ...session.env } });
    assert.equal(agent.desktop?.kind, "session");
    const t: TestAgent = { agent, config, httpUrl: agent.signaling.url, wsUrl: `${agent.signaling.url.replace(/^http/, "ws")}/signal`, close: async () => undefined };
    const metrics = agent.metricsServer!.url;
    page = await openViewer(t, "session");
    await streaming(page, 20_000);
    assert.equal((await fetch(`${metrics}/readyz`)).status, 200);
    const killedAt = Date.now();
    process.kill(session.pids.get("pipewire")!, "SIGKILL");
    const why = await until(
      "the viewer's page to show why",
      async () => (await page!.evaluate(() => window.__statusLog)).find((s) => s.t >= killedAt && /video stopped: .*PipeWire/.test(s.text)),
      REASON_MS + 3000,
    );
    const r = await fetch(`${metrics}/readyz`);
    const body = await r.text();
    console.log(`# session: reason shown after ${why.t - killedAt} ms ("${why.text}"); /readyz ${r.status}: ${body.trim()}`);
    assert.ok(why.t - killedAt <= REASON_MS, `the viewer heard why after ${why.t - killedAt} ms`);
    assert.equal(r.status, 503);
    assert.match(body, /video: screen capture ended \(pipewire\).*the agent does not restart/);
  } finally {
    await page?.close();
    await agent?.close();
    await session.close();
    cleanup();
  }
});

describe("HeadlessDesktop with a restart policy", { timeout: 120_000 }, () => {
  let d: Desktop;
  let term: { pid: number; exited: boolean } | undefined;
  let stateDir: string;
  const capture = parseConfig({}, "(test)").capture;
  const DEPENDS: Record<string, string[]> = { dbus: ["pipewire", "wireplumber", "sway", "xdpw", "portal"], pipewire: ["wireplumber", "xdpw"], sway: ["xdpw"], wireplumber: [], xdpw: [], portal: [] };

  before(async () => {
    stateDir = mkdtempSync(join(tmpdir(), "wl-faults-state-"));
    d = await Desktop.start({ width: 640, height: 480, refreshHz: 30, restart: { maxRestarts: 10, windowMs: 60_000, backoffMs: 0 } }); // no backoff: the figures are the restarts themselves
  });
  after(async () => {
    await d?.close();
    if (stateDir) rmSync(stateDir, { recursive: true, force: true });
  });

  /** A portal screen cast on the desktop as it is now delivers frames. */
  async function castDelivers(): Promise<number> {
    const c = await DesktopCapture.open({ capture, stateDir, busAddress: d.env.DBUS_SESSION_BUS_ADDRESS, log: silentLogger() });
    try {
      let frames = 0;
      c.on("frame", () => frames++);
      return await until("a captured frame", () => (frames > 0 ? frames : undefined), 10_000);
    } finally {
      await c.close();
    }
  }

  // Known bug, not covered here: WirePlumber killed right after xdpw's very first cast leaves the next
  // cast linked and "streaming" with buffers PipeWire cannot use (its log: "invalid memory type 4"), no
  // frame ever, in about 1 of 7 tries (scripts/repro on branch s5-wp; issue 11's note). The portal's
  // case runs first, so WirePlumber dies after xdpw's second cast, as in every later restart.
  for (const victim of ["portal", "wireplumber", "dbus", "pipewire", "xdpw", "sway"]) {
    test(`${victim} killed: it and what depends on it restart, the rest keeps running, a new cast streams`, async () => {
      if (!term || term.exited) term = await animate(d);
      await castDelivers();
      const before = new Map(d.pids);
      const procs = desktopProcesses(d).length;
      const states: string[] = [];
      const onState = (s: { state: string }): void => void states.push(s.state);
      d.on("state", onState);
      const t0 = Date.now();
      process.kill(before.get(victim)!, "SIGKILL");
      await until("the restart to begin", () => (d.status.state !== "running" ? true : undefined), 3000, 10);
      assert.match(d.status.reason, new RegExp(`${victim} exited \\(killed by SIGKILL\\)`));
      await d.whenRunning(15_000);
      const ms = Date.now() - t0;
      d.off("state", onState);
      assert.deepEqual(states, ["restarting", "running"]);
      for (const [part, pid] of before) {
        const restarted = part === victim || DEPENDS[victim]!.includes(part);
        if (restarted) {
          assert.notEqual(d.pids.get(part), pid, `${part} was restarted`);
          assert.equal(isAlive(pid), false, `the old ${part} (${pid}) is gone`);
        } else assert.equal(d.pids.get(part), pid, `${part} kept running`);
        assert.ok(isAlive(d.pids.get(part)!), `${part} runs`);
      }
      if (term.exited) term = await animate(d);
      const frames = await castDelivers();
      await until("the desktop's process count to settle", () => (desktopProcesses(d).length === procs ? true : undefined), 5000).catch(() => undefined);
      console.log(`# restart policy: ${victim} back in ${ms} ms (${frames} frame(s) in a new cast); processes ${procs} -> ${desktopProcesses(d).length}`);
      assert.equal(desktopProcesses(d).length, procs, "as many desktop processes as before");
    });
  }

  test("close() during a restart stops everything and removes the runtime dir", async () => {
    const run = d.env.XDG_RUNTIME_DIR!;
    process.kill(d.pids.get("sway")!, "SIGKILL");
    await until("the restart to begin", () => (d.status.state === "restarting" ? true : undefined), 3000, 10);
    await d.close();
    assert.equal(d.status.state, "closed");
    assert.deepEqual(processesWithEnv("XDG_RUNTIME_DIR", run).filter(isAlive), []);
    assert.equal(existsSync(d.rootDir), false);
  });
});
