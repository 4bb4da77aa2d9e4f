/**
 * Per-viewer adaptive bitrate: pure logic, fed with what the browser reports (RTCP receiver reports,
 * REMB, transport-cc feedback, digested by `DelayTracker`) and read for that viewer's target. No timers,
 * no I/O: tests drive it with synthetic feedback and a fake clock.
 *
 * Rules (a cousin of GCC, tuned for a screen whose encoder is shared; see docs/streaming.md):
 * - Congestion from delay: the *standing* queueing delay (the smallest of each feedback report, so a
 *   frame's own burst through the bottleneck is not read as congestion) is above `delayThresholdMs` and
 *   not clearly falling (a queue pinned at its limit wobbles), or above `delayTrendFloorMs` and rising
 *   faster than `delayTrendMsPerS` (least-squares slope of the last second: the trend shows a queue
 *   growing before it is long). Congestion from loss: above 10 % over the last second.
 * - Decrease on delay: to 0.85 x the rate the receiver really got (transport-cc, last 500 ms), which is
 *   the bottleneck's rate while its queue is not empty; it does not compound while the queue drains, and
 *   loss at that time (the queue's overflow) adds nothing. A queue that has not fallen 1 s after a cut:
 *   target x 0.9. Without an acked rate: target x 0.85. Loss without a standing queue: target x
 *   (1 - loss/2). Decreases are at least `decreaseSpacingMs` apart.
 * - Increase, `holdMs` after the last congestion and once the standing queue is short: towards
 *   `capacityUse` x the path's capacity, measured by the dispersion of each frame's packets at the
 *   receiver (`onCapacity`: a frame sent as a burst leaves the bottleneck at the bottleneck's rate),
 *   exponentially with a time constant of `approachMs` (at most doubling per second), so the goal is
 *   never crossed; from above too,
 *   unless more arrived than the samples say. This tests the link without exceeding it: the rate settles
 *   under a limit and climbs within seconds when the limit is raised. Without capacity samples (no
 *   transport-cc, a near-static screen sending small frames): the blind probe of old,
 *   `increasePerSecond` multiplicative.
 * - Rates about the link become targets divided by the encoder's measured overshoot (`onSendRate`).
 * - Packets held by the viewer's send window (`onSendHold`) push the target handed out back (x 0.92,
 *   recovering slowly): the encoder makes less instead of packets waiting at the sender.
 * - REMB, when the browser sends it, and the viewer's preference are ceilings.
 */
export interface AbrOptions {
  minBps: number;
  maxBps: number;
  startBps: number;
  /** Standing queueing delay that is congestion unless it falls (ms). */
  delayThresholdMs?: number;
  /** Standing queueing delay above which a fast-rising trend is congestion already (ms). */
  delayTrendFloorMs?: number;
  /** Rise of the standing queueing delay that is congestion (ms per second). */
  delayTrendMsPerS?: number;
  decreaseSpacingMs?: number;
  holdMs?: number;
  /** Blind increase without capacity samples, fraction per second. */
  increasePerSecond?: number;
  /** Fraction of the measured capacity the target approaches (and never exceeds by increasing). */
  capacityUse?: number;
  /** Time constant of the approach to that goal (ms). */
  approachMs?: number;
}

export type AbrState = "start" | "increase" | "hold" | "decrease";

/** Multiplicative decrease (GCC's beta). */
const BETA = 0.85;
/** A standing queue that has not started to fall this long after a cut calls for another cut (ms). */
const STUCK_MS = 1000;
/** Fastest increase towards a measured capacity, fraction per second. */
const MAX_INCREASE_PER_S = 1;
/** How late the encoder follows a new target (the stage re-evaluates every 250 ms, then the next frame). */
const ENCODER_LAG_MS = 300;
/** After the measured capacity jumped up, the encoder's overshoot is relearned faster for this long (ms). */
const RELEARN_MS = 3000;
/**
 * Least overshoot factor (wire bytes per bit of target; an exact encoder is ~1.075 with the packets'
 * overhead): an encoder making less than its target is compensated down to this. x264 at 5 Mbit/s on a
 * terminal made ~9 % less than its target in some runs: uncompensated (1), the steady rate sat at 0.85-0.90
 * of the link and the climb to a raised link missed 5 s (8.4 and 11.5 s). Compensated, its peaks once
 * put 2 Mbit/s over its limit in 1 s windows in 5 runs of 5; the send window (ViewerPacer) now holds
 * those peaks at the sender.
 */
