/**
 * Per-viewer adaptive bitrate: pure logic, fed with what the browser reports (RTCP receiver reports,
 * REMB, transport-cc feedback) and read for that viewer's target. No timers, no I/O: tests drive it with
 * synthetic feedback and a fake clock.
 *
 * Rules (a simplified cousin of GCC, tuned for a screen whose encoder is shared; see docs/streaming.md):
 * - loss above 10 % (from transport-cc, or RTCP RR when transport-cc is not negotiated): target *= 1 - loss/2;
 * - queueing delay above `delayThresholdMs` and still growing: target *= 0.85;
 *   decreases are at least `decreaseSpacingMs` apart, so one congestion event is not counted thrice, but
 *   sustained congestion cuts within a second (about x0.6 per second at worst from delay alone);
 * - REMB, when the browser sends it, is a ceiling;
 * - otherwise, after `holdMs` without congestion, probe upward by `increasePerSecond` (multiplicative),
 *   never above max.
 */
export interface AbrOptions {
  minBps: number;
  maxBps: number;
  startBps: number;
  delayThresholdMs?: number;
  decreaseSpacingMs?: number;
  holdMs?: number;
  increasePerSecond?: number;
}

export type AbrState = "start" | "increase" | "hold" | "decrease";

export class AbrController {
  readonly #o: Required<AbrOptions>;
  #target: number;
  #state: AbrState = "start";
  #lastUpdate: number | undefined;
  #lastDecrease = -Infinity;
  #loss = 0;
  #lossAt = -Infinity;
  #remb: number | undefined;
  #rembAt = -Infinity;
  #delay: { t: number; d: number }[] = [];
  #rttMs: number | undefined;
  #preferredMax: number | undefined;

  constructor(opts: AbrOptions) {
    this.#o = { delayThresholdMs: 40, decreaseSpacingMs: 300, holdMs: 1000, increasePerSecond: 0.08, ...opts };
    this.#target = clamp(opts.startBps, opts.minBps, opts.maxBps);
  }

