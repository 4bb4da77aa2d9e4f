import { loadAddon } from "../native/addon.js";

/** How long after a viewer's release the C heap is trimmed: releases in a burst share one trim. */
export const TRIM_DELAY_MS = 2000;

/**
 * Returns the C heap's free pages to the system after viewers are released. A burst of viewers (or of
 * refused offers) leaves hundreds of MB freed in glibc's arenas (OpenSSL's and werift's buffers), which
 * glibc keeps: RSS stayed at its peak though the JS heap was back at its baseline. One malloc_trim(0)
 * (a few ms) at most every TRIM_DELAY_MS, on an unref'd timer. Without the native addon (not built), it
 * does nothing: the agent streams without it.
 */
export class MemoryTrimmer {
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  readonly #trim: (() => boolean) | undefined;
  /** Trims done (tests). */
  trims = 0;

  constructor() {
    try {
      const addon = loadAddon();
      this.#trim = typeof addon.trimMemory === "function" ? () => addon.trimMemory() : undefined;
    } catch {
      this.#trim = undefined;
    }
  }

  /** A viewer was released: trim once the burst it belongs to is over. */
  request(): void {
    if (this.#closed || !this.#trim || this.#timer) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      if (this.#closed) return;
      this.#trim?.();
      this.trims++;
    }, TRIM_DELAY_MS);
    this.#timer.unref();
  }

  /** Idempotent. */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}
