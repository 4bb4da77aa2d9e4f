/**
 * One viewer's send queue: pure logic (no timers, no I/O; `PeerSession` owns the timer and the socket,
 * tests drive it with a fake clock). Either limit applies, never both:
 *
 * - **Not paced** (the viewer the encoder follows): the limits of the path, from its measured capacity
 *   (`capacityBps`, set by the caller; Infinity while unknown: nothing waits).
 *   - *The 1 s window*: any 1 s of sending holds at most `SHARE` x the capacity. The controller aims
 *     the encoder under the capacity, but x264's 1 s output strays +-4 % (5 Mbit/s) to +-8 % (2 Mbit/s)
 *     around its target, so single 1 s windows went up to 4 % over the link long after the rate had
 *     settled (docs/streaming.md, "Measured"). Held here, a peak is tens of ms of latency at the sender
 *     instead of a bottleneck queue that grows.
 *   - *Our own burst at the bottleneck*: what our sending would have queued there by now, were the
 *     queue empty otherwise and drained at the capacity, stays under `BURST_MS` of it. A keyframe
 *     (several frames' worth) sent as one burst overflowed the 100 ms tbf queue of the bench.
 *   Under both, nothing waits: a frame leaves as one burst, as before (the fast path, and the burst
 *   whose dispersion measures the path).
 * - **Paced** (`paceBps`, a throttled viewer: the shared encoder makes more than its target): packets
 *   leave at that rate with at most ~2 packets of saved-up credit, never as a whole-frame burst (sent as
 *   one burst, a frame sized for the fastest viewer overflowed a 1.5 Mbit/s tbf's 100 ms queue).
 *
 * Capacity samples: a held part of a frame leaves later than its head, and its dispersion would read
 * as a slow path (a sample is min(arrival, send) rate), which would lower the limit, which holds more:
 * a ratchet. Unless paced, each run of a frame's packets released together gets a group (burst id) of
 * its own, so every burst handed to the socket at once is still a valid sample (released one packet at
 * a time by the burst limit, it gives none).
 */
export interface PacedSend<T> {
  item: T;
  /** Bytes as on the wire (what the window counts). */
  bytes: number;
  /** The burst (frame) it belongs to, for capacity samples; -1: none. */
  group: number;
}

interface Entry<T> extends PacedSend<T> {
  at: number;
  keyframe: boolean;
}

export class ViewerPacer<T> {
  /** Length of the window whose sum is limited (ms). */
  static readonly WINDOW_MS = 1000;
  /** Share of the measured capacity that any 1 s of sending may use. */
  static readonly SHARE = 0.97;
  /**
   * The most our own bursts may have queued at the bottleneck (ms of its capacity), as if it drained at
   * the measured capacity and were empty otherwise. A keyframe sent as one burst is several frames'
   * worth: it overflowed the 100 ms tbf queue of the bench at 2 Mbit/s. A frame at 30 fps takes ~31 ms
   * of a link it fits, and leaves as one burst.
   */
  static readonly BURST_MS = 60;
  /** Saved-up credit of the pacing, bytes (~2 packets). */
  static readonly PACE_CREDIT = 2500;
  /** While paced and out of credit, the next try (ms). */
  static readonly PACE_TICK_MS = 5;
  /**
   * The longest a packet may wait for the window before the caller skips new frames to the next
   * keyframe (ms; see `overdue`). x264's peaks over the window cost tens of ms; a keyframe a few times a
   * frame's budget waits for the window too.
   */
  static readonly HOLD_MAX_MS = 250;

  /** The path's measured capacity, bit/s (Infinity: unknown, no limit). */
  capacityBps = Infinity;
  /**
   * The standing queue the bottleneck already holds, as measured (ms): our bursts may add only what is
   * left of BURST_MS (seen: a 50 ms queue left from a narrowed link, a keyframe on top of it, 16 packets
   * dropped by the bench's 100 ms tbf).
   */
  queueMs = 0;
  /** Pacing rate, bit/s; 0: not paced (frames leave as bursts). */
  paceBps = 0;
  /** Buckets of the hold histogram: 1 ms each, the last one for HIST_MS and longer. */
  static readonly HIST_MS = 1000;
  /**
   * What the queue held and for how long: `held` of `sent` packets waited (`waitMsSum` ms in all, the
   * longest `maxWaitMs`), `windowHeld` of them (also) for the 1 s window rather than only for the burst
   * limit; `holdHist[ms]` counts every packet sent through the queue by its wait (0: none), and
   * `windowHist` the same with only the waits of the packets the 1 s window held (0 for the others: a
   * wait for the burst limit only is the bottleneck queue's, moved to the sender; the window's is
   * latency added while the path could have carried the packet). Cumulative; `maxWaitMs` may be reset
   * by the reader. See `holdStats`.
   */
  readonly counters = {
    held: 0, sent: 0, maxWaitMs: 0, waitMsSum: 0, windowHeld: 0,
    holdHist: new Array<number>(ViewerPacer.HIST_MS + 1).fill(0), windowHist: new Array<number>(ViewerPacer.HIST_MS + 1).fill(0),
  };