const MIN_OVERSHOOT = 0.93;
/** Sending less than this share of the target is the content's limit, not the encoder's error. */
const CONTENT_LIMITED = 0.8;
/** Window of the steady capacity (ms). */
const STEADY_CAPACITY_MS = 3000;
/** A capacity this many times the one the overshoot was last learned at (or this many times less) is a jump. */
const CAPACITY_JUMP = 1.4;
/**
 * Send-window pushback (see `onSendHold`): a hold longer than PUSHBACK_HOLD_MS pushes the target back by
 * PUSHBACK_STEP, at most every PUSHBACK_SPACING_MS (the encoder follows a new target ~300-500 ms late:
 * the stage's 250 ms tick, then its next frames; and the window still holds the old rate's bytes for up
 * to 1 s: cutting every 500 ms cut twice for one peak, and on the synthetic link the rate sank to 0.84 of
 * it); PUSHBACK_RELEASE_MS without a hold, the ratio comes back by PUSHBACK_RECOVER_PER_S
 * (multiplicative), up to 1. The step is over the stage's 5 % dead band, so it reaches the encoder at the
 * stage's next tick.
 */
const PUSHBACK_HOLD_MS = 0;
const PUSHBACK_STEP = 0.92;
const PUSHBACK_SPACING_MS = 700;
const PUSHBACK_RELEASE_MS = 1000;
const PUSHBACK_RECOVER_PER_S = 0.02;
const PUSHBACK_MIN = 0.5;

export class AbrController {
  readonly #o: Required<AbrOptions>;
  #target: number;
  #state: AbrState = "start";
  #lastUpdate: number | undefined;
  #lastDecrease = -Infinity;
  #lastCongested = -Infinity;
  #lastQueueCongested = -Infinity;
  #levelAtDecrease = 0;
  #loss = 0;
  #lossAt = -Infinity;
  #remb: number | undefined;
  #rembAt = -Infinity;
  #delay: { t: number; d: number }[] = [];
  #acked: number | undefined;
  #ackedAt = -Infinity;
  #capacity: { t: number; bps: number }[] = [];
  /** Targets of the last 2.5 s: what the encoder was asked for during a send-rate window. */
  #targets: { t: number; bps: number }[] = [];
  /** What the encoder really sends per bit of target (EWMA over steady periods), 1 = exact. */
  #utilization = 1;
  /** The capacity when the overshoot was last learned, and when it was last seen to jump away from it. */
  #capacityAtLearn: number | undefined;
  #capacityJumpAt = -Infinity;
  #rttMs: number | undefined;
  #preferredMax: number | undefined;
  /** The target handed out: `#target` x the send window's pushback, within the ceilings. */
  #out: number;
  #pushback = 1;
  #sendHoldMs = 0;
  #sendHoldAt = -Infinity;
  #lastSendHold = -Infinity;
  #lastPushback = -Infinity;
  /** The measured capacity at the last pushback. */
  #pushbackCapacity: number | undefined;

