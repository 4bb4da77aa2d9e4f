import type { KeyframeReason } from "../encode/types.js";

export interface KeyframeGateOptions {
  /** Requests closer than this to the last keyframe are merged into one, sent when the interval is over. */
  minIntervalMs: number;
  /** Forwards a request to the encoder. */
  request: (reason: KeyframeReason) => void;
  now?: () => number;
}

/**
 * Rate limit between every viewer's keyframe wishes (PLI, FIR, new viewer, recovery) and the one shared
 * encoder. A keyframe costs every viewer several frames' worth of bits, so a lossy viewer that sends
 * PLIs several times a second must not turn the stream into keyframes only: requests inside the interval
 * are merged into one, issued when the interval since the last keyframe is over. A new viewer's request
 * is the exception: it is forwarded at once (merged only with a request already on its way).
 */
export class KeyframeGate {
  readonly #opts: KeyframeGateOptions;
  readonly #now: () => number;
  #lastKeyframeAt = -Infinity;
  #lastRequestAt = -Infinity;
  #timer: NodeJS.Timeout | undefined;
  #pendingReason: KeyframeReason | undefined;
  /** Who is waiting for the merged request: a viewer who leaves withdraws its wish. */
  readonly #waiting = new Set<string>();
  #closed = false;
  /** Requests received, requests forwarded to the encoder. */
  requested = 0;
  forwarded = 0;

  constructor(opts: KeyframeGateOptions) {
    this.#opts = opts;
    this.#now = opts.now ?? (() => performance.now());
  }

  /** A keyframe went out (whoever asked for it): it satisfies every request made before it. */
  noteKeyframe(): void {
    this.#lastKeyframeAt = this.#now();
    // Every request merged while waiting was made before this keyframe: it is answered.
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#pendingReason = undefined;
    this.#waiting.clear();
  }

  /** A merged request is waiting to be forwarded. */
  get pending(): boolean {
    return this.#timer !== undefined;
  }

  /** `who` (a viewer) no longer needs a keyframe (it left); a merged request nobody needs is dropped. */
  withdraw(who: string): void {
    if (!this.#waiting.delete(who) || this.#waiting.size > 0) return;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#pendingReason = undefined;
  }

  request(reason: KeyframeReason, who = ""): void {
    if (this.#closed) return;
    this.requested++;
    const now = this.#now();
    if (reason === "new-viewer") {
      // A viewer who just joined sees nothing until a keyframe: it does not wait for the interval (seen:
      // up to 1 s of black on a reconnect, the interval counting from the previous viewer's keyframe).
      // It cannot be repeated like a PLI: each one is a whole authenticated connection. A request already
      // forwarded and not yet answered by a keyframe answers it too.
      if (this.#lastRequestAt > this.#lastKeyframeAt && now - this.#lastRequestAt < this.#opts.minIntervalMs) return;
      if (this.#timer !== undefined) clearTimeout(this.#timer);
      this.#timer = undefined;
      this.#pendingReason = undefined;
      this.#waiting.clear();
      this.#forward(reason);
      return;
    }
    const since = now - Math.max(this.#lastKeyframeAt, this.#lastRequestAt);
    if (since >= this.#opts.minIntervalMs) {
      this.#forward(reason);
      return;
    }
    this.#pendingReason ??= reason;
    this.#waiting.add(who);
    if (this.#timer !== undefined) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      const r = this.#pendingReason;
      this.#pendingReason = undefined;
      this.#waiting.clear();
      if (r !== undefined && !this.#closed) this.#forward(r);
    }, this.#opts.minIntervalMs - since);
    this.#timer.unref();
  }

  #forward(reason: KeyframeReason): void {
    this.#lastRequestAt = this.#now();
    this.forwarded++;
    this.#opts.request(reason);
  }

  close(): void {
    this.#closed = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}
