/**
 * A synthetic link for the per-viewer ABR and send window (ViewerPacer): a tbf-like bottleneck (rate,
 * 100 ms queue, drops beyond), an encoder whose 1 s output varies around its setpoint like x264's, the
 * real DelayTracker turning arrivals into capacity samples / queueing delay / acked rate, the real
 * AbrController, PeerSession's feeding (the window's holds too: pushback) and skipping rules, and the
 * stage's dead band. Time steps of 1 ms;
 * seeded randomness. Used by test/rtc/pacer.test.ts.
 */
import { AbrController, DelayTracker } from "../../agent/rtc/abr.js";
import { ViewerPacer } from "../../agent/rtc/pacer.js";

const WIRE = 88;
const PAYLOAD = 1200;

function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface SimOptions {
  /** Bottleneck rate (bit/s, wire bytes) at time t (ms). */
  capacity: (t: number) => number;
  ms: number;
  startBps: number;
  /** false: the window never limits (the sender before ViewerPacer). */
  window: boolean;
  /** Std of the encoder's slowly varying rate error (AR(1), ~1 s correlation) and of each frame's own. */
  sigma: number | ((setpointBps: number) => number);
  /** Wire bytes per bit of setpoint (an exact encoder: ~1.075), or that at time t (ms). */
  overshoot: number | ((t: number) => number);
  /** A keyframe (4 x a frame) this often (ms); 0: only when the sender skips to one. */
  keyframeEveryMs?: number;
  seed: number;
  /** false: the window's holds are not fed to the controller (the sender before the pushback). */
  pushback?: boolean;
  /** Hold figures (`hold`) from this time on (ms; default 5000, after settling). */
  holdFromMs?: number;
}

export interface SimResult {
  /** Rate offered to the bottleneck (arrivals, sent + dropped), 1 s windows every 250 ms. */
  windows: { t: number; bps: number }[];
  drops: { t: number }[];
  held: number;
  sent: number;
  maxWaitMs: number;
  meanWaitMs: number;
  skipped: number;
  targets: { t: number; bps: number }[];
  /** The controller's capacity (median of the samples), every 200 ms. */
  capacities: { t: number; bps: number }[];
  /** The window's holds from `holdFromMs` on (ViewerPacer.holdStats): all, and the 1 s window's alone. */
  hold: ReturnType<typeof ViewerPacer.holdStats>;
  windowHold: ReturnType<typeof ViewerPacer.holdStats>;
  /** The pushback ratio, every 200 ms. */
  pushbacks: { t: number; r: number }[];
}

