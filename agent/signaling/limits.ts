/** A token bucket: `rate` tokens per second, at most `burst` saved up. */
export class TokenBucket {
  #tokens: number;
  #last: number;
  constructor(
    readonly rate: number,
    readonly burst: number,
    now = performance.now(),
  ) {
    this.#tokens = burst;
    this.#last = now;
  }

  take(n = 1, now = performance.now()): boolean {
    this.#tokens = Math.min(this.burst, this.#tokens + ((now - this.#last) / 1000) * this.rate);
    this.#last = now;
    if (this.#tokens < n) return false;
    this.#tokens -= n;
    return true;
  }

  /** True once the bucket has refilled completely: the entry carries no state worth keeping. */
  full(now = performance.now()): boolean {
    return this.#tokens + ((now - this.#last) / 1000) * this.rate >= this.burst;
  }
}

/**
 * One token bucket per remote address, with bounded memory: full buckets are forgotten, and when the
 * table is at capacity the oldest entry is evicted (a flood of distinct addresses cannot grow it).
 */
export class AddressRateLimiter {
  readonly #buckets = new Map<string, TokenBucket>();
  constructor(
    readonly rate: number,
    readonly burst: number,
    readonly capacity = 10_000,
  ) {}

  take(address: string, now = performance.now()): boolean {
    let b = this.#buckets.get(address);
    if (b === undefined) {
      if (this.#buckets.size >= this.capacity) this.#sweep(now);
      b = new TokenBucket(this.rate, this.burst, now);
    } else {
      this.#buckets.delete(address); // re-insert: Map order is then least-recently-used first
    }
    this.#buckets.set(address, b);
    return b.take(1, now);
  }

  get size(): number {
    return this.#buckets.size;
  }

  #sweep(now: number): void {
    for (const [k, b] of this.#buckets) if (b.full(now)) this.#buckets.delete(k);
    while (this.#buckets.size >= this.capacity) {
      const oldest = this.#buckets.keys().next().value;
      if (oldest === undefined) break;
      this.#buckets.delete(oldest);
    }
  }
}
