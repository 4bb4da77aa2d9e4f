/**
 * Shared by bench/latency.ts, bench/cost.ts and test/rtc/pipeline.test.ts: a Chromium page on the
 * captured desktop (counter.html, kiosk, inside the agent's headless sway) and a reader injected into
 * the receiving web client page that decodes the counter from each decoded frame.
 */
import type { ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium, type Browser, type BrowserContext, type Page } from "playwright-core";
import type { HeadlessDesktop } from "../../agent/desktop/headless.js";
import { NetLink } from "../../test/helpers/netns.js";
import { CHROMIUM } from "../../test/helpers/browser.js";

/** bench/pages/counter.html in the source tree (this file runs from dist/bench/pages/). */
export const COUNTER_PAGE = fileURLToPath(new URL("../../../bench/pages/counter.html", import.meta.url));

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      s.close(() => resolve(typeof a === "object" && a ? a.port : 0));
    });
  });
}

/**
 * Removes a Chromium profile dir after its browser process exited. Its renderer/utility children can
 * outlive it for a moment and still write there (a bench run once died on ENOTEMPTY), so retry for up to 3 s.
 */
async function removeProfile(dir: string): Promise<void> {
  for (let i = 0; ; i++) {
    try {
      rmSync(dir, { recursive: true, force: true, maxRetries: 2, retryDelay: 50 });
      return;
    } catch (err) {
      if (i >= 30) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

export interface SourcePage {
  page: Page;
  pid: number;
  close(): Promise<void>;
}

/** Connects over CDP to a Chromium we started on the desktop, retrying until `end` or until it exits. */
async function connectWhenUp(port: number, child: ChildProcess, what: string, end: number, host = "127.0.0.1"): Promise<Browser> {
  for (;;) {
    try {
      return await chromium.connectOverCDP(`http://${host}:${port}`, { timeout: 2000 });
    } catch (err) {
      if (Date.now() > end || child.exitCode !== null) throw new Error(`${what} Chromium on the desktop did not start: ${String(err)}`, { cause: err });
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

/**
 * Starts Chromium as a Wayland client of the desktop (fullscreen kiosk: page pixel (x, y) is screen pixel
 * (x, y)) showing counter.html, and connects to it over CDP. Killed by its pid on close.
 */
export async function openSourcePage(desktop: HeadlessDesktop, query = ""): Promise<SourcePage> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "wl-src-chromium-"));
  // In a network namespace of its own: the page needs no network, and Chromium's own background requests
  // (autofill, DNS prefetch: not all are covered by its flags) then cannot leave the machine. CDP is
  // reached over the namespace's link; the Wayland socket is a file, reachable from any namespace.
  const link = await NetLink.create();
  await link.forwardLoopback(port).catch(async (err: unknown) => {
    await link.close();
    throw err;
  });
  const child = await desktop.spawnClient("ip", ["netns", "exec", link.ns, CHROMIUM,
    "--ozone-platform=wayland", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check", "--test-type",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--kiosk",
    "--disable-renderer-backgrounding", "--disable-background-timer-throttling", "--disable-backgrounding-occluded-windows",
    `--remote-debugging-port=${port}`, `--user-data-dir=${dir}`,
    `file://${COUNTER_PAGE}${query}`,
  ], { name: "source-chromium" }).catch(async (err: unknown) => {
    await link.close();
    throw err;
  });
  const kill = (): void => {
    try {
      if (child.pid !== undefined) process.kill(child.pid, "SIGKILL");
    } catch {
      // gone
    }
  };
  let browser: Browser | undefined;
  try {
    const end = Date.now() + 20_000;
    browser = await connectWhenUp(port, child, "source", end, link.nsAddr);
    let page: Page | undefined;
    while (!page) {
      page = browser.contexts()[0]?.pages().find((p) => p.url().includes("counter.html"));
      if (!page) {
        if (Date.now() > end) throw new Error("counter page not found in the source Chromium");
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    await page.waitForFunction("window.counter > 10", undefined, { timeout: 15_000 });
    const b = browser;
    return {
      page,
      pid: child.pid!,
      close: async () => {
        await b.close().catch(() => undefined);
        kill();
        if (child.exitCode === null && child.signalCode === null) await new Promise((r) => child.once("exit", r));
        await link.close();
        await removeProfile(dir);
      },
    };
  } catch (err) {
    await browser?.close().catch(() => undefined);
    kill();
    await link.close();
    await removeProfile(dir);
    throw err;
  }
}

export interface ReceiverBrowser {
  browser: Browser;
  context: BrowserContext;
  close(): Promise<void>;
}

/**
 * A receiving Chromium with a real Wayland display path (not --headless): a client of the desktop's sway on
 * a second headless output that sway creates for it (so the captured output HEADLESS-1 is untouched), its
 * window fullscreen there. Its compositor frames go out through wl_surface commits that sway presents on
 * that output's own 60 Hz clock. For bench/latency.ts --receiver wayland. close() kills it by its pid and
 * unplugs the output.
 */
export async function openWaylandReceiver(desktop: HeadlessDesktop, link: NetLink): Promise<ReceiverBrowser> {
  type Out = { name: string; focused?: boolean };
  const before = new Set((JSON.parse(await desktop.swaymsg("-t", "get_outputs", "-r")) as Out[]).map((o) => o.name));
  await desktop.swaymsg("create_output");
  const out = (JSON.parse(await desktop.swaymsg("-t", "get_outputs", "-r")) as Out[]).find((o) => !before.has(o.name))?.name;
  if (!out) throw new Error("sway created no second output");
  const unplug = async (): Promise<void> => {
    await desktop.swaymsg("output", out, "unplug").catch(() => undefined);
  };
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "wl-rx-chromium-"));
  let child: Awaited<ReturnType<HeadlessDesktop["spawnClient"]>> | undefined;
  let browser: Browser | undefined;
  const kill = (): void => {
    try {
      if (child?.pid !== undefined) process.kill(child.pid, "SIGKILL");
    } catch {
      // gone
    }
  };
  try {
    await link.forwardLoopback(port);
    await desktop.swaymsg("output", out, "mode", "1920x1080@60Hz", "pos", "1920", "0");
    await desktop.swaymsg("focus", "output", out);
    // Inside the link's namespace (its WebRTC can then reach the agent only over the link; the Wayland
    // socket is a file, reachable from any namespace), with CDP on the namespace's end of the link.
    child = await desktop.spawnClient("ip", ["netns", "exec", link.ns, CHROMIUM,
      "--ozone-platform=wayland", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check", "--test-type",
      "--disable-background-networking", "--disable-component-update", "--disable-sync", "--start-fullscreen",
      "--autoplay-policy=no-user-gesture-required", "--disable-features=WebRtcHideLocalIpsWithMdns",
      "--disable-renderer-backgrounding", "--disable-background-timer-throttling", "--disable-backgrounding-occluded-windows",
      `--remote-debugging-port=${port}`, `--user-data-dir=${dir}`, "about:blank",
    ], { name: "receiver-chromium" });
    browser = await connectWhenUp(port, child, "receiver", Date.now() + 20_000, link.nsAddr);
    // It opened on the focused output; make sure (a window may map before focus moved), fullscreen it there.
    await desktop.swaymsg(`[pid=${child.pid}]`, "move", "container", "to", "output", out).catch(() => undefined);
    await desktop.swaymsg(`[pid=${child.pid}]`, "fullscreen", "enable").catch(() => undefined);
    const context = browser.contexts()[0];
    if (!context) throw new Error("receiver Chromium has no browser context");
    const b = browser;
    const c = child;
    return {
      browser: b,
      context,
      close: async () => {
        await b.close().catch(() => undefined);
        kill();
        if (c.exitCode === null && c.signalCode === null) await new Promise((r) => c.once("exit", r));
        await removeProfile(dir);
        await unplug();
      },
    };
  } catch (err) {
    await browser?.close().catch(() => undefined);
    kill();
    await removeProfile(dir);
    await unplug();
    throw err;
  }
}

/**
 * Injected into the receiving page (the web client): on every requestVideoFrameCallback, copies only a
 * 1280x2 rect of the decoded frame across the pattern (VideoFrame.copyTo, ~0.2 ms; a full readback is
 * ~20 ms at 1080p) and records the counter with the frame's metadata. `window.wlBench.mark()` reads the
 * mean luma of the mark square (counter.html setMark) as well, for the pipeline test: markSeenAt (receive time)
 * and markSeenDecodedAt (the rVFC time) of the first frame that shows it.
 * Records: [counter|-1, rtpTimestamp, receiveTime, presentationTime, expectedDisplayTime, callbackNow], the
 * times as wall-clock ms (performance.timeOrigin + t).
 */
export const RECEIVER_SCRIPT = `(() => {
  if (window.wlBench) return true;
  const video = document.querySelector("video");
  if (!video || !("requestVideoFrameCallback" in video)) return false;
  const T0 = performance.timeOrigin;
  const B = { records: [], frames: 0, readMs: 0, watchMark: false, markSeenAt: 0, markSeenDecodedAt: 0, markLuma: 0 };
  window.wlBench = B;
  async function luma(vf, rect) {
    const buf = new Uint8Array(vf.allocationSize({ rect }));
    const layout = await vf.copyTo(buf, { rect });
    const f = vf.format || "";
    if (f.startsWith("I4") || f.startsWith("NV12")) return { buf, off: layout[0].offset, stride: layout[0].stride, step: 1 };
    return { buf, off: layout[0].offset + 1, stride: layout[0].stride, step: 4 }; // RGBx/BGRx: green
  }
  async function onFrame(now, meta) {
    video.requestVideoFrameCallback(onFrame);
    B.frames++;
    let vf;
    try {
      vf = new VideoFrame(video);
      const t = performance.now();
      let counter = -1;
      if (vf.codedWidth >= 1280) {
        const l = await luma(vf, { x: 0, y: 20, width: 1280, height: 2 });
        let v = 0, ok = true;
        for (let i = 0; i < 16; i++) {
          const a = l.buf[l.off + (i * 40 + 20) * l.step] > 128 ? 1 : 0;
          const b = l.buf[l.off + ((i + 16) * 40 + 20) * l.step] > 128 ? 1 : 0;
          if (a === b) { ok = false; break; }
          v = (v << 1) | a;
        }
        if (ok) counter = v;
      }
      if (B.watchMark) {
        const m = await luma(vf, { x: 480, y: 480, width: 40, height: 40 });
        let s = 0;
        for (let y = 0; y < 40; y++) for (let x = 0; x < 40; x++) s += m.buf[m.off + y * m.stride + x * m.step];
        B.markLuma = s / 1600;
        if (B.markLuma > 128 && !B.markSeenAt) {
          B.markSeenAt = T0 + (meta.receiveTime ?? now);
          B.markSeenDecodedAt = T0 + now;
        }
      }
      B.readMs += performance.now() - t;
      B.records.push([counter, meta.rtpTimestamp ?? -1, T0 + (meta.receiveTime ?? NaN), T0 + meta.presentationTime, T0 + meta.expectedDisplayTime, T0 + now]);
    } catch (e) {
      B.error = String(e);
    } finally {
      if (vf) vf.close();
    }
  }
  video.requestVideoFrameCallback(onFrame);
  return true;
})()`;

/** `Date.now() - (performance.timeOrigin + performance.now())` in a page: how far its clock is from the wall clock. */
export async function pageClockOffsetMs(page: Page): Promise<number> {
  return page.evaluate("Date.now() - (performance.timeOrigin + performance.now())");
}

/** The same in this process. */
export function nodeClockOffsetMs(): number {
  return Date.now() - (performance.timeOrigin + performance.now());
}

/**
 * The receiving Chromium's own account of the inbound video (webrtc-stats inbound-rtp) and of the video
 * element (getVideoPlaybackQuality): where a frame could wait between its last packet and the compositor.
 */
export async function receiverVideoStats(page: Page): Promise<Record<string, number>> {
  return page.evaluate(`(async () => {
    const out = {};
    const pc = window.wl && window.wl.pc;
    if (pc) {
      const r = await pc.getStats();
      r.forEach((s) => {
        if (s.type !== "inbound-rtp" || s.kind !== "video") return;
        for (const k of ["framesReceived", "framesDecoded", "framesDropped", "keyFramesDecoded", "jitterBufferDelay", "jitterBufferTargetDelay",
          "jitterBufferMinimumDelay", "jitterBufferEmittedCount", "totalProcessingDelay", "totalDecodeTime", "totalAssemblyTime",
          "framesAssembledFromMultiplePackets", "freezeCount", "pauseCount"]) if (typeof s[k] === "number") out[k] = s[k];
      });
    }
    const v = document.querySelector("video");
    if (v && v.getVideoPlaybackQuality) {
      const q = v.getVideoPlaybackQuality();
      out.elementTotalFrames = q.totalVideoFrames;
      out.elementDroppedFrames = q.droppedVideoFrames;
    }
    return out;
  })()`);
}

/** framesDecoded of the page's inbound video (0 before the peer connection has any). */
export async function framesDecoded(page: Page): Promise<number> {
  return page.evaluate(`(async () => {
    const pc = window.wl && window.wl.pc;
    if (!pc) return 0;
    let f = 0, r;
    try { r = await pc.getStats(); } catch { return 0; }
    r.forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "video") f = Number(s.framesDecoded || 0); });
    return f;
  })()`);
}
