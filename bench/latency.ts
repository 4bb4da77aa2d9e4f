/**
 * Glass-to-glass latency of the whole pipeline on real parts (issue 5).
 *   node dist/bench/latency.js [--seconds 70] [--fps 30,60] [--bitrate-kbps 6000] [--playout-delay-min-ms 0 --playout-delay-max-ms 0]
 *     [--trace-seconds 10 [--trace-categories media,viz] [--trace-out file.json]] [--receiver headless|wayland] [--receiver-window 1920x1080]
 *
 * Source: Chromium (kiosk, software rendering) inside the agent's headless sway shows
 * bench/pages/counter.html, which paints a frame counter as a block pattern on every rAF and records the
 * rAF's wall-clock time. Agent: capture (xdpw + PipeWire) -> x264 -> werift; its rtc stage's `frameSent`
 * trace gives, per frame, when PipeWire delivered it and when its last RTP packet was handed to the socket.
 * Receiver: a second, headless Chromium running the web client; a requestVideoFrameCallback reader copies a
 * 1280x2 rect of each decoded frame (VideoFrame.copyTo), decodes the counter and keeps the frame's
 * receiveTime and expectedDisplayTime. Frames are joined by counter (paint) and RTP timestamp (agent).
 * All times are wall-clock ms (pages: performance.timeOrigin + t; agent: the same in Node; native capture
 * time: CLOCK_REALTIME); the offsets of each clock to Date.now() are printed.
 *
 * Segments: paint -> capture (source app + sway + xdpw: not ours), capture -> sent (ours: encoder + rtc),
 * sent -> received (loopback + Chromium's jitter buffer up to the last packet), received -> presented
 * (decode + Chromium's compositor tick), total = paint -> presented.
 * Where received -> presented comes from (docs/streaming.md "received -> presented: what sets the mode"):
 * the receiver's BeginFrame ticks (rVFC `now` of all frames), each frame's arrival and capture phase in
 * that interval, how many ticks after arrival Chromium's expectedDisplayTime lies, received -> presented
 * per eighth of the interval, and the receiver's webrtc-stats (jitter buffer, processing, drops) per frame.
 * "Presented": rVFC's expectedDisplayTime is Chromium's *prediction*, written when the frame is set as
 * current (docs/streaming.md: a stale BeginFrame deadline until its estimate has feedback, then a mean;
 * it can lie before the packet arrived). So by default the receiving Chromium is traced (CDP Tracing,
 * categories media,viz) for the last --trace-seconds (60) of the --seconds (70) window and each video frame
 * is followed to the viz draw that put it in a display frame and to that frame's presentation feedback
 * (bench/pages/trace.ts joinVideoFrames). Over the traced window "presented" is that feedback (headless
 * software output: the end of viz's swap; --receiver wayland: sway's wp_presentation time); the
 * prediction-based figures over the whole run are printed beside it (`predicted`), and `presentedBy` says
 * which a figure uses (--trace-seconds 0: the prediction). The first 10 s are untraced: the untraced part is
 * compared with the traced one (rVFC fps, capture -> sent, received -> expectedDisplayTime) to show what
 * tracing costs. The headless receiver's window is --receiver-window (default: headless Chromium's 800x600,
 * the video fitted into a ~780x493 page; 1920x1080 draws it at about native size). --trace-out writes the
 * raw events and rVFC records for offline reading (node dist/bench/pages/drawn.js file).
 * Targets at 1080p60: capture->sent p50 <= 8 ms, p99 <= 20 ms; total p95 <= 1.5 x total p50; received
 * fps >= 55; received->presented p50 <= 10 ms. Last line: one JSON object.
 */
