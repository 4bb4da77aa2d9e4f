/**
 * bench/latency.ts --trace-seconds: per-frame received -> drawn from a trace of the receiving Chromium joined
 * with the rVFC reader's records (kept apart from latency.ts so that a saved --trace-out file can be read
 * again offline: `node dist/bench/pages/drawn.js file.json`).
 */
import { readFileSync } from "node:fs";
import { joinVideoFrames, type TraceEvent } from "./trace.js";

/** The reader's records: [counter|-1, rtpTimestamp, receiveTime, presentationTime, expectedDisplayTime, rVFC now] (wall-clock ms). */
export type Rec = [number, number, number, number, number, number];

export interface Pcts {
  p50: number;
  p95: number;
  p99: number;
  n: number;
}
export function pcts(xs: number[]): Pcts {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  const at = (q: number): number => (s.length ? Math.round(s[Math.min(s.length - 1, Math.floor(q * s.length))]! * 10) / 10 : NaN);
  return { p50: at(0.5), p95: at(0.95), p99: at(0.99), n: s.length };
}

export interface DrawnReport {
  /** The traced span (wall-clock ms) and how many frames rVFC saw in it, how many were followed to viz's draw. */
  windowMs: [number, number];
  rvfcFrames: number;
  traced: number;
  joined: number;
  lost: Record<string, number>;
  /** Compositor-frame submissions counted on the renderer and on viz, and receives before their submission (must be 0). */
  submitted: number;
  vizReceived: number;
  /** Offset between the renderer's and viz's lists of submissions at the trace's start (joinVideoFrames). */
  shift: number;
  orderViolations: number;
  /** rVFC presentationTime - the trace's SetCurrentFrame time mapped by CLOCK_MONOTONIC (ms): the clocks agree. */
  clockCheckMs: Pcts;
  /** rVFC expectedDisplayTime - the trace's last_expected_display_time (ms, after the same mapping): the same value. */
  expectedCheckMs: Pcts;
  /** received -> drawn: the frame's receiveTime to the end of SoftwareRenderer::SwapBuffers of the display
   * frame that drew it (rVFC received -> submitted, plus the trace's SetCurrentFrame -> swap). */
  receivedToDrawn: Pcts;
  /** received -> presentation feedback of that display frame (headless: the swap; Wayland: the compositor's
   * wp_presentation time), for the frames that have one. */
  receivedToFeedback: Pcts;
  /** The same frames' received -> presented (expectedDisplayTime), for comparison. */
  receivedToPresented: Pcts;
  /** expectedDisplayTime - drawn (ms): how far Chromium's prediction is from the real draw. */
  expectedMinusDrawn: Pcts;
  /** expectedDisplayTime - presentation feedback (ms). */
  expectedMinusFeedback: Pcts;
  /** The parts: set -> submitted (VideoFrameSubmitter::SubmitFrame end: the software frame copied and sent),
   * submitted -> viz received, viz received -> draw start, draw start -> swapped. */
  setToSubmitted: Pcts;
  submittedToViz: Pcts;
  vizToDraw: Pcts;
  drawToSwap: Pcts;
  /** expectedDisplayTime - frame_time of the BeginFrame the video compositor thread had handled when the
   * frame was set, in intervals: [intervals, frames]. */
  expectedAfterHandledTick: [number, number][];
  /** Ditto, by where the frame was set in that interval: [ms after that frame_time (2 ms bins), intervals, frames]. */
  expectedByPhase: [number, number, number][];
  /** The submitter's per-BeginFrame display-time estimate: at its fallback (deadline_max) or from
   * presentation feedback, and how many submissions a BeginFrame made (see docs/streaming.md). */
  estimate: { fallback: number; fromFeedback: number };
  beginFrameSubmissions: number;
  /** Same-run check that tracing does not distort: untraced part vs traced part. */
  untraced: { rvfcFps: number; captureToSent: Pcts; receivedToPresented: Pcts };
  tracedPart: { rvfcFps: number; captureToSent: Pcts; receivedToPresented: Pcts };
}

/**
 * `feedbackOut`, when given, receives for each joined rVFC record the wall-clock time (ms) of its display
 * frame's presentation feedback: the measured "presented" (bench/latency.ts).
 */
