import { EventEmitter } from "node:events";

/**
 * EventEmitter with typed events. `safeEmit` never lets a throwing listener unwind into the emitter
 * (and from there into native code or a socket callback): the error is reported on `listenerError`
 * hook instead. This is the one event style of the codebase.
 */
export type EventMap = Record<string, unknown[]>;

export class TypedEmitter<E extends EventMap> {
  readonly #ee = new EventEmitter({ captureRejections: false });

  constructor() {
    this.#ee.setMaxListeners(100);
  }

  on<K extends keyof E & string>(event: K, listener: (...args: E[K]) => void): this {
    this.#ee.on(event, listener as (...a: unknown[]) => void);
    return this;
  }

  once<K extends keyof E & string>(event: K, listener: (...args: E[K]) => void): this {
    this.#ee.once(event, listener as (...a: unknown[]) => void);
    return this;
  }

  off<K extends keyof E & string>(event: K, listener: (...args: E[K]) => void): this {
    this.#ee.off(event, listener as (...a: unknown[]) => void);
    return this;
  }

  listenerCount<K extends keyof E & string>(event: K): number {
    return this.#ee.listenerCount(event);
  }

  removeAllListeners(): void {
    this.#ee.removeAllListeners();
  }

  /** Emits to every listener; a listener that throws is reported and the others still run. */
  protected safeEmit<K extends keyof E & string>(event: K, ...args: E[K]): boolean {
    const listeners = this.#ee.rawListeners(event) as ((...a: unknown[]) => void)[];
    if (listeners.length === 0) return false;
    for (const l of listeners) {
      try {
        // rawListeners returns once-wrappers that remove themselves when called.
        l.apply(this, args);
      } catch (err) {
        reportListenerError(event, err);
      }
    }
    return true;
  }
}

let listenerErrorHook: (event: string, err: unknown) => void = (event, err) => {
  process.emitWarning(`listener for "${event}" threw: ${err instanceof Error ? err.stack : String(err)}`);
};

export function setListenerErrorHook(hook: (event: string, err: unknown) => void): void {
  listenerErrorHook = hook;
}

function reportListenerError(event: string, err: unknown): void {
  try {
    listenerErrorHook(event, err);
  } catch {
    // The hook itself must never throw into an emitter.
  }
}