  get target(): number {
    return Math.round(this.#target);
  }

  get state(): AbrState {
    return this.#state;
  }

  get lossFraction(): number {
    return this.#loss;
  }

  get rttMs(): number | undefined {
    return this.#rttMs;
  }

  /** Smoothed queueing delay (ms above the path's base delay), from transport-cc. */
  get queueingDelayMs(): number {
    return this.#smoothedDelay();
  }

  /** Loss seen by the receiver over the last interval, 0..1 (RR fractionLost/256, or transport-cc). */
  onLoss(fraction: number, now: number): void {
    if (!Number.isFinite(fraction)) return;
    this.#loss = clamp(fraction, 0, 1);
    this.#lossAt = now;
  }

  onRtt(ms: number): void {
    if (Number.isFinite(ms) && ms >= 0) this.#rttMs = ms;
  }

  onRemb(bps: number, now: number): void {
    if (!Number.isFinite(bps) || bps <= 0) return;
    this.#remb = bps;
    this.#rembAt = now;
  }

  /** One queueing-delay sample (ms), e.g. per transport-cc feedback. */
  onQueueingDelay(ms: number, now: number): void {
    if (!Number.isFinite(ms)) return;
    this.#delay.push({ t: now, d: Math.max(0, ms) });
    while (this.#delay.length > 0 && this.#delay[0]!.t < now - 1000) this.#delay.shift();
  }

  /** A ceiling chosen by the viewer (quality preference); undefined removes it. */
  setPreferredMax(bps: number | undefined): void {
    this.#preferredMax = bps;
  }

  /** Advances the controller to `now` and returns the target (bits per second). */
  update(now: number): number {
    const dt = this.#lastUpdate === undefined ? 0 : Math.max(0, now - this.#lastUpdate) / 1000;
    this.#lastUpdate = now;
    const o = this.#o;
    const lossFresh = now - this.#lossAt < 1500;
    const loss = lossFresh ? this.#loss : 0;
    const delayHigh = this.#smoothedDelay() > o.delayThresholdMs && this.#delaySlope() >= 0;
    const canDecrease = now - this.#lastDecrease >= o.decreaseSpacingMs;

    if ((loss > 0.1 || delayHigh) && canDecrease) {
      const byLoss = loss > 0.1 ? 1 - loss / 2 : 1;
      const byDelay = delayHigh ? 0.85 : 1;
      this.#target *= Math.min(byLoss, byDelay);
      this.#lastDecrease = now;
      this.#state = "decrease";
    } else if (loss > 0.02 || delayHigh || now - this.#lastDecrease < o.holdMs) {
      if (this.#state !== "decrease" || canDecrease) this.#state = "hold";
    } else {
      this.#target *= 1 + o.increasePerSecond * dt;
      this.#state = "increase";
    }
    let ceiling = o.maxBps;
    if (this.#remb !== undefined && now - this.#rembAt < 3000) ceiling = Math.min(ceiling, this.#remb);
    if (this.#preferredMax !== undefined) ceiling = Math.min(ceiling, this.#preferredMax);
    this.#target = clamp(this.#target, o.minBps, Math.max(o.minBps, ceiling));
    return this.target;
  }

  #smoothedDelay(): number {
    const recent = this.#delay.slice(-5);
    if (recent.length === 0) return 0;
    return recent.reduce((s, x) => s + x.d, 0) / recent.length;
  }

  /** Least-squares slope of the delay samples of the last second, ms per second. */
  #delaySlope(): number {
    const n = this.#delay.length;
    if (n < 3) return 0;
    const t0 = this.#delay[0]!.t;
    let sx = 0, sy = 0, sxx = 0, sxy = 0;
    for (const { t, d } of this.#delay) {
      const x = (t - t0) / 1000;
      sx += x;
      sy += d;
      sxx += x * x;
      sxy += x * d;
    }
    const den = n * sxx - sx * sx;
    return den === 0 ? 0 : (n * sxy - sx * sy) / den;
  }
}

/**
 * Turns transport-cc feedback into queueing delay and loss: remembers when each transport-wide sequence
 * number was sent, and compares with when the browser says it arrived. The one-way delay includes an
 * unknown clock offset, so the queueing delay is the delay above the smallest one seen in `baseWindowMs`.
 */
export class DelayTracker {
  static readonly SIZE = 8192;
  readonly #sentAt = new Float64Array(DelayTracker.SIZE);
  readonly #seqs = new Int32Array(DelayTracker.SIZE).fill(-1);
  readonly #baseWindowMs: number;
  #mins: { t: number; d: number }[] = [];

  constructor(baseWindowMs = 10_000) {
    this.#baseWindowMs = baseWindowMs;
  }

  sent(wideSeq: number, atMs: number): void {
    const i = wideSeq % DelayTracker.SIZE;
    this.#seqs[i] = wideSeq;
    this.#sentAt[i] = atMs;
  }

  /**
   * Feedback for a run of packets. Returns the queueing delay of the last received packet (ms) and the
   * loss fraction among the packets it reports, or undefined when it covered nothing we know.
   */
  feedback(results: readonly { sequenceNumber: number; received: boolean; receivedAtMs: number }[], nowMs: number): { queueingDelayMs: number | undefined; loss: number; count: number } | undefined {
    let known = 0, lost = 0;
    let last: number | undefined;
    for (const r of results) {
      const i = r.sequenceNumber % DelayTracker.SIZE;
      if (this.#seqs[i] !== r.sequenceNumber) continue;
      known++;
      if (!r.received) {
        lost++;
        continue;
      }
      const d = r.receivedAtMs - this.#sentAt[i]!;
      last = d;
      this.#noteDelay(d, nowMs);
    }
    if (known === 0) return undefined;
    const base = this.#base();
    return { queueingDelayMs: last === undefined || base === undefined ? undefined : last - base, loss: lost / known, count: known };
  }

  #noteDelay(d: number, now: number): void {
    // Monotonic deque of (time, delay) for a sliding-window minimum.
    while (this.#mins.length > 0 && this.#mins[this.#mins.length - 1]!.d >= d) this.#mins.pop();
    this.#mins.push({ t: now, d });
    while (this.#mins.length > 0 && this.#mins[0]!.t < now - this.#baseWindowMs) this.#mins.shift();
  }

  #base(): number | undefined {
    return this.#mins[0]?.d;
  }
}

function clamp(v: number, lo: number, hi: number): number {
  return Math.min(hi, Math.max(lo, v));
}

/** The parts of a werift TransportWideCC feedback that arrival times are computed from. */
export interface TwccFeedback {
  baseSequenceNumber: number;
  packetStatusCount: number;
  /** Multiples of 64 ms. */
  referenceTime: number;
  packetChunks: ({ runLength: number; packetStatus: number } | { symbolList: number[] })[];
  recvDeltas: { delta: number }[];
}

/**
 * Per-packet results of a transport-cc feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01).
 * werift's own `packetResults` skips status-vector chunks (which Chromium sends most of the time) and
 * truncates each delta to whole milliseconds, so it is recomputed here from the parsed chunks.
 */
export function twccPacketResults(f: TwccFeedback): { sequenceNumber: number; received: boolean; receivedAtMs: number }[] {
  const statuses: number[] = [];
  for (const c of f.packetChunks) {
    if ("symbolList" in c) statuses.push(...c.symbolList);
    else for (let i = 0; i < c.runLength; i++) statuses.push(c.packetStatus);
    if (statuses.length >= f.packetStatusCount) break;
  }
  statuses.length = Math.min(statuses.length, f.packetStatusCount);
  const out: { sequenceNumber: number; received: boolean; receivedAtMs: number }[] = [];
  let t = f.referenceTime * 64;
  let d = 0;
  for (let i = 0; i < statuses.length; i++) {
    const seq = (f.baseSequenceNumber + i) & 0xffff;
    const st = statuses[i]!;
    // 1: received, small delta; 2: received, large or negative delta; 0: not received.
    if (st === 1 || st === 2) {
      const delta = f.recvDeltas[d++];
      if (!delta) break;
      t += delta.delta / 1000;
      out.push({ sequenceNumber: seq, received: true, receivedAtMs: t });
    } else out.push({ sequenceNumber: seq, received: false, receivedAtMs: 0 });
  }
  return out;
}