export function drawnReport(events: TraceEvent[], monoToWallMs: number, windowMs: [number, number], records: Rec[], rows: { received: number; captureToSent: number; presented: number; tick: number }[], untracedMs: [number, number], feedbackOut?: Map<Rec, number>): DrawnReport | undefined {
  const j = joinVideoFrames(events);
  if (!j) return undefined;
  const inWin = records.filter((r) => r[5] >= windowMs[0] && r[5] <= windowMs[1]);
  // Records by presentationTime (wall ms); a trace frame maps to the nearest within 2 ms after the clock
  // mapping (frames are 16.7 ms apart at 60 fps, so the nearest one is unambiguous).
  const recs = [...records].sort((a, b) => a[3] - b[3]);
  const nearest = (t: number): Rec | undefined => {
    let lo = 0;
    let hi = recs.length - 1;
    while (lo < hi) {
      const m = (lo + hi) >> 1;
      if (recs[m]![3] < t) lo = m + 1;
      else hi = m;
    }
    const c = [recs[lo - 1], recs[lo]].filter((r): r is Rec => !!r);
    c.sort((a, b) => Math.abs(a[3] - t) - Math.abs(b[3] - t));
    return c[0] && Math.abs(c[0][3] - t) < 2 ? c[0] : undefined;
  };
  const lost: Record<string, number> = {};
  const clock: number[] = [];
  const expCheck: number[] = [];
  const rToDrawn: number[] = [];
  const rToPresented: number[] = [];
  const rToFeedback: number[] = [];
  const expMinusFeedback: number[] = [];
  const expMinusDrawn: number[] = [];
  const setToSub: number[] = [];
  const subToViz: number[] = [];
  const vizToDraw: number[] = [];
  const drawToSwap: number[] = [];
  const handled = new Map<number, number>();
  const byPhase = new Map<string, number>();
  let traced = 0;
  let joined = 0;
  const T = j.intervalUs;
  for (const f of j.frames) {
    const setWall = f.set / 1000 + monoToWallMs;
    if (setWall < windowMs[0] || setWall > windowMs[1]) continue;
    traced++;
    if (f.handledFrameTime !== undefined && Number.isFinite(T)) {
      const k = Math.round((f.expected - f.handledFrameTime) / T);
      handled.set(k, (handled.get(k) ?? 0) + 1);
      const bin = Math.floor((f.set - f.handledFrameTime) / 2000) * 2;
      byPhase.set(`${bin},${k}`, (byPhase.get(`${bin},${k}`) ?? 0) + 1);
    }
    if (f.lost) {
      lost[f.lost] = (lost[f.lost] ?? 0) + 1;
      continue;
    }
    const r = nearest(setWall);
    if (!r || f.swapped === undefined) {
      lost[r ? "no-swap" : "no-rvfc-record"] = (lost[r ? "no-swap" : "no-rvfc-record"] ?? 0) + 1;
      continue;
    }
    joined++;
    const [, , received, submitted, presented] = r;
    clock.push(submitted - setWall);
    expCheck.push(presented - (f.expected / 1000 + monoToWallMs + (submitted - setWall)));
    const drawn = submitted + (f.swapped - f.set) / 1000;
    rToDrawn.push(drawn - received);
    rToPresented.push(presented - received);
    if (f.feedback !== undefined) {
      const feedbackWall = submitted + (f.feedback - f.set) / 1000;
      feedbackOut?.set(r, feedbackWall);
      rToFeedback.push(feedbackWall - received);
      expMinusFeedback.push((f.expected - f.feedback) / 1000);
    }
    expMinusDrawn.push(presented - drawn);
    setToSub.push((f.submitEnd! - f.set) / 1000);
    subToViz.push((f.vizReceived! - f.submitEnd!) / 1000);
    vizToDraw.push((f.drawStart! - f.vizReceived!) / 1000);
    drawToSwap.push((f.swapped - f.drawStart!) / 1000);
  }
  const part = (a: number, b: number): { rvfcFps: number; captureToSent: Pcts; receivedToPresented: Pcts } => {
    const xs = rows.filter((x) => x.tick >= a && x.tick <= b);
    return { rvfcFps: Math.round((records.filter((r) => r[5] >= a && r[5] <= b).length / ((b - a) / 1000)) * 10) / 10, captureToSent: pcts(xs.map((x) => x.captureToSent)), receivedToPresented: pcts(xs.map((x) => x.presented - x.received)) };
  };
  return {
    windowMs,
    rvfcFrames: inWin.length,
    traced,
    joined,
    lost,
    submitted: j.submitted,
    vizReceived: j.vizReceived,
    orderViolations: j.orderViolations,
    shift: j.shift,
    clockCheckMs: pcts(clock),
    expectedCheckMs: pcts(expCheck),
    receivedToDrawn: pcts(rToDrawn),
    receivedToFeedback: pcts(rToFeedback),
    receivedToPresented: pcts(rToPresented),
    expectedMinusDrawn: pcts(expMinusDrawn),
    expectedMinusFeedback: pcts(expMinusFeedback),
    setToSubmitted: pcts(setToSub),
    submittedToViz: pcts(subToViz),
    vizToDraw: pcts(vizToDraw),
    drawToSwap: pcts(drawToSwap),
    expectedAfterHandledTick: [...handled.entries()].sort((a, b) => a[0] - b[0]),
    expectedByPhase: [...byPhase.entries()].map(([k, n]) => [...k.split(",").map(Number), n] as [number, number, number]).sort((a, b) => a[0] - b[0] || a[1] - b[1]),
    estimate: j.estimate,
    beginFrameSubmissions: j.beginFrameSubmissions,
    untraced: part(untracedMs[0], untracedMs[1]),
    tracedPart: part(windowMs[0], windowMs[1]),
  };
}


// Offline: the figures of a saved --trace-out file (the tracing check needs the agent's traces: not saved).
if (process.argv[1] && import.meta.url === new URL(`file://${process.argv[1]}`).href) {
  const d = JSON.parse(readFileSync(process.argv[2]!, "utf8")) as { monoToWallMs: number; window: [number, number]; records: Rec[]; events: TraceEvent[] };
  const { untraced: _u, tracedPart: _t, ...rest } = drawnReport(d.events, d.monoToWallMs, d.window, d.records, [], [0, 0]) ?? ({} as DrawnReport);
  console.log(JSON.stringify(rest));
}
