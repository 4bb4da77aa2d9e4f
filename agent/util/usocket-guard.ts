/**
 * A guard against a use-after-free in usocket 1.1.0, the native socket dbus-next uses for every
 * `unix:path=` bus address (it is what passes the portal's PipeWire fd).
 *
 * usocket's native wrapper (USocketWrap, a Nan::ObjectWrap) embeds its libuv `uv_poll_t`. Closing the
 * socket (`USocket#destroy()`, or its own "error" path) calls `uv_close()` on that handle and drops the
 * only reference to the wrapper at once. libuv finishes closing handles at the end of the loop
 * iteration, so a garbage collection in between deletes the wrapper, handle included, while the handle
 * is still on libuv's closing list: `uv__finish_close` then reads freed memory and aborts the process
 * ("Assertion `handle->flags & UV_HANDLE_CLOSING' failed", or "`0' failed" once the memory is reused).
 * That is the abort seen once in test/capture/desktop.test.ts: a core dump showed the closing handle at
 * offset 32 of a freed 520-byte block, where usocket keeps its uv_poll_t (docs/architecture.md).
 *
 * The guard keeps each closed wrapper reachable until libuv is done with its handle. Closed in loop
 * iteration N, the handle is finished in N's closing phase, or in N+1's when the close ran from a close
 * callback; two chained setImmediate callbacks run in the check phase of N+1 at the earliest and of N+2
 * at the latest, after it either way. A wrapper that is never closed cannot be collected early: its
 * JS callback (a strong persistent) keeps it alive until close.
 *
 * A socket ended or closed while its connect() still runs in usocket's thread pool crashes the process
 * too (see afterConnect below): that call now waits for the connection.
 */
import { createRequire } from "node:module";

interface USocketLike {
  _wrap: object | null;
  /** Set once the socket is connected (usocket's "connected" event). */
  fd?: number;
  once(event: "connected", listener: () => void): unknown;
  [k: string]: unknown;
}
interface USocketPrototype {
  destroy(this: USocketLike, ...args: unknown[]): unknown;
  end(this: USocketLike, ...args: unknown[]): unknown;
  _wrapEvent(this: USocketLike, ...args: unknown[]): unknown;
  [GUARDED]?: true;
}

const GUARDED = Symbol.for("wl-webrtc.usocket-close-guard");

/** Closed native wrappers whose uv_poll_t libuv may still be closing. */
const closing = new Set<object>();

function keepUntilClosed(wrap: object): void {
  closing.add(wrap);
  setImmediate(() => setImmediate(() => closing.delete(wrap)));
}

/** Wraps `fn` so that a wrapper it closes (it sets `_wrap` to null) is kept until libuv finished closing it. */
function keepClosedWrap(fn: (this: USocketLike, ...args: unknown[]) => unknown) {
  return function (this: USocketLike, ...args: unknown[]): unknown {
    const wrap = this._wrap;
    try {
      return fn.apply(this, args);
    } finally {
      if (wrap !== null && wrap !== undefined && this._wrap !== wrap) keepUntilClosed(wrap);
    }
  };
}

/**
 * Wraps `end` or `destroy` so that, while a connect is still in flight, the call waits for the connection.
 * usocket's native connect runs on a worker thread and initialises the poll handle only when it completes:
 * a shutdown before that starts polling an uninitialised handle (SIGSEGV), and a close before that leaves
 * the completion calling back into a closed wrapper. Both are seen when the desktop's bus goes away while
 * a D-Bus connection is being made (a desktop restart). A connect that fails closes the socket itself.
 */
function afterConnect(name: "end" | "destroy", fn: (this: USocketLike, ...args: unknown[]) => unknown) {
  return function (this: USocketLike, ...args: unknown[]): unknown {
    if (this._wrap !== null && this._wrap !== undefined && this.fd === undefined) {
      this.once("connected", () => (this[name] as (...a: unknown[]) => unknown)(...args));
      return this;
    }
    return fn.apply(this, args);
  };
}

/** The USocket class dbus-next loads (resolved from dbus-next's own location), or undefined without usocket. */
function usocketPrototype(): USocketPrototype | undefined {
  try {
    const fromDbusNext = createRequire(createRequire(import.meta.url).resolve("dbus-next"));
    const mod = fromDbusNext("usocket") as { USocket?: { prototype: USocketPrototype } };
    return mod.USocket?.prototype;
  } catch {
    return undefined; // not installed or not built: dbus-next falls back to net sockets, nothing to guard
  }
}

/**
 * Installs the guard (idempotent). Must run before the first D-Bus connection is made: usocket binds its
 * event handler when a socket connects. Returns whether usocket is present and guarded.
 */
export function guardUsocketClose(): boolean {
  const proto = usocketPrototype();
  if (proto === undefined || typeof proto.destroy !== "function" || typeof proto.end !== "function" || typeof proto._wrapEvent !== "function") return false;
  if (proto[GUARDED] === true) return true;
  proto.end = afterConnect("end", proto.end);
  proto.destroy = keepClosedWrap(afterConnect("destroy", proto.destroy));
  proto._wrapEvent = keepClosedWrap(proto._wrapEvent);
  proto[GUARDED] = true;
  return true;
}

/** Closed wrappers still held (tests). */
export function usocketWrapsClosing(): number {
  return closing.size;
}