export function simulate(o: SimOptions): SimResult {
  const rand = rng(o.seed);
  const sigmaAt = (bps: number): number => (typeof o.sigma === "number" ? o.sigma : o.sigma(bps));
  const gauss = (): number => Math.sqrt(-2 * Math.log(rand() + 1e-12)) * Math.cos(2 * Math.PI * rand());
  const abr = new AbrController({ minBps: 300_000, maxBps: 8_000_000, startBps: o.startBps });
  const tracker = new DelayTracker();
  let group = 0;
  const pacer = new ViewerPacer<number>(() => ++group);
  let seq = 0;
  let setpoint = abr.target, lastSet = setpoint;
  let offSince: number | undefined;
  let drift = 0;
  let nextFrame = 0, nextDrain: number | undefined;
  let waitingKeyframe = false, keyframeDue = true;
  let skipped = 0;
  // The bottleneck: FIFO of packets, draining at the capacity; 20 ms of propagation after it.
  // The bottleneck, exact in time: busy until `busyUntil` with what it holds; a packet that would wait
  // more than 100 ms is dropped.
  let busyUntil = 0;
  const inFlight: { seq: number; at: number }[] = [];
  const arrivals: { sequenceNumber: number; received: boolean; receivedAtMs: number }[] = [];
  const offered: { t: number; bytes: number }[] = [];
  const handed: { t: number; bytes: number }[] = [];
  const setpoints: { t: number; bps: number }[] = [];
  const res: SimResult = { windows: [], drops: [], held: 0, sent: 0, maxWaitMs: 0, meanWaitMs: 0, skipped: 0, targets: [], capacities: [], hold: ViewerPacer.holdStats(undefined, []), windowHold: ViewerPacer.holdStats(undefined, []), pushbacks: [] };
  const holdFrom = o.holdFromMs ?? 5000;
  let histAt: number[] | undefined, windowHistAt: number[] | undefined;
  let lastCap: { bps: number; at: number } | undefined;

  const send = (t: number) => (p: { item: number; bytes: number; group: number }): void => {
    tracker.sent(p.item, t, p.bytes, p.group);
    offered.push({ t, bytes: p.bytes });
    const cap = o.capacity(t);
    const start = Math.max(t, busyUntil);
    if (start - t > 100) {
      res.drops.push({ t });
      arrivals.push({ sequenceNumber: p.item, received: false, receivedAtMs: 0 });
    } else {
      busyUntil = start + (p.bytes * 8 * 1000) / cap;
      inFlight.push({ seq: p.item, at: busyUntil + 20 });
    }
  };
  const drain = (t: number): void => {
    const cap = abr.steadyCapacityBps, acked = abr.ackedBps;
    if (cap !== undefined) lastCap = acked !== undefined && cap < 0.85 * acked ? undefined : { bps: cap, at: t };
    pacer.capacityBps = o.window && lastCap && t - lastCap.at <= 3000 ? lastCap.bps : Infinity;
    pacer.queueMs = abr.queueingDelayMs;
    const next = pacer.drain(t, send(t));
    nextDrain = next === undefined ? undefined : t + Math.ceil(next);
  };

  for (let t = 0; t <= o.ms; t++) {
    if (t === holdFrom) {
      histAt = [...pacer.counters.holdHist];
      windowHistAt = [...pacer.counters.windowHist];
    }
    // The encoder: a frame every 33.3 ms, sized by the setpoint, its overshoot and its slow drift.
    if (t >= nextFrame) {
      nextFrame += 1000 / 30;
      drift = Math.exp(-1 / 30) * drift + Math.sqrt(1 - Math.exp(-2 / 30)) * sigmaAt(setpoint) * gauss();
      const overshoot = typeof o.overshoot === "number" ? o.overshoot : o.overshoot(t);
      let bytes = ((setpoint * overshoot) / 8 / 30) * Math.max(0.2, 1 + drift + 0.2 * sigmaAt(setpoint) * gauss());
      const periodic = o.keyframeEveryMs !== undefined && o.keyframeEveryMs > 0 && Math.floor(t / o.keyframeEveryMs) !== Math.floor((t - 1000 / 30) / o.keyframeEveryMs);
      const keyframe = keyframeDue || periodic;
      keyframeDue = false;
      if (keyframe) bytes *= 4;
      const n = Math.ceil(bytes / (PAYLOAD + WIRE));
      // As PeerSession.sendFrame: skip to a keyframe when the window held packets too long.
      if (waitingKeyframe && !keyframe) skipped++;
      else if (!keyframe && pacer.overdue(t)) {
        skipped++;
        waitingKeyframe = true;
        keyframeDue = true;
      } else {
        waitingKeyframe = false;
        const g = ++group;
        pacer.push(Array.from({ length: n }, () => ({ item: seq++ & 0xffff, bytes: Math.round(bytes / n), group: g })), t, keyframe);
        handed.push({ t, bytes });
        drain(t);
      }
    }
    if (nextDrain !== undefined && t >= nextDrain) drain(t);
    // What crossed the bottleneck by now reaches the receiver.
    while (inFlight.length > 0 && inFlight[0]!.at <= t) {
      const p = inFlight.shift()!;
      arrivals.push({ sequenceNumber: p.seq, received: true, receivedAtMs: p.at });
    }
    // Transport-cc feedback every 50 ms, as PeerSession digests it.
    if (t % 50 === 0 && arrivals.length > 0) {
      const r = tracker.feedback(arrivals.splice(0), t);
      if (r) {
        if (r.queueingDelayMs !== undefined) abr.onQueueingDelay(r.queueingDelayMs, t);
        if (r.ackedBps !== undefined) abr.onAckedRate(r.ackedBps, t);
        for (const c of r.capacityBps) abr.onCapacity(c, t);
        if (r.recentCount >= 20) abr.onLoss(r.recentLoss, t);
      }
    }
    // PeerSession's tick: what it was handed over the last second, against the setpoints.
    if (t % 200 === 0) {
      while (handed.length > 0 && handed[0]!.t <= t - 1000) handed.shift();
      setpoints.push({ t, bps: setpoint });
      while (setpoints.length > 0 && setpoints[0]!.t <= t - 1000) setpoints.shift();
      if (t >= 1000) {
        const enc = setpoints.map((x) => x.bps);
        abr.onSendRate(handed.reduce((s, x) => s + x.bytes * 8, 0), t, 1000, { meanBps: enc.reduce((a, b) => a + b, 0) / enc.length, minBps: Math.min(...enc), maxBps: Math.max(...enc) });
      }
      const hold = pacer.takeWindowHoldMs(t);
      if (o.pushback !== false) abr.onSendHold(hold, t);
      abr.update(t);
      res.pushbacks.push({ t, r: abr.pushback });
      res.targets.push({ t, bps: abr.target });
      res.capacities.push({ t, bps: abr.capacityBps ?? 0 });
    }
    // The stage: every 250 ms, past a 5 % dead band, or 2-5 % off for a second.
    if (t % 250 === 0) {
      const off = Math.abs(abr.target - lastSet) / lastSet;
      if (off < 0.02) offSince = undefined;
      else offSince ??= t;
      if (off >= 0.05 || (offSince !== undefined && t - offSince >= 1000)) {
        setpoint = lastSet = abr.target;
        offSince = undefined;
      }
      while (offered.length > 0 && offered[0]!.t <= t - 1000) offered.shift();
      if (t >= 1000) res.windows.push({ t, bps: offered.reduce((s, x) => s + x.bytes * 8, 0) });
    }
  }
  res.held = pacer.counters.held;
  res.sent = pacer.counters.sent;
  res.maxWaitMs = pacer.counters.maxWaitMs;
  res.meanWaitMs = pacer.counters.held > 0 ? pacer.counters.waitMsSum / pacer.counters.held : 0;
  res.skipped = skipped;
  res.hold = ViewerPacer.holdStats(histAt, pacer.counters.holdHist);
  res.windowHold = ViewerPacer.holdStats(windowHistAt, pacer.counters.windowHist);
  return res;
}

