/**
 * A Chrome trace of a Chromium we drive (bench/latency.ts --trace-seconds): Tracing.start/end over the
 * browser's CDP session, the trace read back as a stream. Trace timestamps are base::TimeTicks in µs,
 * which on Linux is CLOCK_MONOTONIC, the clock of Node's process.hrtime: `monoToWallMs` maps them to
 * wall-clock ms like the rest of the bench (Date.now() - hrtime, read at start and end).
 */
import type { Browser, CDPSession } from "playwright-core";

export interface TraceEvent {
  name: string;
  cat: string;
  ph: string;
  ts: number;
  dur?: number;
  pid: number;
  tid: number;
  id?: string | number;
  id2?: { local?: string; global?: string };
  args?: Record<string, unknown>;
}

const monoOffsetMs = (): number => Date.now() - Number(process.hrtime.bigint()) / 1e6;

export class ChromeTrace {
  readonly #cdp: CDPSession;
  readonly #off0: number;
  #closed = false;

  private constructor(cdp: CDPSession, off0: number) {
    this.#cdp = cdp;
    this.#off0 = off0;
  }

  static async start(browser: Browser, categories: string[]): Promise<ChromeTrace> {
    const cdp = await browser.newBrowserCDPSession();
    await cdp.send("Tracing.start", {
      transferMode: "ReturnAsStream",
      traceConfig: { recordMode: "recordAsMuchAsPossible", includedCategories: categories, excludedCategories: ["*"] },
    });
    return new ChromeTrace(cdp, monoOffsetMs());
  }