  constructor(opts: AbrOptions) {
    this.#o = {
      delayThresholdMs: 15, delayTrendFloorMs: 8, delayTrendMsPerS: 60, decreaseSpacingMs: 300, holdMs: 1000,
      increasePerSecond: 0.08, capacityUse: 0.93, approachMs: 400, ...opts,
    };
    this.#target = clamp(opts.startBps, opts.minBps, opts.maxBps);
    this.#out = this.#target;
  }

  /** The target for this viewer's encoder (bit/s): the controller's rate x the send window's pushback. */
  get target(): number {
    return Math.round(this.#out);
  }

  /** The send window's pushback ratio (1: none; see `onSendHold`). */
  get pushback(): number {
    return this.#pushback;
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

  /** Smoothed standing queueing delay (ms above the path's base delay), from transport-cc. */
  get queueingDelayMs(): number {
    return this.#smoothedDelay();
  }

  /**
   * A standing queue (congestion from delay) seen within `holdMs` of the last update: a bottleneck's queue
   * is full, and whatever is added to it (resends) only keeps it full. Loss alone is not that.
   */
  get queueCongested(): boolean {
    return (this.#lastUpdate ?? -Infinity) - this.#lastQueueCongested < this.#o.holdMs;
  }

  /** The receive rate transport-cc acknowledged lately (bit/s), if fresh. */
  get ackedBps(): number | undefined {
    return this.#acked;
  }

  /** The path's capacity from frame dispersion (median of the last samples, bit/s), if known. */
  get capacityBps(): number | undefined {
    return this.#capacityNow(this.#lastUpdate ?? 0);
  }

  /**
   * The path's capacity for a hard limit (the send window, `ViewerPacer`): the median of all samples of
   * the last `STEADY_CAPACITY_MS` (less noise than `capacityBps`: the median of 15 read +-4 %), or the
   * recent median where that is lower (a narrowed path) or more than `CAPACITY_JUMP` x higher (a raised
   * one: the limit must not hold the climb back).
   */
  get steadyCapacityBps(): number | undefined {
    const now = this.#lastUpdate ?? 0;
    const fast = this.#capacityNow(now);
    if (fast === undefined) return undefined;
    const all = this.#capacity.filter((c) => c.t >= now - STEADY_CAPACITY_MS).map((c) => c.bps).sort((a, b) => a - b);
    const slow = all[Math.floor(all.length / 2)]!;
    if (fast > CAPACITY_JUMP * slow) return fast;
    // Just after a path narrows, frames with a lost packet give no sample and the newest 15 still hold
    // the old path's (seen: 168 Mbit/s 1 s after a drop to 5, when a keyframe burst on top of the
    // standing queue lost 91 packets): the newest 5 decide once they say it is CAPACITY_JUMP x narrower.
    const newest = this.#capacity.filter((c) => c.t >= now - 1500).slice(-5).map((c) => c.bps).sort((a, b) => a - b);
    const n5 = newest[Math.floor(newest.length / 2)]!;
    return Math.min(fast, slow, n5 * CAPACITY_JUMP < fast ? n5 : Infinity);
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

  /** One standing queueing-delay sample (ms), e.g. per transport-cc feedback. */
  onQueueingDelay(ms: number, now: number): void {
    if (!Number.isFinite(ms)) return;
    this.#delay.push({ t: now, d: Math.max(0, ms) });
    while (this.#delay.length > 0 && this.#delay[0]!.t < now - 1000) this.#delay.shift();
  }

  /**
   * How long packets waited in this viewer's send window (ViewerPacer's 1 s window, ms) since the last
   * call: the longest wait. The window holds what the encoder makes over the path's capacity; that wait
   * is latency at the sender, where the transport-cc feedback does not see it (send times are taken when
   * packets leave). Like libwebrtc's congestion-window pushback, a hold pushes the target back, so the
   * encoder makes less instead of packets waiting.
   */
  onSendHold(ms: number, now: number): void {
    if (!Number.isFinite(ms) || ms < 0) return;
    this.#sendHoldMs = ms;
    this.#sendHoldAt = now;
    if (ms > PUSHBACK_HOLD_MS) this.#lastSendHold = now;
  }

  /** The rate the receiver got lately (bit/s), from transport-cc arrival times. */
  onAckedRate(bps: number, now: number): void {
    if (!Number.isFinite(bps) || bps <= 0) return;
    this.#acked = bps;
    this.#ackedAt = now;
  }

  /**
   * What this viewer really sent over the last `windowMs` (media, bit/s, as on the wire). An encoder
   * that overshoots its target (x264 on busy content: up to ~15 %) would overfill a link the target fits;
   * rates about the link are divided by this overshoot before they become the target.
   *
   * Compared with `encoder`, what the encoder was really asked for over the same window (mean, least,
   * most), when the caller knows it: the encoder follows this controller's target late (the stage
   * re-evaluates every 250 ms and keeps a dead band), so the target itself is a biased yardstick while
   * it moves, and it moves all the time when congestion cuts saw it (seen: a target sawing 4.1-4.6
   * under a 5 Mbit/s link never stood still long enough to learn that x264 sent 5 % more). Used
   * unless it moved more than 25 % within the window; for `RELEARN_MS` after the measured capacity
   * jumped (a raised or narrowed link) up to 2 x, with a faster gain: a factor learned at one rate and
   * carried to another held the target off the new goal for seconds. Without it, compared with this
   * controller's targets of the same window `ENCODER_LAG_MS` earlier, once they stayed within 5 %
   * (the factor then also holds the stage's dead band). The factor is not reset on a jump: an encoder
   * that overshoots more at the new rate would then be pushed over the link. Before, it was learned
   * only from the target, once that had stood still for 1.5 s: each relearning step moved the target
   * enough to stop the next one. Undershoot is compensated down to `MIN_OVERSHOOT`; sending under
   * `CONTENT_LIMITED` x the target is the content's limit and is not learned at all (a still screen
   * pulled the factor towards 0.5, and the next busy period started from there).
   */
  onSendRate(bps: number, now: number, windowMs = 1000, encoder?: { meanBps: number; minBps: number; maxBps: number }): void {
    if (!Number.isFinite(bps) || bps <= 0) return;
    // Before learning moves the capacity it was learned at (PeerSession calls this before `update`, at
    // the same time): learned first, a jump was never seen, and the relearning never started.
    this.#noteCapacityJump(now);
    const relearn = now - this.#capacityJumpAt < RELEARN_MS;
    let asked: number | undefined;
    if (encoder !== undefined && encoder.minBps > 0) {
      if (encoder.maxBps <= encoder.minBps * (relearn ? 2 : 1.25)) asked = encoder.meanBps;
    } else if (this.#targets.length >= 2) {
      const from = now - windowMs - ENCODER_LAG_MS, to = now - ENCODER_LAG_MS;
      if (this.#targets[0]!.t > from + 100) return;
      let lo = Infinity, hi = 0, sum = 0, n = 0;
      for (const x of this.#targets) {
        if (x.t < from || x.t > to) continue;
        lo = Math.min(lo, x.bps);
        hi = Math.max(hi, x.bps);
        sum += x.bps;
        n++;
      }
      if (n > 0 && hi <= lo * 1.05) asked = sum / n;
    }
    if (asked === undefined) return;
    // Far under what it may send, the encoder is limited by the content (a still or quiet screen), which
    // says nothing about how far it overshoots when busy: not learned (before, a still screen pulled the
    // factor towards 0.5, and the next busy period relearned from there).
    if (bps < CONTENT_LIMITED * asked) return;
    const gain = relearn ? 0.4 : 0.15;
    this.#utilization += gain * (clamp(bps / asked, CONTENT_LIMITED, 2) - this.#utilization);
    this.#capacityAtLearn = this.#capacityNow(now) ?? this.#capacityAtLearn;
  }

  /**
   * The encoder's measured overshoot factor applied to the target (wire bytes per bit of target, 0.93 ..
   * 1.3; an exact encoder is ~1.075 with the packets' overhead).
   */
  get overshoot(): number {
    return clamp(this.#utilization, MIN_OVERSHOOT, 1.3);
  }

  /** One capacity sample (bit/s): the rate at which a burst of packets (a frame) arrived. */
  onCapacity(bps: number, now: number): void {
    if (!Number.isFinite(bps) || bps <= 0) return;
    this.#capacity.push({ t: now, bps });
    while (this.#capacity.length > 0 && (this.#capacity[0]!.t < now - STEADY_CAPACITY_MS || this.#capacity.length > 160)) this.#capacity.shift();
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
    const level = this.#smoothedDelay();
    const slope = this.#delaySlope();
    // A queue pinned at a bottleneck's limit (dropping) wobbles around a flat slope: only a clear fall
    // (draining) clears the level rule.
    const delayHigh = (level > o.delayThresholdMs && slope > -o.delayTrendMsPerS / 2) || (level > o.delayTrendFloorMs && slope > o.delayTrendMsPerS);
    const canDecrease = now - this.#lastDecrease >= o.decreaseSpacingMs;
    const acked = now - this.#ackedAt < 1000 ? this.#acked : undefined;

    const capNow = this.#capacityNow(now);
    this.#noteCapacityJump(now);
    if (loss > 0.1 || delayHigh) this.#lastCongested = now;
    if (delayHigh) this.#lastQueueCongested = now;
    if ((loss > 0.1 || delayHigh) && canDecrease) {
      // A cut starts from what was handed out, pushback included (the acked rate already reflects it),
      // and answers the holds seen so far too: the next pushback only after the encoder had time to follow.
      this.#target = this.#out;
      this.#pushback = 1;
      this.#sendHoldMs = 0;
      this.#lastPushback = now;
      // While the bottleneck's queue is not empty, what arrives is its rate: go just under it. Loss with a
      // full queue is that queue's overflow, already answered so; compounding it would cut far under the
      // link (seen: 5 -> 2 Mbit/s ended at 0.6).
      let next = delayHigh && acked !== undefined ? (BETA * acked) / this.overshoot
        : Math.min(loss > 0.1 ? this.#target * (1 - loss / 2) : Infinity, delayHigh ? this.#target * BETA : Infinity);
      // The queue is not draining well after a cut (the sender makes more than its target, or the path
      // shrank again): cut the target itself. An encoder follows a new target within ~0.5 s.
      if (delayHigh && next >= this.#target && now - this.#lastDecrease >= STUCK_MS && level >= this.#levelAtDecrease * 0.9) next = this.#target * 0.9;
      if (next < this.#target) {
        this.#levelAtDecrease = level;
        this.#target = next;
        this.#lastDecrease = now;
      }
      this.#state = "decrease";
    } else if (loss > 0.02 || level > o.delayThresholdMs || now - this.#lastCongested < o.holdMs) {
      // Congested, still draining a queue, or less than holdMs since the last congestion: no increase.
      if (this.#state !== "decrease" || canDecrease) this.#state = "hold";
    } else {
      const cap = capNow;
      const before = this.#target;
      if (cap === undefined) {
        this.#target *= 1 + o.increasePerSecond * dt;
        this.#state = "increase";
      } else {
        const goal = (cap * o.capacityUse) / this.overshoot;
        // Approach the goal exponentially, so it is never crossed; from above too (a path measured
        // narrower, an encoder found to overshoot), unless the path demonstrably carried more than the
        // samples say: a starved sender spreads its own bursts (seen at load 10 on 2 cores: 1.2-2.5 read
        // for a 5 Mbit/s link while 4 arrived), and following that down would ratchet the target away.
        const believable = acked === undefined || cap >= 0.95 * acked;
        if (goal > this.#target || believable) this.#target += (goal - this.#target) * Math.min(1, (dt * 1000) / o.approachMs);
        // Still gradual on a path far faster than the target (a LAN): at most doubling per second.
        this.#target = Math.min(this.#target, before * (1 + MAX_INCREASE_PER_S * dt));
        this.#state = goal > this.#target * 1.01 ? "increase" : goal < this.#target * 0.99 ? "decrease" : "hold";
      }
    }
    let ceiling = o.maxBps;
    if (this.#remb !== undefined && now - this.#rembAt < 3000) ceiling = Math.min(ceiling, this.#remb);
    if (this.#preferredMax !== undefined) ceiling = Math.min(ceiling, this.#preferredMax);
    this.#target = clamp(this.#target, o.minBps, Math.max(o.minBps, ceiling));
    this.#updatePushback(now, dt, capNow);
    this.#out = clamp(this.#target * this.#pushback, o.minBps, Math.max(o.minBps, ceiling));
    this.#targets.push({ t: now, bps: this.#out });
    while (this.#targets.length > 0 && this.#targets[0]!.t < now - 2500) this.#targets.shift();
    return this.target;
  }

  /**
   * The send window's pushback: a hold (onSendHold) cuts the ratio by PUSHBACK_STEP, at most every
   * PUSHBACK_SPACING_MS; after PUSHBACK_RELEASE_MS without one it recovers slowly (at once on a raised
   * path, see update).
   */
  #updatePushback(now: number, dt: number, cap: number | undefined): void {
    // A raised path (the capacity CAPACITY_JUMP x what it was at the last pushback): the send window
    // follows the new capacity at once, and the climb must not wait for the pushback to wear off (seen:
    // 0.92 carried from 2 to 5 Mbit/s, 4 s to recover).
    if (cap !== undefined && this.#pushbackCapacity !== undefined && cap > CAPACITY_JUMP * this.#pushbackCapacity) {
      this.#pushback = 1;
      this.#pushbackCapacity = undefined;
    }
    const hold = now - this.#sendHoldAt < 1000 ? this.#sendHoldMs : 0;
    if (hold > PUSHBACK_HOLD_MS && now - this.#lastPushback >= PUSHBACK_SPACING_MS) {
      this.#pushback = Math.max(PUSHBACK_MIN, this.#pushback * PUSHBACK_STEP);
      this.#lastPushback = now;
      this.#pushbackCapacity = cap;
    } else if (now - this.#lastSendHold >= PUSHBACK_RELEASE_MS) this.#pushback = Math.min(1, this.#pushback * (1 + PUSHBACK_RECOVER_PER_S * dt));
  }

  /**
   * The measured capacity jumped CAPACITY_JUMP x above or below the one the overshoot was last learned
   * at: either way, the encoder's over- or undershoot at the new rate is not the one learned at the old.
   */
  #noteCapacityJump(now: number): void {
    const cap = this.#capacityNow(now);
    if (cap !== undefined && this.#capacityAtLearn !== undefined && (cap > CAPACITY_JUMP * this.#capacityAtLearn || cap * CAPACITY_JUMP < this.#capacityAtLearn)) {
      this.#capacityJumpAt = now;
      this.#capacityAtLearn = cap;
    }
  }

  /** Median of the newest capacity samples; at least 5 of them, else unknown. */
  #capacityNow(now: number): number | undefined {
    // The newest 15 samples (half a second at 30 fps) of the last 1.5 s: a changed path shows within ~0.3 s.
    const fresh = this.#capacity.filter((c) => c.t >= now - 1500).slice(-15).map((c) => c.bps);
    if (fresh.length < 5) return undefined;
    fresh.sort((a, b) => a - b);
    return fresh[Math.floor(fresh.length / 2)];
  }

  #smoothedDelay(): number {
    const recent = this.#delay.slice(-5);
    if (recent.length === 0) return 0;
    return recent.reduce((s, x) => s + x.d, 0) / recent.length;
  }

  /** Least-squares slope of the delay samples of the last second, ms per second (the delay's trend). */
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

/** What one transport-cc feedback tells about the path. */
export interface FeedbackSummary {
  /**
   * Standing queueing delay (ms): the smallest excess one-way delay among the packets it reports. The
   * largest would mostly measure the frame's own burst draining through the bottleneck.
   */
  queueingDelayMs: number | undefined;
  /** Excess delay of the last received packet it reports (ms). */
  lastQueueingDelayMs: number | undefined;
  /** Lost among the packets it reports, 0..1. */
  loss: number;
  /** Lost among the packets reported over the last `lossWindowMs` (a single report of ~30 packets is noisy). */
  recentLoss: number;
  /** Packets that `recentLoss` is made of. */
  recentCount: number;
  /** Packets it reports that we know. */
  count: number;
  /** Receive rate over the last `ackWindowMs` of arrivals (bit/s), once that window is long enough. */
  ackedBps: number | undefined;
  /** Arrival rates of the bursts (frames) it completed (bit/s): capacity samples. */
  capacityBps: number[];
}

/**
 * Turns transport-cc feedback into what the controller needs: queueing delay, loss, the acknowledged
 * receive rate, and capacity samples. It remembers when each transport-wide sequence number was sent,
 * how big it was and which burst (frame) it belonged to, and compares with when the browser says it
 * arrived. The one-way delay includes an unknown clock offset, so the queueing delay is the delay above
 * the smallest one seen in `baseWindowMs`.
 *
 * Capacity from dispersion: a frame handed to the socket as a burst queues at the bottleneck and leaves
 * it at the bottleneck's rate, so the arrival rate of its later packets is the path's capacity (the first
 * half is skipped: a token bucket or an idle link lets the head through faster). A burst sent slower than
 * it could arrive (a paced viewer) only shows its own send rate: the sample is min(arrival, send) rate,
 * a lower bound then.
 */
export class DelayTracker {
  static readonly SIZE = 8192;
  /** Smallest burst (packets) whose dispersion is a capacity sample. */
  static readonly MIN_BURST = 6;
  readonly #sentAt = new Float64Array(DelayTracker.SIZE);
  readonly #arrivedAt = new Float64Array(DelayTracker.SIZE);
  readonly #bytes = new Int32Array(DelayTracker.SIZE);
  readonly #group = new Int32Array(DelayTracker.SIZE);
  readonly #seqs = new Int32Array(DelayTracker.SIZE).fill(-1);
  readonly #baseWindowMs: number;
  readonly #ackWindowMs: number;
  #mins: { t: number; d: number }[] = [];
  #acks: { at: number; bytes: number }[] = [];
  #ackNewest = -Infinity;
  /** Bursts sent lately: first and last wide sequence number (unwrapped through `#unwrap`). */
  #groups = new Map<number, { first: number; last: number; sentAt: number }>();
  #lastGroup = -1;

  readonly #lossWindowMs: number;
  #reports: { t: number; known: number; lost: number }[] = [];

  constructor(baseWindowMs = 10_000, ackWindowMs = 500, lossWindowMs = 1000) {
    this.#baseWindowMs = baseWindowMs;
    this.#ackWindowMs = ackWindowMs;
    this.#lossWindowMs = lossWindowMs;
  }

  /** A packet was sent: its wide sequence number, send time, size (bytes) and burst id (-1: none). */
  sent(wideSeq: number, atMs: number, bytes = 0, group = -1): void {
    const i = wideSeq % DelayTracker.SIZE;
    this.#seqs[i] = wideSeq;
    this.#sentAt[i] = atMs;
    this.#arrivedAt[i] = NaN;
    this.#bytes[i] = bytes;
    this.#group[i] = group;
    if (group < 0) return;
    const g = this.#groups.get(group);
    if (g) g.last = wideSeq;
    else {
      this.#groups.set(group, { first: wideSeq, last: wideSeq, sentAt: atMs });
      this.#lastGroup = group;
      // Forget bursts nobody reported on (feedback lost): a few seconds' worth is plenty.
      for (const [k, v] of this.#groups) {
        if (v.sentAt >= atMs - 3000) break;
        this.#groups.delete(k);
      }
    }
  }

  /**
   * Feedback for a run of packets. Returns what it tells (see FeedbackSummary), or undefined when it
   * covered nothing we know.
   */
  feedback(results: readonly { sequenceNumber: number; received: boolean; receivedAtMs: number }[], nowMs: number): FeedbackSummary | undefined {
    let known = 0, lost = 0;
    let last: number | undefined, least: number | undefined;
    for (const r of results) {
      const i = r.sequenceNumber % DelayTracker.SIZE;
      if (this.#seqs[i] !== r.sequenceNumber) continue;
      known++;
      if (!r.received) {
        lost++;
        // A burst with a lost packet says nothing reliable about its dispersion.
        this.#groups.delete(this.#group[i]!);
        continue;
      }
      this.#arrivedAt[i] = r.receivedAtMs;
      const d = r.receivedAtMs - this.#sentAt[i]!;
      last = d;
      least = least === undefined ? d : Math.min(least, d);
      this.#noteDelay(d, nowMs);
      this.#noteAck(r.receivedAtMs, this.#bytes[i]!);
    }
    if (known === 0) return undefined;
    this.#reports.push({ t: nowMs, known, lost });
    while (this.#reports.length > 0 && this.#reports[0]!.t < nowMs - this.#lossWindowMs) this.#reports.shift();
    let recentCount = 0, recentLost = 0;
    for (const r of this.#reports) {
      recentCount += r.known;
      recentLost += r.lost;
    }
    const base = this.#base();
    const capacityBps: number[] = [];
    for (const g of [...this.#groups.keys()]) {
      const c = this.#burstRate(g);
      if (c !== undefined) capacityBps.push(c);
    }
    return {
      queueingDelayMs: least === undefined || base === undefined ? undefined : least - base,
      lastQueueingDelayMs: last === undefined || base === undefined ? undefined : last - base,
      loss: lost / known,
      count: known,
      recentLoss: recentLost / recentCount,
      recentCount,
      ackedBps: this.#ackedRate(),
      capacityBps,
    };
  }

  /** The capacity sample of a burst once every packet of it is reported received (then it is forgotten). */
  #burstRate(group: number): number | undefined {
    const g = this.#groups.get(group);
    // The newest burst may still grow (a paced viewer's frame is sent over several ticks).
    if (!g || group === this.#lastGroup) return undefined;
    const n = ((g.last - g.first) & 0xffff) + 1;
    if (n > 2048) {
      this.#groups.delete(group);
      return undefined;
    }
    const idx: number[] = [];
    for (let k = 0; k < n; k++) {
      const seq = (g.first + k) & 0xffff;
      const i = seq % DelayTracker.SIZE;
      if (this.#seqs[i] !== seq || this.#group[i] !== group) continue; // another stream's packet in between
      if (Number.isNaN(this.#arrivedAt[i]!)) return undefined; // not all reported yet (or lost)
      idx.push(i);
    }
    this.#groups.delete(group);
    if (idx.length < DelayTracker.MIN_BURST) return undefined;
    const from = Math.floor(idx.length / 2);
    let bytes = 0;
    for (let k = from + 1; k < idx.length; k++) bytes += this.#bytes[idx[k]!]!;
    const a = this.#arrivedAt[idx[from]!]!, b = this.#arrivedAt[idx[idx.length - 1]!]!;
    const s = this.#sentAt[idx[from]!]!, e = this.#sentAt[idx[idx.length - 1]!]!;
    if (bytes === 0) return undefined;
    // A spread under 0.5 ms is below what the feedback's clock (0.25 ms) resolves: a path at least that fast.
    const arrival = (bytes * 8) / (Math.max(b - a, 0.5) / 1000);
    const send = e - s > 0 ? (bytes * 8) / ((e - s) / 1000) : Infinity;
    return Math.min(arrival, send);
  }

  #noteAck(at: number, bytes: number): void {
    this.#acks.push({ at, bytes });
    this.#ackNewest = Math.max(this.#ackNewest, at);
    while (this.#acks.length > 0 && this.#acks[0]!.at < this.#ackNewest - this.#ackWindowMs) this.#acks.shift();
  }

  #ackedRate(): number | undefined {
    if (this.#acks.length < 2) return undefined;
    let lo = Infinity, hi = -Infinity, bytes = 0;
    for (const a of this.#acks) {
      lo = Math.min(lo, a.at);
      hi = Math.max(hi, a.at);
      bytes += a.bytes;
    }
    // A window shorter than half its length says little (a lone frame arrives at the bottleneck's rate).
    if (hi - lo < this.#ackWindowMs / 2) return undefined;
    return (bytes * 8) / ((hi - lo) / 1000);
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