import { startTestAgent } from "../test/helpers/agent.js";
import { TestBrowser } from "../test/helpers/browser.js";
import { NetLink } from "../test/helpers/netns.js";
import type { FrameSentTrace } from "../agent/rtc/stage.js";
import type { DesktopVideoSource } from "../agent/encode/desktop-source.js";
import { writeFileSync } from "node:fs";
import { ChromeTrace } from "./pages/trace.js";
import { drawnReport, pcts, type Pcts, type Rec } from "./pages/drawn.js";
import { openWaylandReceiver, type ReceiverBrowser, framesDecoded, nodeClockOffsetMs, openSourcePage, pageClockOffsetMs, RECEIVER_SCRIPT, receiverVideoStats } from "./pages/harness.js";

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : def;
}
// 70 s: the first 10 untraced (the tracing check), then the 60 s the targets are read over (--trace-seconds).
const seconds = Number(arg("seconds", "70"));
const rates = arg("fps", "30,60").split(",").map(Number);
const bitrateKbps = Number(arg("bitrate-kbps", "6000"));
// rtc.playout_delay_min_ms / max_ms (the agent's default 0/0: Chromium renders each frame at once).
const playoutMinMs = Number(arg("playout-delay-min-ms", "0"));
const playoutMaxMs = Number(arg("playout-delay-max-ms", "0"));
const WARMUP_S = 3;
// Trace the receiving Chromium for the last N s of the window (0: no trace), optionally dumping the raw events.
// The default traces 60 s: "presented" is then measured (presentation feedback), not predicted.
const traceSeconds = Number(arg("trace-seconds", "60"));
// The receiving Chromium: "headless" (--headless=new, test/helpers/browser.ts) or "wayland" (a client of the
// agent's sway on a second output: a real Wayland display path, see openWaylandReceiver).
const receiverKind = arg("receiver", "headless");
if (receiverKind !== "headless" && receiverKind !== "wayland") throw new Error(`--receiver: headless or wayland, not ${receiverKind}`);
// The headless receiver's window (WxH). Chromium's headless default is 800x600 (a ~780x493 page), where the
// web client fits the 1080p video into a small picture, which is cheaper to draw than the native size.
// Default: Chromium's own headless window, the video fitted into its page (what every run before
// 2026-11-21 used). 1920x1080 draws the video at about native size: ~4 ms more software draw per frame in
// the receiver, which on this 2-core machine also takes CPU from the source page and the agent
// (docs/streaming.md gives both).
const receiverWindow = arg("receiver-window", "");
if (receiverWindow && !/^\d+x\d+$/.test(receiverWindow)) throw new Error(`--receiver-window: WxH, not ${receiverWindow}`);
const traceOut = arg("trace-out", "");
// "media" and "viz" hold every event joinVideoFrames reads; more categories cost the receiver more.
const TRACE_CATEGORIES = arg("trace-categories", "media,viz").split(",");

const loadavg = async (): Promise<number> => Number((await import("node:os")).loadavg()[0]!.toFixed(2));


const r2 = (x: number): number => Math.round(x * 100) / 100;

/**
 * The receiving Chromium's BeginFrame ticks, from the rVFC `now` values of all frames: each is the frame
 * time of the BeginFrame whose rendering step ran the callback (headless: viz's own timer, not tied to
 * sway's). Nothing is added to the page for this; ticks without a video frame (~4 in 60) are filled in
 * at the median interval.
 */
class Ticks {
  readonly u: number[];
  readonly T: number;
  constructor(nows: number[]) {
    this.u = [...new Set(nows.filter((x) => Number.isFinite(x)))].sort((a, b) => a - b);
    const gaps: number[] = [];
    for (let i = 1; i < this.u.length; i++) {
      const d = this.u[i]! - this.u[i - 1]!;
      if (d > 8 && d < 25) gaps.push(d);
    }
    gaps.sort((a, b) => a - b);
    this.T = gaps.length >= 10 ? gaps[gaps.length >> 1]! : NaN;
  }
  /** The last tick at or before t (filled in across gaps of missing ticks). */
  before(t: number): number {
    let lo = 0;
    let hi = this.u.length - 1;
    if (hi < 0 || t < this.u[0]!) return NaN;
    while (lo < hi) {
      const m = (lo + hi + 1) >> 1;
      if (this.u[m]! <= t) lo = m;
      else hi = m - 1;
    }
    const k = Math.floor((t - this.u[lo]!) / this.T + 0.05);
    return this.u[lo]! + Math.max(0, k) * this.T;
  }
  /** How regular the ticks are: p95 of |one-tick gap - T| (ms). */
  jitterP95(): number {
    const d: number[] = [];
    for (let i = 1; i < this.u.length; i++) {
      const g = this.u[i]! - this.u[i - 1]!;
      if (g > 8 && g < 25) d.push(Math.abs(g - this.T));
    }
    d.sort((a, b) => a - b);
    return r2(d[Math.floor(0.95 * (d.length - 1))] ?? NaN);
  }
}