  /** Ends the trace and returns its events and the offset (ms) to add to ts/1000 for wall-clock ms. */
  async stop(): Promise<{ events: TraceEvent[]; monoToWallMs: number; offsetDriftMs: number }> {
    if (this.#closed) throw new Error("trace already stopped");
    this.#closed = true;
    const done = new Promise<{ stream?: string }>((resolve) => this.#cdp.once("Tracing.tracingComplete", resolve));
    await this.#cdp.send("Tracing.end");
    const { stream } = await done;
    if (!stream) throw new Error("Tracing.tracingComplete without a stream");
    const parts: string[] = [];
    for (;;) {
      const r = await this.#cdp.send("IO.read", { handle: stream, size: 1 << 20 });
      parts.push(r.base64Encoded ? Buffer.from(r.data, "base64").toString() : r.data);
      if (r.eof) break;
    }
    await this.#cdp.send("IO.close", { handle: stream });
    await this.#cdp.detach().catch(() => undefined);
    const off1 = monoOffsetMs();
    const parsed = JSON.parse(parts.join("")) as TraceEvent[] | { traceEvents: TraceEvent[] };
    const events = Array.isArray(parsed) ? parsed : parsed.traceEvents;
    return { events, monoToWallMs: (this.#off0 + off1) / 2, offsetDriftMs: off1 - this.#off0 };
  }
}

/** One video frame followed through the receiving Chromium in a trace (all times: trace µs, monotonic). */
export interface TracedVideoFrame {
  /** WebMediaPlayerMSCompositor::SetCurrentFrame: rVFC's presentationTime ("SetCurrentFrame Timestamps"). */
  set: number;
  /** What rVFC reports as expectedDisplayTime (the same event's last_expected_display_time). */
  expected: number;
  /** frame_time of the last BeginFrame the video compositor thread had handled when the frame was set
   * (its UpdateCurrentFrame(frame_time + interval, frame_time + 2 interval)). */
  handledFrameTime?: number;
  /** The media timestamp (µs) the frame carries through the renderer's events. */
  mediaUs: number;
  /** VideoFrameSubmitter::SubmitFrame that built and sent its compositor frame: start and end. */
  submitStart?: number;
  submitEnd?: number;
  /** viz received that compositor frame (Graphics.Pipeline STEP_RECEIVE_COMPOSITOR_FRAME for the video's sink). */
  vizReceived?: number;
  /** The first Display::DrawAndSwap after it: start, SoftwareRenderer::SwapBuffers end, Display::FrameDisplayed. */
  drawStart?: number;
  swapped?: number;
  displayed?: number;
  /** viz's presentation feedback for that display frame (the end of its Graphics.Pipeline.DrawAndSwap, the
   * timestamp VideoFrameSubmitter's frame also ends with): headless, right after the swap; on Wayland, when
   * the compositor reported the buffer presented (wp_presentation). */
  feedback?: number;
  /** Why it was not followed to the display, if not. */
  lost?: "not-submitted" | "replaced-before-draw" | "no-draw-in-trace";
}

export interface VideoTraceJoin {
  frames: TracedVideoFrame[];
  /** Submissions of video compositor frames seen on each side (renderer, viz) in the joined span. */
  submitted: number;
  vizReceived: number;
  /** Receives that precede the submission they were joined to (impossible: must be 0), and the offset between
   * the two lists chosen at the start of the trace. */
  orderViolations: number;
  shift: number;
  /** The video compositor thread's BeginFrames (viz's frame_time of each tick, µs) and its interval. */
  ticks: number[];
  intervalUs: number;
  /** FrameExpectedDisplayTime events at the fallback (deadline_max) vs from presentation feedback. */
  estimate: { fallback: number; fromFeedback: number };
  /** Real submissions made from a BeginFrame rather than at once on the frame's arrival. */
  beginFrameSubmissions: number;
}

const isPipe = (e: TraceEvent, step: string): boolean =>
  e.name === "Graphics.Pipeline" && (e.args?.chrome_graphics_pipeline as { step?: string } | undefined)?.step === step;

/**
 * Follows each video frame of a WebRTC <video> (WebMediaPlayerMS, software compositing) from the moment it
 * is set as current to viz drawing it. The joins, and why each is unambiguous:
 * - set -> submission: on the one video compositor thread, by the frame's media timestamp (the argument of
 *   WebMediaPlayerMSCompositor::SetCurrentFrame and VideoFrameSubmitter::SubmitFrame); a SubmitFrame call
 *   really sent a frame when VideoFrameResourceProvider::AppendQuads ran inside it (otherwise it returned
 *   early: same frame, or still waiting for viz's ack).
 * - submission -> viz: the k-th real submission is the k-th STEP_RECEIVE_COMPOSITOR_FRAME of the video's frame
 *   sink (both ends of one mojo pipe, in order), the offset between the lists found at the trace's start;
 *   checked: no receive may precede its submission (`orderViolations`), and submitted -> viz is printed.
 * - viz -> drawn: viz's compositor thread runs receive and draw in order; the first Display::DrawAndSwap
 *   starting after the receive aggregates the newest frame of the sink, so it draws this one unless another
 *   receive of the sink came first (then this frame was replaced, never drawn).
 */
export function joinVideoFrames(events: TraceEvent[]): VideoTraceJoin | undefined {
  const ev = events.filter((e) => typeof e.ts === "number").sort((a, b) => a.ts - b.ts);
  const sets = ev.filter((e) => e.name === "SetCurrentFrame Timestamps");
  if (sets.length === 0) return undefined;
  const vtid = sets[0]!.tid;
  const vpid = sets[0]!.pid;
  const onV = (e: TraceEvent): boolean => e.pid === vpid && e.tid === vtid;
  // The media timestamp of each SetCurrentFrame: the instant just before its "Timestamps" event.
  const named = ev.filter((e) => onV(e) && e.name === "WebMediaPlayerMSCompositor::SetCurrentFrame");
  const updates = ev.filter((e) => onV(e) && e.name === "UpdateCurrentFrame" && e.args?.["Actual Render Begin"] !== undefined);
  const frames: TracedVideoFrame[] = [];
  let ni = 0;
  let ui = -1;
  for (const s of sets.filter(onV)) {
    while (ni + 1 < named.length && named[ni + 1]!.ts <= s.ts) ni++;
    while (ui + 1 < updates.length && updates[ui + 1]!.ts <= s.ts) ui++;
    const n = named[ni];
    if (!n || n.ts > s.ts || s.ts - n.ts > 1000) continue;
    const u = updates[ui];
    const b = Number(u?.args?.["Actual Render Begin"]);
    const handledFrameTime = u ? 2 * b - Number(u.args!["Actual Render End"]) : undefined;
    frames.push({ set: Number(s.args!.presentation_time), expected: Number(s.args!.last_expected_display_time), mediaUs: Number(n.args!.Timestamp), handledFrameTime });
  }
  const quads = ev.filter((e) => onV(e) && e.name === "VideoFrameResourceProvider::AppendQuads");
  const submits = ev
    .filter((e) => onV(e) && e.name === "VideoFrameSubmitter::SubmitFrame" && e.ph === "X" && e.dur !== undefined)
    .filter((e) => quads.some((q) => q.ts >= e.ts && q.ts <= e.ts + e.dur!))
    .map((e) => ({ start: e.ts, end: e.ts + e.dur!, mediaUs: Number(/timestamp:(\d+)/.exec(String(e.args?.frame ?? ""))?.[1] ?? NaN) }));
  const receives = ev.filter((e) => isPipe(e, "STEP_RECEIVE_COMPOSITOR_FRAME"));
  const sinkOf = (e: TraceEvent): string => JSON.stringify((e.args!.chrome_graphics_pipeline as { frame_sink_id?: unknown }).frame_sink_id);
  const counts = new Map<string, number>();
  for (const r of receives) counts.set(sinkOf(r), (counts.get(sinkOf(r)) ?? 0) + 1);
  const sink = [...counts.entries()].sort((a, b) => b[1] - a[1])[0]?.[0];
  const vRecv = receives.filter((r) => sinkOf(r) === sink);
  const vizTid = vRecv[0]?.tid;
  const vizPid = vRecv[0]?.pid;
  const onViz = (e: TraceEvent): boolean => e.pid === vizPid && e.tid === vizTid;
  const draws = ev.filter((e) => onViz(e) && e.name === "Display::DrawAndSwap" && e.dur !== undefined);
  const swaps = ev.filter((e) => onViz(e) && e.name === "SoftwareRenderer::SwapBuffers" && e.dur !== undefined);
  const shown = ev.filter((e) => onViz(e) && e.name === "Display::FrameDisplayed");
  // Graphics.Pipeline.DrawAndSwap: begins inside Display::DrawAndSwap, ends at the presentation feedback;
  // its ids are reused, so each begin is closed by the first end of the same id after it (swaps complete in order).
  const pipeB = ev.filter((e) => onViz(e) && e.name === "Graphics.Pipeline.DrawAndSwap" && e.ph === "b");
  const pipeE = ev.filter((e) => onViz(e) && e.name === "Graphics.Pipeline.DrawAndSwap" && e.ph === "e");
  const idOf = (e: TraceEvent): string => JSON.stringify(e.id2 ?? e.id);
  const ticks = ev.filter((e) => onViz(e) && e.name === "DelayBasedBeginFrameSource::OnTimerTick").map((e) => Number(e.args!.frame_time));
  const iv = ev.find((e) => onViz(e) && e.name === "DelayBasedBeginFrameSource::OnTimerTick")?.args?.interval;

  // Submissions and receives are the two ends of one mojo pipe, so they are in the same order (FIFO); what
  // is not known is the offset between the lists at the start of the trace (processes start tracing at
  // slightly different times: a submission may be traced without its receive, or a receive without its
  // submission). Try the offsets in -3..3 and keep the one under which no receive precedes its own
  // submission and the receive follows the submission soonest (median); at a wrong offset receives either
  // precede their submission or lag it by whole frame intervals.
  const recvOf = new Map<number, number>(); // submission index -> receive ts
  let best: { shift: number; violations: number; median: number } | undefined;
  for (let shift = -3; shift <= 3; shift++) {
    let violations = 0;
    const lags: number[] = [];
    for (let si = 0; si < submits.length; si++) {
      const r = vRecv[si + shift];
      if (!r) continue;
      if (r.ts < submits[si]!.start) violations++;
      else lags.push(r.ts - submits[si]!.end);
    }
    if (lags.length < 10) continue;
    lags.sort((a, b) => a - b);
    const cand = { shift, violations, median: lags[lags.length >> 1]! };
    if (!best || cand.violations < best.violations || (cand.violations === best.violations && cand.median < best.median)) best = cand;
  }
  const orderViolations = best?.violations ?? 0;
  const shift = best?.shift ?? 0;
  for (let si = 0; si < submits.length; si++) {
    const r = vRecv[si + shift];
    if (r) recvOf.set(si, r.ts);
  }
  const firstAfter = <T extends TraceEvent>(xs: T[], t: number): T | undefined => {
    let lo = 0;
    let hi = xs.length;
    while (lo < hi) {
      const m = (lo + hi) >> 1;
      if (xs[m]!.ts < t) lo = m + 1;
      else hi = m;
    }
    return xs[lo];
  };
  const recvTimes = vRecv.map((r) => r.ts);
  for (const f of frames) {
    const k = submits.findIndex((s) => s.mediaUs === f.mediaUs && s.start >= f.set - 50);
    if (k < 0) {
      f.lost = "not-submitted";
      continue;
    }
    f.submitStart = submits[k]!.start;
    f.submitEnd = submits[k]!.end;
    const r = recvOf.get(k);
    if (r === undefined) {
      f.lost = "no-draw-in-trace";
      continue;
    }
    f.vizReceived = r;
    const d = firstAfter(draws, r);
    if (!d) {
      f.lost = "no-draw-in-trace";
      continue;
    }
    const nextRecv = recvTimes.find((t) => t > r);
    if (nextRecv !== undefined && nextRecv < d.ts) {
      f.lost = "replaced-before-draw";
      continue;
    }
    f.drawStart = d.ts;
    const sw = firstAfter(swaps, d.ts);
    if (sw && sw.ts <= d.ts + d.dur!) f.swapped = sw.ts + sw.dur!;
    const fd = firstAfter(shown, d.ts);
    if (fd && fd.ts <= d.ts + d.dur! + 1000) f.displayed = fd.ts;
    const b = firstAfter(pipeB, d.ts);
    if (b && b.ts <= d.ts + d.dur!) {
      let e = firstAfter(pipeE, b.ts);
      for (let i = e ? pipeE.indexOf(e) : -1; i >= 0 && i < pipeE.length; i++) {
        if (idOf(pipeE[i]!) === idOf(b)) {
          e = pipeE[i];
          break;
        }
        e = undefined;
      }
      if (e) f.feedback = e.ts;
    }
  }
  // The submitter's display-time estimate per BeginFrame ("FrameExpectedDisplayTime"): its fallback is the
  // BeginFrame's deadline_max (frame_time + 2 intervals, the "Actual Render End" of the UpdateCurrentFrame
  // that follows it), otherwise now + its running mean of viz-receive -> presentation feedback.
  const fedt = ev.filter((e) => onV(e) && e.name === "FrameExpectedDisplayTime");
  const estimate = { fallback: 0, fromFeedback: 0 };
  for (const x of fedt) {
    const u = firstAfter(updates, x.ts);
    if (!u || u.ts - x.ts > 2000) continue;
    if (Math.abs(Number(x.args!.frame_expected_display_time) - Number(u.args!["Actual Render End"])) < 50) estimate.fallback++;
    else estimate.fromFeedback++;
  }
  // Submissions made from a BeginFrame (inside VideoFrameSubmitter::OnBeginFrame: the frame arrived while
  // the previous one was unacknowledged) rather than at once on arrival (SubmitSingleFrame, a "manual" ack).
  const onBf = ev.filter((e) => onV(e) && e.name === "VideoFrameSubmitter::OnBeginFrame" && e.dur !== undefined);
  const beginFrameSubmissions = submits.filter((sub) => onBf.some((o) => sub.start >= o.ts && sub.start <= o.ts + o.dur!)).length;
  return { frames, submitted: submits.length, vizReceived: vRecv.length, orderViolations, shift, ticks, intervalUs: Number(iv ?? NaN), estimate, beginFrameSubmissions };
}
