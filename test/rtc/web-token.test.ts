import { test } from "node:test";
import assert from "node:assert/strict";
import type { Page } from "playwright-core";
import { TestBrowser } from "../helpers/browser.js";
import { until } from "../helpers/wait.js";
import { startRtcAgent } from "./fixture.js";

/**
 * The web client and a session's token: the page cannot make tokens, so before the expiry it asks for a
 * new one; one pasted while connected continues the session (signaling `token` -> `renewed`) and the
 * stream goes on past the first token's expiry; without one, the agent ends the session at the expiry
 * and the page says why. Chromium runs in a network namespace of its own (TestBrowser), the agent on
 * its link: no packet leaves the two ends of that link.
 */

interface WlState {
  state: string;
  failure?: string;
  reconnects: number;
  expiresAt?: number;
}
declare const window: { wl: WlState & { pc?: { getStats(): Promise<{ forEach(cb: (s: Record<string, unknown>) => void): void }> } } };

const wl = (page: Page): Promise<WlState> => page.evaluate(() => JSON.parse(JSON.stringify({ ...window.wl, pc: undefined, control: undefined, input: undefined })) as WlState);
const framesDecoded = (page: Page): Promise<number> =>
  page.evaluate(async () => {
    const pc = window.wl.pc;
    if (!pc) return 0;
    let n = 0;
    (await pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") n = Number(s.framesDecoded ?? 0);
    });
    return n;
  });
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

test("web client: it asks for a new token before the expiry, a pasted one continues the stream, and without one it says the session ended", async () => {
  const nsb = await TestBrowser.launch();
  const fx = await startRtcAgent({ ...nsb.agentOverrides(), auth: { clock_tolerance_s: 0 } });
  try {
    const port = new URL(fx.httpUrl).port;
    const link = nsb.link;
    const openPage = async (token: string): Promise<Page> => {
      const p = await nsb.context.newPage();
      await p.goto(`http://${link.hostAddr}:${port}/#token=${token}`);
      await until("streaming", async () => (await wl(p)).state === "streaming" && (await framesDecoded(p)) > 5, 20_000);
      return p;
    };

    // Renewed: a token of 10 s is inside the 2-minute warning at once.
    const first = await fx.agent.tokens.mint({ role: "view", ttlS: 10, subject: "tab" });
    const page = await openPage(first.token);
    assert.equal((await wl(page)).expiresAt, first.claims.exp);
    await until("the page asks for a new token", async () => page.locator("#signin").isVisible(), 5_000);
    assert.match((await page.locator("#status").textContent()) ?? "", /The token expires in \d+ s and the session with it: paste a new token/);
    const fresh = await fx.agent.tokens.mint({ role: "view", ttlS: 600, subject: "tab" });
    await page.fill("#token", fresh.token);
    await page.click("#signin button[type=submit]");
    await until("renewed", async () => (await wl(page)).expiresAt === fresh.claims.exp, 5_000);
    assert.match((await page.locator("#status").textContent()) ?? "", /Token renewed: the session continues until/);
    assert.equal(await page.locator("#signin").isVisible(), false);
    await sleep(Math.max(0, first.claims.exp * 1000 - Date.now()) + 1500);
    const before = await framesDecoded(page);
    await sleep(1000);
    const s = await wl(page);
    assert.equal(s.state, "streaming", "still streaming after the first token's expiry");
    assert.equal(s.reconnects, 0, "on the same connection");
    assert.ok((await framesDecoded(page)) > before, "frames still arrive");
    await page.close();

    // Not renewed: the agent ends the session at the expiry, the page says so and does not retry.
    const brief = await fx.agent.tokens.mint({ role: "view", ttlS: 6, subject: "tab" });
    const page2 = await openPage(brief.token);
    await until("the session ended", async () => (await wl(page2)).failure === "token", 10_000);
    assert.match((await page2.locator("#status").textContent()) ?? "", /The session ended: its token expired\. Get a new token/);
    assert.ok(Date.now() >= brief.claims.exp * 1000 - 100, "not before the expiry");
    await sleep(2500);
    assert.equal((await wl(page2)).reconnects, 0);
    await until("viewer released", async () => fx.agent.rtc!.viewerCount === 0, 5_000);
    await page2.close();
  } finally {
    await nsb.close();
    await fx.close();
  }
});