export interface PhaseReport {
  /** The receiver's BeginFrame interval (ms, median one-tick gap) and p95 |gap - interval|. */
  intervalMs: number;
  tickJitterP95Ms: number;
  /** Where in the receiver's frame interval the last packet arrived: received - the last tick before it. */
  arrivalPhase: Pcts;
  /** The frame's capture time the same way (sway's clock against the receiver's). */
  capturePhase: Pcts;
  /** Ticks from the last one before arrival to the frame's rVFC tick: 0 (the BeginFrame already under way
   * when it arrived), 1 (the next one), 2 (one more): [ticks, frames]. */
  ticksWaited: [number, number][];
  /** The same for expectedDisplayTime (which is a tick too): the tick Chromium means to show it at. */
  ticksToExpected: [number, number][];
  /** expectedDisplayTime - the frame's rVFC tick, in ticks: [ticks, frames]. */
  expectedMinusTick: [number, number][];
  /** received -> presented by arrival phase, in 8 bins of T/8: [bin start ms, frames, p50 ms, mean ticks to expectedDisplayTime]. */
  byArrivalPhase: [number, number, number, number][];
  /** Arrival and capture phase p50 per 10 s of the run (ms): does the phase between the clocks drift? */
  per10s: { arrival: number; capture: number }[];
}

function phaseReport(rows: { received: number; presented: number; tick: number; capture: number }[]): PhaseReport | undefined {
  const ticks = new Ticks(rows.map((r) => r.tick));
  const T = ticks.T;
  if (!Number.isFinite(T) || rows.length === 0) return undefined;
  const x = rows.map((r) => {
    const prev = ticks.before(r.received);
    return { ...r, phase: r.received - prev, waited: Math.round((r.tick - prev) / T), shown: Math.round((r.presented - prev) / T), cphase: r.capture - ticks.before(r.capture) };
  }).filter((r) => Number.isFinite(r.phase) && Number.isFinite(r.cphase));
  const bins: (typeof x)[] = Array.from({ length: 8 }, () => []);
  for (const r of x) bins[Math.min(7, Math.max(0, Math.floor((r.phase / T) * 8)))]!.push(r);
  const hist = (xs: number[]): [number, number][] => {
    const m = new Map<number, number>();
    for (const v of xs) m.set(v, (m.get(v) ?? 0) + 1);
    return [...m.entries()].sort((p, q) => p[0] - q[0]);
  };
  const per10s: { arrival: number; capture: number }[] = [];
  for (let a = 0; a < x.length; ) {
    let b = a;
    while (b < x.length && x[b]!.tick - x[a]!.tick < 10_000) b++;
    if (b - a > 60) per10s.push({ arrival: pcts(x.slice(a, b).map((r) => r.phase)).p50, capture: pcts(x.slice(a, b).map((r) => r.cphase)).p50 });
    a = b;
  }
  return {
    intervalMs: Math.round(T * 1000) / 1000,
    tickJitterP95Ms: ticks.jitterP95(),
    arrivalPhase: pcts(x.map((r) => r.phase)),
    capturePhase: pcts(x.map((r) => r.cphase)),
    ticksWaited: hist(x.map((r) => r.waited)),
    ticksToExpected: hist(x.map((r) => r.shown)),
    expectedMinusTick: hist(x.map((r) => Math.round((r.presented - r.tick) / T))),
    byArrivalPhase: bins.map((b, i) => [r2((i * T) / 8), b.length, pcts(b.map((r) => r.presented - r.received)).p50, r2(b.reduce((s2, r) => s2 + r.shown, 0) / Math.max(1, b.length))]),
    per10s,
  };
}

