import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import type { Page } from "playwright-core";
import { TestBrowser } from "../helpers/browser.js";
import { startTestAgent, type TestAgent } from "../helpers/agent.js";
import { VirtualPointer } from "../helpers/vpointer.js";

/**
 * The whole spine on real parts: the agent's own headless desktop (sway, portal, PipeWire), the native
 * capture and encoder, werift, and Chromium decoding the web client's stream.
 */
declare const window: { wl: { pc?: { getStats(): Promise<{ forEach(cb: (s: Record<string, unknown>) => void): void }> }; cursorMode?: string } };

let t: TestAgent;
let browser: TestBrowser;

before(async () => {
  browser = await TestBrowser.launch();
  t = await startTestAgent({ ...browser.agentOverrides(), desktop: { mode: "headless", width: 1920, height: 1080, refresh_hz: 60 }, metrics: { enabled: false } });
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

/** Luma statistics of a square of the decoded video (VideoFrame.copyTo of that rect only: cheap). */
async function lumaAt(page: Page, x: number, y: number, size: number): Promise<{ min: number; max: number; mean: number }> {
  return page.evaluate(async ({ x, y, size }) => {
    const g = globalThis as unknown as {
      document: { getElementById(id: string): unknown };
      VideoFrame: new (src: unknown) => { format: string; allocationSize(o: unknown): number; copyTo(b: Uint8Array, o: unknown): Promise<unknown>; close(): void };
    };
    const f = new g.VideoFrame(g.document.getElementById("screen"));
    try {
      const rect = { x, y, width: size, height: size };
      const buf = new Uint8Array(f.allocationSize({ rect }));
      await f.copyTo(buf, { rect });
      // I420 / NV12: the first size*size bytes are the luma plane of the rect.
      let min = 255, max = 0, sum = 0;
      for (let i = 0; i < size * size; i++) {
        const v = buf[i]!;
        min = Math.min(min, v);
        max = Math.max(max, v);
        sum += v;
      }
      return { min, max, mean: sum / (size * size) };
    } finally {
      f.close();
    }
  }, { x, y, size });
}

test("cursor: the portal offers no metadata here, so the agent announces embedded and the pointer is in the decoded picture where sway puts it", async () => {
  const desktop = t.agent.desktop!.headless!;
  const { token } = await t.agent.tokens.mint({ role: "view", ttlS: 600, subject: "cursor" });
  // sway shows no cursor on a seat without a pointer (the headless seat has no input devices): a
  // virtual pointer gives it one, as the agent's input stage (or a user's mouse) would.
  const vp = await VirtualPointer.start(desktop.env, 1920, 1080);
  const page = await browser.context.newPage();
  await page.goto(`${t.httpUrl}/#token=${token}`);
  try {
    await until("decoding", async () => ((await inbound(page)).framesDecoded ?? 0) > 0 || undefined, 15_000);
    const mode = await until("cursor-mode", async () => page.evaluate(() => window.wl.cursorMode), 10_000);
    assert.equal(mode, "embedded", "xdpw 0.7 offers hidden and embedded: auto picks embedded and the agent says so");
    assert.equal(await page.locator("#cursor").isVisible(), false, "the client draws no second pointer");
    // Two spots on the empty workspace; the pointer goes to one, then the other (absolute moves).
    const spots = [{ x: 400, y: 400 }, { x: 1200, y: 700 }];
    const size = 16; // the arrow's tip region: the pointer's hotspot is its top-left
    const settle = async (want: number): Promise<Array<{ min: number; max: number; mean: number }>> => {
      // The moved pointer makes sway redraw: wait until the picture shows it (a few frames). The swaymsg
      // move moves the same seat cursor.
      return until(`pointer shown at spot ${want}`, async () => {
        const l = await Promise.all(spots.map((s) => lumaAt(page, s.x, s.y, size)));
        const other = l[1 - want]!;
        return l[want]!.max - l[want]!.min > 60 && other.max - other.min < 20 ? l : undefined;
      }, 10_000);
    };
    await vp.move(spots[0]!.x, spots[0]!.y);
    const a = await settle(0);
    await desktop.swaymsg("seat", "-", "cursor", "set", String(spots[1]!.x), String(spots[1]!.y));
    const b = await settle(1);
    console.log(`# embedded pointer: luma range at the pointer ${a[0]!.min}-${a[0]!.max}, elsewhere ${a[1]!.min}-${a[1]!.max}; after the move ${b[1]!.min}-${b[1]!.max} / ${b[0]!.min}-${b[0]!.max}`);
    // No cursor messages in embedded mode: the pointer travels in the picture only.
    const msgs = await page.evaluate(() => (window.wl as unknown as { controlMessages: { type: string }[] }).controlMessages.map((m) => m.type));
    assert.ok(!msgs.includes("cursor"), `control messages: ${[...new Set(msgs)].join(", ")}`);
  } finally {
    await page.close();
    await vp.close();
  }
});
