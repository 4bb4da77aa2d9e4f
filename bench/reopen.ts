/**
 * Reopen soak (issue 11, item 1): viewer cycles that close and reopen the desktop's capture between
 * them, on a still and on a changing screen, on real parts (the agent's own headless 1080p60 desktop,
 * portal with its restore token, PipeWire, x264, werift, Chromium showing the web client).
 *   node dist/bench/reopen.js [--cycles 100] [--linger-ms 200] [--first-frame-timeout-ms 8000] [--screens still,changing]
 * Each cycle: connect (a new signaling session and peer connection), first frame shown, disconnect,
 * wait until the rtc stage closed the source (its linger, then portal session, capture and encoder).
 * Prints per screen: connect -> first frame shown p50/p95/max (target: every one <= 1 s), cycles with
 * no frame, and this process's fds, threads and RSS (the agent runs in it) at the start and the end.
 * Last line: one JSON object.
 */
import { readFileSync, readdirSync } from "node:fs";
import { loadavg } from "node:os";
import type { ChildProcess } from "node:child_process";
import { startTestAgent } from "../test/helpers/agent.js";
import { TestBrowser } from "../test/helpers/browser.js";
import { CHANGING_SCREEN, percentile, processFigures, reopenCycle, settleGc } from "../test/rtc/reopen-cycles.js";

declare const window: { wl: { marks: Record<string, number> }; wlDisconnect(): void };

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : def;
}

const cycles = Number(arg("cycles", "100"));
const lingerMs = Number(arg("linger-ms", "200"));
const timeoutMs = Number(arg("first-frame-timeout-ms", "8000"));
const screens = arg("screens", "still,changing").split(",").filter((x): x is "still" | "changing" => x === "still" || x === "changing");

/** fds and RSS of one of the desktop's processes (xdpw holds each cast's buffers). */
function partFigures(pid: number | undefined): { fds: number; rssMb: number } | undefined {
  if (pid === undefined) return undefined;
  try {
    const rss = Number(/^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? NaN);
    return { fds: readdirSync(`/proc/${pid}/fd`).length, rssMb: Math.round(rss / 1024) };
  } catch {
    return undefined;
  }
}

const browser = await TestBrowser.launch();
const link = browser.agentOverrides();
const t = await startTestAgent({ server: link.server, desktop: { mode: "headless", width: 1920, height: 1080, refresh_hz: 60 }, metrics: { enabled: false }, rtc: { ...link.rtc, source_linger_ms: lingerMs } });
const out: Record<string, unknown> = { cycles, lingerMs, loadavg: loadavg().map((x) => Number(x.toFixed(2))) };
let term: ChildProcess | undefined;
try {
  const page = await browser.context.newPage();
  const { token } = await t.agent.tokens.mint({ role: "view", ttlS: 3600, subject: "bench-reopen" });
  await page.goto(`${t.httpUrl}/#token=${token}`);
  await page.waitForFunction(() => window.wl.marks.firstFrameShown !== undefined, undefined, { timeout: 15_000 });
  await page.evaluate(() => window.wlDisconnect());
  const opts = { agent: t.agent, page, firstFrameTimeoutMs: timeoutMs, closeTimeoutMs: lingerMs + 10_000 };
  for (const screen of screens) {
    if (screen === "changing") term = await t.agent.desktop!.headless!.spawnClient("foot", CHANGING_SCREEN, { name: "changing" });
    await reopenCycle(opts); // warm-up
    await settleGc();
    const start = processFigures();
    const xdpwPid = t.agent.desktop!.headless!.pids.get("xdpw");
    const xdpwStart = partFigures(xdpwPid);
    const ms: number[] = [];
    const failed: string[] = [];
    const rssEvery25: number[] = [];
    const t0 = performance.now();
    for (let i = 0; i < cycles; i++) {
      const r = await reopenCycle(opts);
      if (r.firstFrameMs === undefined) failed.push(`cycle ${i}: ${r.diagnosis ?? ""}`);
      else ms.push(Math.round(r.firstFrameMs));
      if ((i + 1) % 25 === 0) rssEvery25.push(processFigures().rssMb);
    }
    const seconds = (performance.now() - t0) / 1000;
    await settleGc();
    const end = processFigures();
    const xdpwEnd = partFigures(xdpwPid);
    const fig = {
      firstFrameMs: { p50: percentile(ms, 50), p95: percentile(ms, 95), max: Math.max(...ms), over1s: ms.filter((x) => x > 1000).length },
      noFrame: failed.length,
      start,
      end,
      rssEvery25,
      xdpw: { start: xdpwStart, end: xdpwEnd },
      seconds: Number(seconds.toFixed(1)),
    };
    out[screen] = fig;
    console.log(`# ${screen} screen, ${cycles} reopens in ${fig.seconds} s: connect -> first frame p50 ${fig.firstFrameMs.p50} ms, p95 ${fig.firstFrameMs.p95} ms, max ${fig.firstFrameMs.max} ms, ${fig.firstFrameMs.over1s} over 1 s, ${failed.length} without a frame`);
    console.log(`#   agent process: fds ${start.fds} -> ${end.fds}, threads ${start.threads} -> ${end.threads}, RSS ${start.rssMb} -> ${end.rssMb} MB (every 25 cycles: ${rssEvery25.join(" ")})`);
    console.log(`#   xdg-desktop-portal-wlr: fds ${xdpwStart?.fds} -> ${xdpwEnd?.fds}, RSS ${xdpwStart?.rssMb} -> ${xdpwEnd?.rssMb} MB`);
    for (const f of failed) console.log(`#   ${f}`);
  }
  await page.close();
} finally {
  term?.kill("SIGTERM");
  await browser.close();
  await t.close();
}
console.log(JSON.stringify(out));