async function run(fps: number): Promise<Record<string, unknown>> {
  // The receiver reaches the agent over a test link of its own (TestBrowser).
  const link = await NetLink.create();
  const t = await startTestAgent({
    server: { host: link.hostAddr },
    desktop: { mode: "headless", width: 1920, height: 1080, refresh_hz: fps },
    encode: { backends: ["x264"], max_fps: fps, bitrate_kbps: bitrateKbps },
    rtc: { ice_host_addresses: [link.hostAddr], start_bitrate_bps: bitrateKbps * 1000, playout_delay_min_ms: playoutMinMs, playout_delay_max_ms: playoutMaxMs },
    metrics: { enabled: false },
  });
  let browser: ReceiverBrowser | undefined;
  let src: Awaited<ReturnType<typeof openSourcePage>> | undefined;
  try {
    const desktop = t.agent.desktop?.headless;
    if (!desktop) throw new Error("the agent has no headless desktop");
    src = await openSourcePage(desktop);
    browser = receiverKind === "wayland" ? await openWaylandReceiver(desktop, link) : await TestBrowser.launch({ link, args: receiverWindow ? [`--window-size=${receiverWindow.replace("x", ",")}`] : [] });
    const page = receiverKind === "wayland" ? (browser.context.pages()[0] ?? (await browser.context.newPage())) : await browser.context.newPage();
    const { token } = await t.agent.tokens.mint({ role: "view", ttlS: 3600, subject: "latency-bench" });
    await page.goto(`${t.httpUrl}/#token=${token}`);
    const end = Date.now() + 20_000;
    while ((await framesDecoded(page)) === 0) {
      if (Date.now() > end) throw new Error("no decoded frame within 20 s");
      await new Promise((r) => setTimeout(r, 100));
    }
    if (!(await page.evaluate(RECEIVER_SCRIPT))) throw new Error("the receiving page has no video with requestVideoFrameCallback");

    const traces = new Map<number, FrameSentTrace>();
    const rtc = t.agent.rtc!;
    rtc.on("frameSent", (tr) => traces.set(tr.rtpTimestamp, tr));
    await new Promise((r) => setTimeout(r, WARMUP_S * 1000));
    await page.evaluate("window.wlBench.records = []; window.wlBench.frames = 0; window.wlBench.readMs = 0");
    const offsets0 = { node: nodeClockOffsetMs(), source: await pageClockOffsetMs(src.page), receiver: await pageClockOffsetMs(page) };
    const source = rtc.source as DesktopVideoSource;
    const pipe = (): { captured: number; skipped: number; published: number; captureUsSum: number; encoded: number; dropped: Record<string, number>; encodeUsSum: number; convertUsSum: number; waitUsSum: number } => {
      const e = source.encoder.stats();
      const c = source.capture.stream.stats();
      return {
        captured: c.counters.framesReceived, skipped: c.counters.buffersSkipped, published: c.processToAvailable.count, captureUsSum: c.processToAvailable.avgUs * c.processToAvailable.count,
        encoded: e.framesEncoded, dropped: { ...e.dropped }, encodeUsSum: e.encode.sumUs, convertUsSum: e.convert.sumUs, waitUsSum: e.wait.sumUs,
      };
    };
    // The source page's own paint count (its rAF counter, mod 2^16): what the app drew, before sway and the portal.
    const holdCounters = (): Record<string, number> => {
      const c = source.capture.stream.stats().counters as unknown as Record<string, number>;
      return Object.fromEntries(["framesHeld", "framesCopied", "framesCopiedShort", "buffersHeldMax", "buffersRedeliveredHeld", "buffersRemovedHeld"].map((k) => [k, c[k] ?? 0]));
    };
    const paintCount = async (): Promise<number> => Number(await src!.page.evaluate("window.counter"));
    const paint0 = await paintCount();
    const p0 = pipe();
    const dec0 = await framesDecoded(page);
    const rx0 = await receiverVideoStats(page);
    const load0 = await loadavg();
    const t0 = performance.now();
    const wall0 = Date.now();
    const sent0 = traces.size;
    let trace: ChromeTrace | undefined;
    let traceWindow: [number, number] | undefined;
    if (traceSeconds > 0) {
      await new Promise((r) => setTimeout(r, Math.max(0, seconds - traceSeconds) * 1000));
      trace = await ChromeTrace.start(browser.browser, TRACE_CATEGORIES);
      const a = Date.now();
      await new Promise((r) => setTimeout(r, Math.min(seconds, traceSeconds) * 1000));
      traceWindow = [a, Date.now()];
    } else {
      await new Promise((r) => setTimeout(r, seconds * 1000));
    }
    const dt = (performance.now() - t0) / 1000;
    const dec1 = await framesDecoded(page);
    const rx1 = await receiverVideoStats(page);
    const p1 = pipe();
    const paint1 = await paintCount();
    const fmt = source.capture.stream.stats().format;
    const captureBuffers = { type: fmt?.bufferType, count: fmt?.buffers, ...holdCounters() };
    const encoded = p1.encoded - p0.encoded;
    const pipeline = {
      sourcePaintFps: Math.round(((((paint1 - paint0) % 65536) + 65536) % 65536 / dt) * 10) / 10,
      capturedFps: Math.round(((p1.captured - p0.captured) / dt) * 10) / 10,
      // Buffers the portal queued that were requeued unseen because a newer one was queued too.
      skippedFps: Math.round(((p1.skipped - p0.skipped) / dt) * 10) / 10,
      // PipeWire's process callback -> the frame in the encoders' mailboxes (the copy out of the buffer, or not).
      captureMsPerFrame: Math.round(((p1.captureUsSum - p0.captureUsSum) / 1000 / Math.max(1, p1.published - p0.published)) * 100) / 100,
      encodedFps: Math.round((encoded / dt) * 10) / 10,
      encoderDropped: Object.fromEntries(Object.keys(p1.dropped).map((k) => [k, p1.dropped[k]! - p0.dropped[k]!])),
      encodeMsPerFrame: Math.round(((p1.encodeUsSum - p0.encodeUsSum) / 1000 / Math.max(1, encoded)) * 100) / 100,
      convertMsPerFrame: Math.round(((p1.convertUsSum - p0.convertUsSum) / 1000 / Math.max(1, encoded)) * 100) / 100,
      // From the frame entering the mailbox to the encoder starting on it (the encoder thread's wake-up,
      // or the end of the frame before when it was busy).
      // Shared-memory frames held (no copy) or copied, and the most buffers held at once (capture/frame.h).
      captureBuffers,
      waitMsPerFrame: Math.round(((p1.waitUsSum - p0.waitUsSum) / 1000 / Math.max(1, encoded)) * 100) / 100,
    };
    const sentFrames = traces.size - sent0;
    const bench = (await page.evaluate("({ records: window.wlBench.records, frames: window.wlBench.frames, readMs: window.wlBench.readMs, error: window.wlBench.error })")) as { records: Rec[]; frames: number; readMs: number; error?: string };
    const paints = (await src.page.evaluate("window.paints")) as (number | null)[];
    const traced = trace ? await trace.stop() : undefined;
    if (traced && traceOut) writeFileSync(traceOut, JSON.stringify({ monoToWallMs: traced.monoToWallMs, offsetDriftMs: traced.offsetDriftMs, window: traceWindow, records: bench.records, events: traced.events }));
    const offsets1 = { node: nodeClockOffsetMs(), source: await pageClockOffsetMs(src.page), receiver: await pageClockOffsetMs(page) };
    const load1 = await loadavg();

    const seg = { paintToCapture: [] as number[], captureToSent: [] as number[], sentToReceived: [] as number[], receivedToPresented: [] as number[], receivedToSubmitted: [] as number[], total: [] as number[] };
    const phaseRows: { received: number; presented: number; tick: number; capture: number }[] = [];
    const traceRows: { received: number; captureToSent: number; presented: number; tick: number }[] = [];
    let unreadable = 0;
    let unmatched = 0;
    for (const [counter, rtp, received, submitted, presented, tick] of bench.records) {
      if (counter < 0) {
        unreadable++;
        continue;
      }
      const paint = paints[counter];
      const tr = traces.get(rtp >>> 0);
      if (typeof paint !== "number" || !tr) {
        unmatched++;
        continue;
      }
      seg.paintToCapture.push(tr.captureTimeMs - paint);
      seg.captureToSent.push(tr.sentTimeMs - tr.captureTimeMs);
      seg.sentToReceived.push(received - tr.sentTimeMs);
      seg.receivedToPresented.push(presented - received);
      seg.receivedToSubmitted.push(submitted - received);
      seg.total.push(presented - paint);
      phaseRows.push({ received, presented, tick, capture: tr.captureTimeMs });
      traceRows.push({ received, captureToSent: tr.sentTimeMs - tr.captureTimeMs, presented, tick });
    }
    const feedback = new Map<Rec, number>();
    const drawn = traced && traceWindow ? drawnReport(traced.events, traced.monoToWallMs, traceWindow, bench.records, traceRows, [wall0, traceWindow[0]], feedback) : undefined;
    // "presented": measured where the trace has the frame's presentation feedback (the traced window),
    // else rVFC's expectedDisplayTime, which is Chromium's prediction (docs/streaming.md); `presentedBy` says which.
    const measured = { receivedToPresented: [] as number[], total: [] as number[] };
    for (const [r, fb] of feedback) {
      const paint = r[0] >= 0 ? paints[r[0]] : undefined;
      if (typeof paint !== "number" || !traces.get(r[1] >>> 0)) continue;
      measured.receivedToPresented.push(fb - r[2]);
      measured.total.push(fb - paint);
    }
    const useMeasured = measured.total.length > 0;
    // The agent's own split of capture -> sent over every frame sent (not only those the reader saw).
    const all = [...traces.values()];
    const captureToReady = pcts(all.map((x) => x.readyTimeMs - x.captureTimeMs));
    const readyToSent = pcts(all.map((x) => x.sentTimeMs - x.readyTimeMs));

    const phase = phaseReport(phaseRows);
    // Per-frame means over the run from the receiver's webrtc-stats (ms), and its frame counts.
    const d = (k: string): number => (rx1[k] ?? NaN) - (rx0[k] ?? NaN);
    const perFrame = (k: string, n: string): number => Math.round((d(k) / Math.max(1, d(n))) * 1e5) / 100;
    const receiver = {
      jitterBufferDelayMs: perFrame("jitterBufferDelay", "jitterBufferEmittedCount"),
      jitterBufferTargetDelayMs: perFrame("jitterBufferTargetDelay", "jitterBufferEmittedCount"),
      jitterBufferMinimumDelayMs: perFrame("jitterBufferMinimumDelay", "jitterBufferEmittedCount"),
      processingDelayMs: perFrame("totalProcessingDelay", "framesDecoded"),
      decodeMs: perFrame("totalDecodeTime", "framesDecoded"),
      assemblyMs: perFrame("totalAssemblyTime", "framesAssembledFromMultiplePackets"),
      framesReceived: d("framesReceived"),
      framesDecoded: d("framesDecoded"),
      framesDropped: d("framesDropped"),
      elementFrames: d("elementTotalFrames"),
      elementDropped: d("elementDroppedFrames"),
    };
    const res = {
      fps,
      receiverBrowser: receiverKind,
      receiverViewport: await page.evaluate("`${innerWidth}x${innerHeight}`"),
      seconds: Math.round(dt),
      presentedBy: useMeasured ? `presentation feedback (trace of the last ${Math.min(seconds, traceSeconds)} s)` : "expectedDisplayTime (Chromium's prediction)",
      total: pcts(useMeasured ? measured.total : seg.total),
      paintToCapture: pcts(seg.paintToCapture),
      captureToSent: pcts(seg.captureToSent),
      sentToReceived: pcts(seg.sentToReceived),
      receivedToPresented: pcts(useMeasured ? measured.receivedToPresented : seg.receivedToPresented),
      // Over all frames of the run, with rVFC's expectedDisplayTime as "presented" (the figure before 2026-11-21).
      predicted: { total: pcts(seg.total), receivedToExpectedDisplay: pcts(seg.receivedToPresented) },
      receivedToSubmitted: pcts(seg.receivedToSubmitted),
      captureToReady,
      readyToSent,
      receivedFps: Math.round(((dec1 - dec0) / dt) * 10) / 10,
      rvfcFps: Math.round((bench.frames / dt) * 10) / 10,
      sentFps: Math.round((sentFrames / dt) * 10) / 10,
      pipeline,
      phase,
      ...(traceSeconds > 0 ? { drawn: drawn ?? null, traceCategories: TRACE_CATEGORIES } : {}),
      receiver,
      readerMsPerFrame: Math.round((bench.readMs / Math.max(1, bench.frames)) * 100) / 100,
      unreadable,
      unmatched,
      clockOffsetsMs: { start: offsets0, end: offsets1 },
      loadavg: { start: load0, end: load1 },
      ...(bench.error ? { readerError: bench.error } : {}),
    };
    const f = (p: Pcts): string => `p50 ${p.p50} p95 ${p.p95} p99 ${p.p99} (n=${p.n})`;
    console.log(`# 1080p${fps}, ${res.seconds} s, receiver ${receiverKind} (page ${String(res.receiverViewport)}), load ${load0} -> ${load1}`);
    console.log(`  presented = ${res.presentedBy}`);
    console.log(`  total (paint -> presented) ${f(res.total)}`);
    console.log(`  paint -> capture (source app + sway + portal) ${f(res.paintToCapture)}`);
    console.log(`  capture -> sent (ours) ${f(res.captureToSent)}  [capture -> encoded in JS ${f(captureToReady)}; JS -> sent ${f(readyToSent)}]`);
    console.log(`  sent -> received ${f(res.sentToReceived)}`);
    console.log(`  received -> presented ${f(res.receivedToPresented)}  [received -> submitted ${f(res.receivedToSubmitted)}; all frames, expectedDisplayTime as presented: received -> ${f(res.predicted.receivedToExpectedDisplay)}, total ${f(res.predicted.total)}]`);
    if (phase) {
      console.log(`  receiver BeginFrame interval ${phase.intervalMs} ms (p95 |gap - interval| ${phase.tickJitterP95Ms}); phase in it (ms after the last tick) of arrival ${f(phase.arrivalPhase)}, of capture ${f(phase.capturePhase)}; ticks from the last one before arrival [ticks, frames] to the rVFC tick ${JSON.stringify(phase.ticksWaited)}, to expectedDisplayTime ${JSON.stringify(phase.ticksToExpected)}; expectedDisplayTime - rVFC tick in ticks ${JSON.stringify(phase.expectedMinusTick)}`);
      console.log(`  received -> presented by arrival phase [bin ms, frames, p50 ms, mean ticks to expectedDisplayTime]: ${JSON.stringify(phase.byArrivalPhase)}; phase p50 per 10 s [arrival, capture] ${JSON.stringify(phase.per10s.map((p) => [p.arrival, p.capture]))}`);
    }
    if (drawn) {
      console.log(`  traced ${r2((drawn.windowMs[1] - drawn.windowMs[0]) / 1000)} s (${TRACE_CATEGORIES.join(",")}): rVFC frames ${drawn.rvfcFrames}, set as current ${drawn.traced}, followed to viz's draw ${drawn.joined}, lost ${JSON.stringify(drawn.lost)}; submissions renderer ${drawn.submitted} / viz ${drawn.vizReceived} (list offset ${drawn.shift}), receives before their submission ${drawn.orderViolations}; clock check ${f(drawn.clockCheckMs)}, expectedDisplayTime = trace value: ${f(drawn.expectedCheckMs)}`);
      console.log(`  received -> drawn (viz swap) ${f(drawn.receivedToDrawn)}; received -> presentation feedback ${f(drawn.receivedToFeedback)}  [same frames: received -> presented (expectedDisplayTime) ${f(drawn.receivedToPresented)}; expectedDisplayTime - drawn ${f(drawn.expectedMinusDrawn)}, - presentation feedback ${f(drawn.expectedMinusFeedback)}]`);
      console.log(`  set -> submitted ${f(drawn.setToSubmitted)}; submitted -> viz ${f(drawn.submittedToViz)}; viz -> draw start ${f(drawn.vizToDraw)}; draw -> swapped ${f(drawn.drawToSwap)}`);
      console.log(`  expectedDisplayTime - frame_time of the BeginFrame the video thread had handled, in intervals [n, frames] ${JSON.stringify(drawn.expectedAfterHandledTick)}; by set time after it [ms bin, n, frames] ${JSON.stringify(drawn.expectedByPhase)}; the submitter's estimate per BeginFrame ${JSON.stringify(drawn.estimate)}, submissions made by a BeginFrame ${drawn.beginFrameSubmissions}`);
      console.log(`  tracing check: untraced part ${JSON.stringify(drawn.untraced)}; traced part ${JSON.stringify(drawn.tracedPart)}`);
    }
    console.log(`  receiver webrtc-stats per frame (ms): ${JSON.stringify(receiver)}`);
    console.log(`  fps: sent ${res.sentFps}, decoded ${res.receivedFps}, rVFC ${res.rvfcFps}; reader ${res.readerMsPerFrame} ms/frame; unreadable ${unreadable}, unmatched ${unmatched}`);
    console.log(`  source page painted ${pipeline.sourcePaintFps} fps; portal buffers skipped ${pipeline.skippedFps}/s; capture buffers ${JSON.stringify(captureBuffers)}`);
    console.log(`  pipeline: captured ${pipeline.capturedFps} fps, encoded ${pipeline.encodedFps} fps, capture ${pipeline.captureMsPerFrame} + mailbox wait ${pipeline.waitMsPerFrame} + convert ${pipeline.convertMsPerFrame} + x264 ${pipeline.encodeMsPerFrame} ms/frame, encoder drops ${JSON.stringify(pipeline.encoderDropped)}`);
    console.log(`  clock offsets to Date.now() (ms): ${JSON.stringify(res.clockOffsetsMs)}`);
    await page.close();
    return res;
  } finally {
    await browser?.close();
    await src?.close();
    await t.close();
    await link.close();
  }
}

const results: Record<string, unknown>[] = [];
for (const fps of rates) results.push(await run(fps));
const r60 = results.find((r) => r.fps === 60) as { captureToSent: Pcts; total: Pcts; receivedFps: number; receivedToPresented: Pcts; presentedBy: string } | undefined;
const targets = r60
  ? {
      captureToSentP50: { value: r60.captureToSent.p50, target: 8, ok: r60.captureToSent.p50 <= 8 },
      captureToSentP99: { value: r60.captureToSent.p99, target: 20, ok: r60.captureToSent.p99 <= 20 },
      noBacklogP95OverP50: { value: Math.round((r60.total.p95 / r60.total.p50) * 100) / 100, target: 1.5, ok: r60.total.p95 <= 1.5 * r60.total.p50 },
      receivedFps: { value: r60.receivedFps, target: 55, ok: r60.receivedFps >= 55 },
      receivedToPresentedP50: { value: r60.receivedToPresented.p50, target: 10, ok: r60.receivedToPresented.p50 <= 10, presentedBy: r60.presentedBy },
    }
  : undefined;
console.log(JSON.stringify({ bench: "latency", seconds, bitrateKbps, playoutDelayMs: [playoutMinMs, playoutMaxMs], results, targets1080p60: targets }));
