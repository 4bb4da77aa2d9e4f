import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import type { Page } from "playwright-core";
import { TestBrowser } from "../helpers/browser.js";
import { TRIM_DELAY_MS } from "../../agent/rtc/trim.js";
import { startTestAgent, type TestAgent } from "../helpers/agent.js";
import { framesDecoded, openSourcePage, RECEIVER_SCRIPT, type SourcePage } from "../../bench/pages/harness.js";

/**
 * The whole pipeline on real parts: a Chromium page (bench/pages/counter.html) on the agent's headless
 * 1080p60 desktop, xdpw + PipeWire capture, the native x264 encoder, werift, and a headless Chromium
 * running the web client that reads pixels of the decoded frames (VideoFrame.copyTo of small rects).
 */
let t: TestAgent;
let browser: TestBrowser;
let src: SourcePage;

before(async () => {
  browser = await TestBrowser.launch();
  t = await startTestAgent({
    ...browser.agentOverrides(),
    desktop: { mode: "headless", width: 1920, height: 1080, refresh_hz: 60 },
    encode: { backends: ["x264"] },
    metrics: { enabled: false },
  });
  src = await openSourcePage(t.agent.desktop!.headless!, "?box=0");
});
after(async () => {
  try {
    await browser?.close();
    await src?.close();
  } finally {
    await t?.close();
  }
});

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 15_000, everyMs = 100): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(everyMs);
  }
}

async function viewer(): Promise<Page> {
  const { token } = await t.agent.tokens.mint({ role: "view", ttlS: 600, subject: "pipeline" });
  const page = await browser.context.newPage();
  await page.goto(`${t.httpUrl}/#token=${token}`);
  await until("the first decoded frame", async () => (await framesDecoded(page)) > 0, 20_000);
  return page;
}

test("a change drawn on the remote screen appears in the decoded video within 200 ms", async () => {
  const page = await viewer();
  try {
    assert.ok(await page.evaluate(RECEIVER_SCRIPT), "the web client shows a <video> with requestVideoFrameCallback");
    await page.evaluate("window.wlBench.watchMark = true");
    // The reader decodes the counter pattern: the decoded frames really are the desktop's pixels.
    await until("a readable counter in the decoded video", async () => page.evaluate("window.wlBench.records.some((r) => r[0] >= 0)") as Promise<boolean>, 10_000);
    const delays: number[] = [];
    for (let i = 0; i < 5; i++) {
      await src.page.evaluate("window.setMark(false)");
      await until("the mark cleared in the decoded video", async () => page.evaluate("window.wlBench.markLuma < 64") as Promise<boolean>, 5000, 20);
      await sleep(300);
      await page.evaluate("window.wlBench.markSeenAt = 0; window.wlBench.markSeenDecodedAt = 0");
      // Wall-clock time in the source page when the change was asked for; the next rAF paints it.
      const drawnAt = (await src.page.evaluate("window.setMark(true), performance.timeOrigin + performance.now()")) as number;
      const seenAt = await until("the mark in the decoded video", async () => {
        const v = (await page.evaluate("window.wlBench.markSeenDecodedAt")) as number;
        return v > 0 ? v : undefined;
      }, 5000, 10);
      delays.push(Math.round(seenAt - drawnAt));
      await page.evaluate("window.wlBench.markSeenDecodedAt = 0");
    }
    console.log(`# change -> decoded frame (ms): ${delays.join(" ")}`);
    for (const d of delays) assert.ok(d <= 200, `a change reached the decoded video after ${d} ms (all: ${delays.join(", ")})`);
  } finally {
    await src.page.evaluate("window.setMark(false)");
    await page.close();
  }
});

test("50 connect/disconnect cycles: peer connections, fds and memory return to baseline", async () => {
  setFlagsFromString("--expose-gc");
  const gc = runInNewContext("gc") as () => void;
  const stage = t.agent.rtc!;
  const page = await viewer();
  const fds = (): number => readdirSync("/proc/self/fd").length;
  const settle = async (): Promise<{ fds: number; heap: number; rss: number }> => {
    await until("no viewers", async () => stage.viewerCount === 0, 10_000);
    // Past the C-heap trim that follows released viewers (agent/rtc/trim.ts): both ends measure the same state.
    await sleep(TRIM_DELAY_MS + 500);
    for (let i = 0; i < 3; i++) {
      gc();
      await sleep(100);
    }
    return { fds: fds(), heap: process.memoryUsage().heapUsed, rss: process.memoryUsage().rss };
  };
  // Each cycle: a new peer connection from the running page, at least one decoded frame, then leave.
  const cycle = async (): Promise<void> => {
    // The page keeps its closed pc in window.wl.pc until the new one exists: do not count its frames.
    await page.evaluate("window.wl.pc = undefined; window.wlReconnect()");
    await until("a decoded frame", async () => (await framesDecoded(page)) > 0, 10_000, 20);
    await page.evaluate("window.wlDisconnect()");
    await until("the viewer gone", async () => stage.viewerCount === 0, 10_000, 20);
  };
  try {
    await page.evaluate("window.wlDisconnect()");
    for (let i = 0; i < 3; i++) await cycle(); // warm-up: lazy imports, JIT, first allocations
    const base = await settle();
    const t0 = Date.now();
    for (let i = 0; i < 50; i++) await cycle();
    const took = Date.now() - t0;
    const end = await settle();
    console.log(
      `# 50 cycles in ${(took / 1000).toFixed(1)} s; fds ${base.fds} -> ${end.fds}, heap ${(base.heap / 1e6).toFixed(1)} -> ${(end.heap / 1e6).toFixed(1)} MB, ` +
        `rss ${(base.rss / 1e6).toFixed(1)} -> ${(end.rss / 1e6).toFixed(1)} MB`,
    );
    assert.equal(stage.viewerCount, 0, "no peer connection left");
    assert.ok(end.fds <= base.fds * 1.05, `fds back to baseline: ${base.fds} -> ${end.fds}`);
    assert.ok(end.heap <= base.heap * 1.05, `heap back to baseline: ${base.heap} -> ${end.heap}`);
    assert.ok(end.rss <= base.rss * 1.05, `rss back to baseline: ${base.rss} -> ${end.rss}`);
    // And it still streams.
    await page.evaluate("window.wl.pc = undefined; window.wlReconnect()");
    await until("a decoded frame after the cycles", async () => (await framesDecoded(page)) > 0, 10_000);
  } finally {
    await page.close();
  }
});
