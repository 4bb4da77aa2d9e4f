import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import type { Page } from "playwright-core";
import { TestBrowser } from "../helpers/browser.js";
import { VirtualPointer } from "../helpers/vpointer.js";
import { startTestAgent, type TestAgent } from "../helpers/agent.js";
import type { EncodedVideoSource } from "../../agent/encode/types.js";
import { CHANGING_SCREEN, percentile, processFigures, reopenCycle, settleGc, sourceClosed, type ProcessFigures } from "./reopen-cycles.js";

/**
 * Issue 11, item 1: a viewer who comes back after the source linger (capture, encoder and portal
 * session closed) must get the picture, also on a screen where nothing changes. Before the fix only
 * the first cast of the desktop's xdg-desktop-portal-wlr got a frame on a still screen: wlroots keeps
 * screencopy damage per xdpw connection, so every later cast waited for the next change (for ever on
 * an idle desktop), while ICE, DTLS and the page's "Streaming" all looked fine. Real parts throughout:
 * the agent's own headless desktop (sway, xdpw, portal with its restore token, PipeWire), the native
 * capture and encoder, werift, and Chromium showing the web client's video.
 */

declare const window: { wl: { marks: Record<string, number> }; wlDisconnect(): void; wlReconnect(): void };

let t: TestAgent;
let browser: TestBrowser;
let page: Page;

/** Short, so that cycles are quick; the default (5 s) has its own test below. */
const LINGER_MS = 200;
/** The failure this guards against is "never": this only bounds how long a failing run takes. */
const FIRST_FRAME_TIMEOUT_MS = 8000;

before(async () => {
  browser = await TestBrowser.launch();
  const link = browser.agentOverrides();
  t = await startTestAgent({ server: link.server, desktop: { mode: "headless", width: 1920, height: 1080, refresh_hz: 60 }, metrics: { enabled: false }, rtc: { ...link.rtc, source_linger_ms: LINGER_MS } });
  page = await browser.context.newPage();
  const { token } = await t.agent.tokens.mint({ role: "view", ttlS: 3600, subject: "reopen" });
  // The first visit signs in (the token goes to sessionStorage); cycles reconnect from there.
  await page.goto(`${t.httpUrl}/#token=${token}`);
  await page.waitForFunction(() => window.wl.marks.firstFrameShown !== undefined, undefined, { timeout: 15_000 });
  await page.evaluate(() => window.wlDisconnect());
});
after(async () => {
  try {
    await page?.close();
    await browser?.close();
  } finally {
    await t?.close();
  }
});

interface Run {
  firstFrameMs: number[];
  failed: string[];
  sources: Set<EncodedVideoSource | undefined>;
  start: ProcessFigures;
  /** After half the cycles: the allocator's arenas have grown to their working size by then. */
  mid: ProcessFigures;
  end: ProcessFigures;
}

async function cycles(n: number, label: string): Promise<Run> {
  const opts = { agent: t.agent, page, firstFrameTimeoutMs: FIRST_FRAME_TIMEOUT_MS, closeTimeoutMs: LINGER_MS + 10_000 };
  // Warm-up (lazy imports, JIT, first allocations), then the figures this run is compared with.
  await reopenCycle(opts);
  await settleGc();
  const start = processFigures();
  const run: Run = { firstFrameMs: [], failed: [], sources: new Set(), start, mid: start, end: start };
  for (let i = 0; i < n; i++) {
    const r = await reopenCycle(opts);
    run.sources.add(r.source);
    if (r.firstFrameMs === undefined) run.failed.push(`cycle ${i}: ${r.diagnosis ?? ""}`);
    else run.firstFrameMs.push(r.firstFrameMs);
    if (run.failed.length === 3) break; // it is broken: no need to wait for every cycle to time out
    if (i + 1 === n / 2) run.mid = processFigures();
  }
  await settleGc();
  run.end = processFigures();
  const f = run.firstFrameMs;
  console.log(
    `# ${label}: ${n} reopens, ${run.failed.length} without a frame within ${FIRST_FRAME_TIMEOUT_MS} ms; connect -> first frame p50 ${percentile(f, 50)} ms, ` +
      `max ${Math.max(...f)} ms; fds ${start.fds} -> ${run.end.fds}, threads ${start.threads} -> ${run.end.threads}, RSS ${start.rssMb} -> ${run.mid.rssMb} (half way) -> ${run.end.rssMb} MB`,
  );
  return run;
}