  #sent: { t: number; bytes: number }[] = [];
  #sentHead = 0;
  #sentSum = 0;
  #queue: Entry<T>[] = [];
  #head = 0;
  #backlog = 0;
  #credit = 0;
  #creditAt: number | undefined;
  /** What our own bursts left queued at the bottleneck by now, were it empty before them (bytes). */
  #vq = 0;
  #vqAt = 0;
  /** When the 1 s window last stopped the queue (packets queued by then waited for it). */
  #windowStopAt = -Infinity;
  /** The longest wait of a packet the window held, released since `takeWindowHoldMs` last read it. */
  #windowHoldPeak = 0;
  readonly #newGroup: () => number;

  /** `newGroup` hands out burst ids (shared with the caller's frame ids). */
  constructor(newGroup: () => number) {
    this.#newGroup = newGroup;
  }

  /** Bytes waiting. */
  get backlogBytes(): number {
    return this.#backlog;
  }

  get empty(): boolean {
    return this.#head >= this.#queue.length;
  }

  /** How long the oldest waiting packet has waited (ms; 0 when none waits). */
  headWaitMs(now: number): number {
    return this.empty ? 0 : now - this.#queue[this.#head]!.at;
  }

  /**
   * The oldest packet has waited longer than HOLD_MAX_MS, and no keyframe waits: the encoder makes more
   * than the path takes (a narrowed link, before the controller's cut reaches it). The caller skips new
   * frames to the next keyframe rather than let the latency grow (a keyframe still waiting would only
   * get another one queued behind it).
   */
  overdue(now: number): boolean {
    return this.headWaitMs(now) > ViewerPacer.HOLD_MAX_MS && !this.keyframeWaiting;
  }

