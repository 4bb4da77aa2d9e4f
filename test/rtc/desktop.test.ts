import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import type { Page } from "playwright-core";
import { TestBrowser } from "../helpers/browser.js";
import { startTestAgent, type TestAgent } from "../helpers/agent.js";

/**
 * The whole spine on real parts: the agent's own headless desktop (sway, portal, PipeWire), the native
 * capture and encoder, werift, and Chromium decoding the web client's stream.
 */
declare const window: { wl: { pc?: { getStats(): Promise<{ forEach(cb: (s: Record<string, unknown>) => void): void }> } } };

let t: TestAgent;
let browser: TestBrowser;

before(async () => {
  t = await startTestAgent({ desktop: { mode: "headless", width: 1920, height: 1080, refresh_hz: 60 }, metrics: { enabled: false } });
  browser = await TestBrowser.launch();
});
after(async () => {
  try {
    await browser?.close();
  } finally {
    await t?.close();
  }
});

async function inbound(page: Page): Promise<Record<string, number>> {
  return page.evaluate(async () => {
    const pc = window.wl.pc;
    if (!pc) return {};
    const r = await pc.getStats();
    let out: Record<string, number> = {};
    r.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") out = s as Record<string, number>;
    });
    return out;
  });
}

async function until<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    const v = await fn();
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

test("a browser receives 30 s of the 1080p desktop: frames keep decoding at the desktop's size", async () => {
  const desktop = t.agent.desktop?.headless;
  assert.ok(desktop, "the agent runs its own headless desktop");
  const term = await desktop.spawnClient("foot", ["sh", "-c", 'i=0; while :; do i=$((i+1)); echo "line $i"; sleep 0.01; done'], { name: "animate" });
  const { token } = await t.agent.tokens.mint({ role: "view", ttlS: 600, subject: "e2e" });
  const page = await browser.context.newPage();
  const t0 = Date.now();
  await page.goto(`${t.httpUrl}/#token=${token}`);
  try {
    const first = await until("the first decoded frame", async () => {
      const s = await inbound(page);
      return (s.framesDecoded ?? 0) > 0 ? s : undefined;
    }, 15_000);
    const firstFrameMs = Date.now() - t0;
    // What the user sees: the video, and no sign-in form over it.
    assert.equal(await page.locator("#signin").isVisible(), false, "the sign-in form is hidden while streaming");
    assert.equal(await page.locator("#screen").isVisible(), true);
    let prev = first.framesDecoded!;
    const samples: number[] = [];
    for (let i = 0; i < 6; i++) {
      await new Promise((r) => setTimeout(r, 5000));
      const s = await inbound(page);
      assert.equal(s.frameWidth, 1920);
      assert.equal(s.frameHeight, 1080);
      assert.ok(s.framesDecoded! > prev, `framesDecoded stalled at ${prev}`);
      samples.push((s.framesDecoded! - prev) / 5);
      prev = s.framesDecoded!;
    }
    const fps = samples.reduce((a, b) => a + b, 0) / samples.length;
    console.log(`# desktop e2e: first frame after ${firstFrameMs} ms (page load included), received ${samples.map((x) => x.toFixed(1)).join(" ")} fps`);
    assert.ok(fps >= 20, `decoded ${fps.toFixed(1)} fps on average`);
  } finally {
    await page.close();
    term.kill("SIGTERM");
  }
});