function assertRun(run: Run, n: number): void {
  assert.deepEqual(run.failed, [], `reopens that never showed a frame (of ${n})`);
  assert.equal(run.sources.size, n, "every cycle opened a new video source (capture closed in between)");
  assert.ok(!run.sources.has(undefined), "every cycle streamed from a source");
  // Flat: what a cycle opens (portal session and its fd, PipeWire stream and loop thread, encoder
  // thread, peer connection sockets) is released when it closes.
  assert.ok(run.end.fds <= run.start.fds + 2, `fds flat: ${run.start.fds} -> ${run.end.fds}`);
  assert.ok(run.end.threads <= run.start.threads + 1, `threads flat: ${run.start.threads} -> ${run.end.threads}`);
  // RSS: glibc's per-thread arenas (a new encoder and capture thread each cycle) grow to a working size
  // over the first tens of cycles (seen: +45 to +127 MB by half way, then flat; flat to 300 cycles in
  // bench/reopen.ts); a leak keeps growing, so the second half must not.
  assert.ok(run.end.rssMb <= run.mid.rssMb + 25, `RSS flat over the second half: ${run.mid.rssMb} -> ${run.end.rssMb} MB`);
  assert.ok(run.end.rssMb <= run.start.rssMb + 200, `RSS bounded: ${run.start.rssMb} -> ${run.end.rssMb} MB`);
}

test("a still screen: every viewer who comes back after capture closed gets the picture (100 reopens, fds, threads and RSS flat)", async () => {
  const n = 100;
  assertRun(await cycles(n, "still screen"), n);
});

test("a changing screen: every viewer who comes back after capture closed gets the picture (100 reopens, fds, threads and RSS flat)", async () => {
  const term: ChildProcess = await t.agent.desktop!.headless!.spawnClient("foot", CHANGING_SCREEN, { name: "changing" });
  try {
    const n = 100;
    assertRun(await cycles(n, "changing screen"), n);
  } finally {
    term.kill("SIGTERM");
  }
});

test("back within seconds: the first change made after the viewer is back reaches it (the old cast lets go of its frame)", async () => {
  // A pointer device makes sway draw a cursor, so one move is one change of a still screen. Before
  // the fix the previous cast (closed a moment ago) still had a frame pending in wlroots, which took
  // that change; the new cast saw nothing until a second change.
  const vp = await VirtualPointer.start(t.agent.desktop!.headless!.env, 1920, 1080);
  const missed: number[] = [];
  try {
    await vp.move(100, 100);
    const n = 5;
    for (let i = 0; i < n; i++) {
      await sourceClosed(t.agent, LINGER_MS + 10_000);
      await page.evaluate(() => window.wlReconnect());
      await page.waitForFunction(() => window.wl.marks.firstFrameShown !== undefined, undefined, { timeout: FIRST_FRAME_TIMEOUT_MS });
      const stream = (t.agent.rtc!.source as unknown as { capture: { stream: { stats(): { counters: { framesReceived: number } } } } }).capture.stream;
      await new Promise((r) => setTimeout(r, 600)); // past the new cast's first full frames
      const before = stream.stats().counters.framesReceived;
      await vp.move(200 + 100 * i, 300);
      const end = Date.now() + 3000;
      while (stream.stats().counters.framesReceived === before && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
      if (stream.stats().counters.framesReceived === before) missed.push(i);
      await page.evaluate(() => window.wlDisconnect());
    }
    assert.deepEqual(missed, [], `reopens whose first change (one pointer move) never arrived within 3 s, of ${n}`);
  } finally {
    await vp.close();
  }
});

test("the default linger: a viewer back 8 s after leaving (capture closed after 5 s) gets the picture of a still screen", async () => {
  // A second agent with the shipped default: the path a user takes (issue 11: open, close the tab, wait 8 s, open).
  const d = await startTestAgent({ ...browser.agentOverrides(), desktop: { mode: "headless", width: 1280, height: 720, refresh_hz: 60 }, metrics: { enabled: false } });
  const p = await browser.context.newPage();
  try {
    assert.equal(d.config.rtc.source_linger_ms, 5000);
    const { token } = await d.agent.tokens.mint({ role: "view", ttlS: 600, subject: "reopen-default" });
    await p.goto(`${d.httpUrl}/#token=${token}`);
    await p.waitForFunction(() => window.wl.marks.firstFrameShown !== undefined, undefined, { timeout: 15_000 });
    const first = d.agent.rtc!.source;
    await p.close(); // the tab is closed
    const left = Date.now();
    await sourceClosed(d.agent, 10_000);
    const closedAfter = Date.now() - left;
    await new Promise((r) => setTimeout(r, Math.max(0, 8000 - (Date.now() - left))));
    const p2 = await browser.context.newPage();
    try {
      await p2.goto(`${d.httpUrl}/#token=${token}`);
      await p2.waitForFunction(() => window.wl.marks.firstFrameShown !== undefined, undefined, { timeout: FIRST_FRAME_TIMEOUT_MS });
      const m = await p2.evaluate(() => window.wl.marks);
      assert.notEqual(d.agent.rtc!.source, first, "a new source (the old one closed)");
      console.log(`# default linger: the source closed ${closedAfter} ms after the tab; back after 8 s: connect -> first frame ${Math.round(m.firstFrameShown! - m.connect!)} ms`);
      assert.ok(closedAfter >= 4900, `the source lingered for the default 5 s (closed after ${closedAfter} ms)`);
    } finally {
      await p2.close();
    }
  } finally {
    if (!p.isClosed()) await p.close();
    await d.close();
  }
});