  /** Whether a keyframe's packets are still waiting. */
  get keyframeWaiting(): boolean {
    for (let i = this.#head; i < this.#queue.length; i++) if (this.#queue[i]!.keyframe) return true;
    return false;
  }

  /** Bytes the limits let through now. */
  room(now: number): number {
    this.#expire(now);
    this.#drainVq(now);
    return Math.min(this.#windowBytes() - this.#sentSum, this.#burstBytes() - this.#vq);
  }

  /** Something sent past the queue (a resend): it counts in the window and the burst. */
  record(now: number, bytes: number): void {
    this.#sent.push({ t: now, bytes });
    this.#sentSum += bytes;
    this.#drainVq(now);
    this.#vq += bytes;
  }

  /** Queues a frame's packets (in order). Call `drain` next. */
  push(packets: readonly PacedSend<T>[], now: number, keyframe: boolean): void {
    for (const p of packets) {
      this.#queue.push({ ...p, at: now, keyframe });
      this.#backlog += p.bytes;
    }
  }

  /**
   * Sends what the limits allow now, in order, through `send`. Returns in how many ms to call again, or
   * undefined when nothing waits.
   */
  drain(now: number, send: (p: PacedSend<T>) => void): number | undefined {
    const limit = this.#windowBytes(), burst = this.#burstBytes();
    this.#expire(now);
    this.#drainVq(now);
    const paced = this.paceBps > 0;
    if (paced) {
      // Idle until now: no credit saved up beyond the cap.
      const since = this.#creditAt ?? now;
      this.#credit = Math.min(this.#credit + ((now - since) / 1000) * (this.paceBps / 8), ViewerPacer.PACE_CREDIT);
      this.#creditAt = now;
    } else this.#creditAt = undefined;
    // Held parts of a frame, released together in this call, form one burst (see the class comment).
    let heldFrame = -2, heldGroup = -1;
    while (this.#head < this.#queue.length) {
      const e = this.#queue[this.#head]!;
      if (paced && this.#credit <= 0) return ViewerPacer.PACE_TICK_MS;
      // A packet larger than the whole window (a limit under one packet per second) still goes, alone.
      // Paced, the pacing is the limit: a paced viewer's capacity samples are its send rate (a lower
      // bound), and a window set from them would hold it under them, lowering the next ones (a ratchet).
      if (!paced && this.#sentSum + e.bytes > limit && this.#sentSum > 0) {
        this.#windowStopAt = now;
        return this.#untilRoom(now, e.bytes, limit);
      }
      if (!paced && this.#vq + e.bytes > burst && this.#vq > 0) return Math.max(1, Math.ceil(((this.#vq + e.bytes - burst) * 8 * 1000) / this.capacityBps));
      this.#head++;
      this.#backlog -= e.bytes;
      let group = e.group;
      const wait = now - e.at, bucket = Math.min(ViewerPacer.HIST_MS, Math.max(0, Math.ceil(wait)));
      const byWindow = e.at < now && e.at <= this.#windowStopAt;
      this.counters.holdHist[bucket]!++;
      this.counters.windowHist[byWindow ? bucket : 0]!++;
      if (e.at < now) {
        this.counters.held++;
        this.counters.waitMsSum += wait;
        this.counters.maxWaitMs = Math.max(this.counters.maxWaitMs, wait);
        if (byWindow) {
          this.counters.windowHeld++;
          this.#windowHoldPeak = Math.max(this.#windowHoldPeak, wait);
        }
        if (!paced && e.group >= 0) {
          if (heldFrame !== e.group) {
            heldFrame = e.group;
            heldGroup = this.#newGroup();
          }
          group = heldGroup;
        }
      }
      this.counters.sent++;
      if (paced) this.#credit -= e.bytes;
      this.record(now, e.bytes);
      send({ item: e.item, bytes: e.bytes, group });
    }
    this.#queue = [];
    this.#head = 0;
    this.#backlog = 0;
    return undefined;
  }

  /**
   * How long packets have waited for the 1 s window (not for the burst limit, whose wait the bottleneck's
   * queue would otherwise have cost) since the last call: the longest wait of those released since, or
   * of the oldest one still waiting for it. The send-side queue the controller cannot see in the
   * feedback (send times are taken when packets leave): `AbrController.onSendHold`.
   */
  takeWindowHoldMs(now: number): number {
    let ms = this.#windowHoldPeak;
    this.#windowHoldPeak = 0;
    if (!this.empty && this.#queue[this.#head]!.at <= this.#windowStopAt) ms = Math.max(ms, now - this.#queue[this.#head]!.at);
    return ms;
  }

  /**
   * Share of packets held, mean and 95th percentile of the wait over all packets sent (0 for those not
   * held), and the longest, between two snapshots of `counters.holdHist` or `windowHist` (ms, 1 ms
   * resolution).
   */
  static holdStats(before: readonly number[] | undefined, after: readonly number[]): { packets: number; heldPercent: number; meanMs: number; p95Ms: number; maxMs: number } {
    const h = after.map((n, i) => n - (before?.[i] ?? 0));
    const total = h.reduce((a, b) => a + b, 0);
    if (total === 0) return { packets: 0, heldPercent: 0, meanMs: 0, p95Ms: 0, maxMs: 0 };
    let sum = 0, max = 0, p95 = -1, acc = 0;
    for (let i = 0; i < h.length; i++) {
      if (h[i]! <= 0) continue;
      sum += i * h[i]!;
      max = i;
      acc += h[i]!;
      if (p95 < 0 && acc >= 0.95 * total) p95 = i;
    }
    return { packets: total, heldPercent: (100 * (total - h[0]!)) / total, meanMs: sum / total, p95Ms: Math.max(0, p95), maxMs: max };
  }

  /** Forgets what waits (the viewer closed). */
  clear(): void {
    this.#queue = [];
    this.#head = 0;
    this.#backlog = 0;
  }

  #windowBytes(): number {
    return ((ViewerPacer.SHARE * this.capacityBps) / 8) * (ViewerPacer.WINDOW_MS / 1000);
  }

  #burstBytes(): number {
    return (this.capacityBps / 8) * (Math.max(0, ViewerPacer.BURST_MS - this.queueMs) / 1000);
  }

  #drainVq(now: number): void {
    if (Number.isFinite(this.capacityBps)) this.#vq = Math.max(0, this.#vq - ((now - this.#vqAt) / 1000) * (this.capacityBps / 8));
    else this.#vq = 0;
    this.#vqAt = now;
  }

  /** Time until enough of the window's bytes have aged out for `bytes` more (ms, at least 1). */
  #untilRoom(now: number, bytes: number, limit: number): number {
    let sum = this.#sentSum;
    for (let i = this.#sentHead; i < this.#sent.length; i++) {
      sum -= this.#sent[i]!.bytes;
      if (sum + bytes <= limit || sum <= 0) return Math.max(1, this.#sent[i]!.t + ViewerPacer.WINDOW_MS - now);
    }
    return 1;
  }

  #expire(now: number): void {
    const from = now - ViewerPacer.WINDOW_MS;
    while (this.#sentHead < this.#sent.length && this.#sent[this.#sentHead]!.t <= from) {
      this.#sentSum -= this.#sent[this.#sentHead]!.bytes;
      this.#sentHead++;
    }
    if (this.#sentHead > 1024 && this.#sentHead * 2 > this.#sent.length) {
      this.#sent = this.#sent.slice(this.#sentHead);
      this.#sentHead = 0;
    }
    if (this.#sentHead >= this.#sent.length) this.#sentSum = 0; // no rounding drift
  }
}
