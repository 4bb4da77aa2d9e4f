import type { Logger } from "../log/logger.js";
import { loadAddon } from "../native/addon.js";
import type {
  NativeCaptureEvent,
  NativeCaptureState,
  NativeCaptureSnapshot,
  NativeCursor,
  NativeFormat,
  NativeFrameCopy,
  NativeRect,
  PipeWireCapture,
} from "../native/addon.js";
import { InvalidStateError, UnsupportedError, WlError } from "../util/errors.js";
import { TypedEmitter } from "../util/events.js";

export type CaptureState = "connecting" | "paused" | "streaming" | "error";
export type CaptureFormat = NativeFormat;
export type CaptureStats = NativeCaptureSnapshot;
export type FrameCopy = NativeFrameCopy;
export type Rect = NativeRect;
export type CursorInfo = NativeCursor;

/** "A new frame is in the mailbox": the next stage's wake-up. The pixels stay native. */
export interface FrameInfo {
  seq: number;
  width: number;
  height: number;
  /** Changed since the previous `frame` event; never empty (unchanged frames raise no event). */
  damage: Rect[];
  damageRatio: number;
  damageSource: "full" | "compositor" | "tiles";
  ptsNs: number;
  /** PipeWire process callback -> frame available, in microseconds. */
  latencyUs: number;
  /** Notifications merged into this one because the JS thread was busy. */
  coalesced: number;
}

export interface CaptureStreamEvents {
  [key: string]: unknown[];
  frame: [FrameInfo];
  format: [CaptureFormat];
  /** Cursor metadata (only producers that send SPA_META_Cursor; xdpw 0.7 does not). Fetch the
   *  bitmap with cursorShape() when shapeSerial changes. */
  cursor: [CursorInfo];
  state: [CaptureState, string];
  error: [WlError];
  close: [];
}

export interface CaptureStreamOptions {
  /** The portal's PipeWire remote fd (OpenPipeWireRemote). Not taken over: the caller closes it after
   *  this stream closed. Omit to use the default PipeWire daemon (tests). */
  fd?: number;
  /** The portal stream's node id. */
  nodeId: number;
  log: Logger;
  /** Tile size of the native differ when the compositor sends no damage. Default 64. */
  tileSize?: number;
  /** How long open() waits for a negotiated, streaming node. Default 5000 ms. */
  openTimeoutMs?: number;
  /** PipeWire node name of our consumer stream. */
  name?: string;
  /**
   * DMA-BUF (zero copy to a VA-API encoder): `device` is the render node to import on, chosen by
   * chooseDmabufCapture() (agent/encode/probe.ts) only when VA-API is the first usable encoder; null:
   * shared memory only, and `reason` shows in stats().dmabuf. Absent: shared memory.
   */
  dmabuf?: DmabufChoice;
}

export interface DmabufChoice {
  device: string | null;
  reason: string;
}

const PW_ID_ANY = 0xffffffff;

/**
 * One PipeWire screen-capture stream (native, own thread). Frames are copied into native memory and
 * offered to the next stage through a one-slot mailbox; JS gets `frame` notifications only when
 * something changed. After `open()` an error state (the node or the daemon went away) emits `error`
 * and closes the stream.
 */
export class CaptureStream extends TypedEmitter<CaptureStreamEvents> {
  readonly #native: PipeWireCapture;
  readonly #log: Logger;
  #state: CaptureState = "connecting";
  #format: CaptureFormat | null = null;
  #closed = false;
  #opened = false;
  #settle: ((err?: WlError) => void) | undefined;
  /** A frame that arrived before open() resolved: held back so the caller's listeners see it. */
  #earlyFrame: FrameInfo | undefined;

  private constructor(options: CaptureStreamOptions) {
    super();
    this.#log = options.log;
    const addon = loadAddon();
    try {
      this.#native = new addon.PipeWireCapture(
        {
          fd: options.fd ?? -1,
          nodeId: options.nodeId,
          tileSize: options.tileSize ?? 64,
          ...(options.name !== undefined ? { name: options.name } : {}),
          ...(options.dmabuf?.device != null ? { dmabufDevice: options.dmabuf.device } : {}),
          ...(options.dmabuf !== undefined && options.dmabuf.device == null ? { dmabufOffReason: options.dmabuf.reason } : {}),
        },
        (events) => this.#onNativeEvents(events),
      );
    } catch (err) {
      throw new UnsupportedError(`cannot connect to PipeWire: ${(err as Error).message}`, { cause: err });
    }
  }

  /**
   * Connects to PipeWire (the portal's fd, or the default daemon) and resolves once the stream is
   * streaming with a negotiated format. Frames may not have arrived yet: a static screen sends none.
   * Rejects with the reason (TypeError for bad options, UnsupportedError when PipeWire is unreachable,
   * WlError "capture-failed"/"capture-timeout" otherwise).
   */
  static async open(options: CaptureStreamOptions): Promise<CaptureStream> {
    validateOptions(options);
    const stream = new CaptureStream(options);
    const timeoutMs = options.openTimeoutMs ?? 5000;
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          const s = stream.#native.snapshot();
          reject(
            new WlError(
              "capture-timeout",
              `PipeWire node ${options.nodeId} did not start streaming within ${timeoutMs} ms ` +
                `(state ${s.state}${s.format ? "" : ", no format negotiated"}): is the node id right and the session manager (WirePlumber) running?`,
            ),
          );
        }, timeoutMs);
        stream.#settle = (err) => {
          clearTimeout(timer);
          stream.#settle = undefined;
          if (err) reject(err);
          else resolve();
        };
        stream.#checkOpened();
      });
    } catch (err) {
      stream.close();
      throw err;
    }
    stream.#opened = true;
    stream.#log.info({ nodeId: options.nodeId, format: stream.#format }, "capture streaming");
    // After the caller's `await` continuation has attached its listeners.
    setImmediate(() => {
      const early = stream.#earlyFrame;
      stream.#earlyFrame = undefined;
      if (early && !stream.#closed) stream.safeEmit("frame", early);
    });
    return stream;
  }

  get closed(): boolean {
    return this.#closed;
  }
  get state(): CaptureState {
    return this.#state;
  }
  /** The negotiated format; stride and bufferType fill in with the first buffer. */
  get format(): CaptureFormat | null {
    return this.#format;
  }

  /** Counters, damage of the last frame, timing histogram, cursor, DMA-BUF status. */
  stats(): CaptureStats {
    this.#assertOpen("stats");
    return this.#native.snapshot();
  }

  /**
   * The native stream, for the encoder (agent/encode/), whose thread pulls frames from its mailbox
   * without going through JS. Not for other uses: closing it bypasses this object.
   */
  get nativeFrameSource(): PipeWireCapture {
    return this.#native;
  }

  /** Copies the newest frame out of native memory (snapshots, tests). null before the first frame. */
  copyFrame(): FrameCopy | null {
    this.#assertOpen("copyFrame");
    return this.#native.copyFrame();
  }

  /** The cursor bitmap as RGBA, when the producer sends cursor metadata. */
  cursorShape(): { width: number; height: number; serial: number; rgba: Buffer } | null {
    this.#assertOpen("cursorShape");
    return this.#native.cursorShape();
  }

  /** Disconnects the stream and joins its thread. Idempotent; emits `close` once. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#native.close();
    this.#settle?.(new WlError("capture-failed", "the capture stream was closed while opening"));
    this.#log.debug("capture closed");
    this.safeEmit("close");
  }

  #assertOpen(what: string): void {
    if (this.#closed) throw new InvalidStateError(`CaptureStream.${what}() after close()`);
  }

  #checkOpened(): void {
    if (this.#settle && this.#state === "streaming" && this.#format !== null) this.#settle();
  }

  #onNativeEvents(events: NativeCaptureEvent[]): void {
    if (this.#closed) return;  // notes that were in flight when close() ran
    for (const e of events) {
      switch (e.type) {
        case "state":
          this.#onState(e.state, e.message);
          break;
        case "format":
          if (e.format === null) break;
          this.#format = e.format;
          this.#log.debug({ format: e.format }, "capture format");
          this.safeEmit("format", e.format);
          this.#checkOpened();
          break;
        case "cursor":
          if (this.#opened) this.safeEmit("cursor", e.cursor);
          break;
        case "frame": {
          const { type: _type, ...info } = e;
          if (this.#opened) this.safeEmit("frame", info);
          else this.#earlyFrame = mergeFrames(this.#earlyFrame, info);
          break;
        }
      }
      if (this.#closed) return;
    }
  }

  #onState(state: NativeCaptureState, message: string): void {
    if (state === "closed") return;
    this.#state = state;
    this.#log.debug({ state, message }, "capture state");
    this.safeEmit("state", state, message);
    if (state === "error") {
      const err = new WlError("capture-failed", `PipeWire capture failed: ${message}`);
      if (this.#settle) {
        this.#settle(err);
        return;
      }
      if (this.#opened) {
        this.#log.warn({ err: message }, "capture error, closing");
        this.safeEmit("error", err);
        this.close();
      }
      return;
    }
    this.#checkOpened();
  }
}

/** Two frame notes as one: the newer frame, with everything either changed. */
function mergeFrames(older: FrameInfo | undefined, newer: FrameInfo): FrameInfo {
  if (!older) return newer;
  const sameSize = older.width === newer.width && older.height === newer.height;
  if (!sameSize || older.damageSource === "full" || newer.damageSource === "full") {
    return { ...newer, damage: [{ x: 0, y: 0, width: newer.width, height: newer.height }], damageRatio: 1, damageSource: "full", coalesced: older.coalesced + newer.coalesced + 1 };
  }
  const damage = [...older.damage, ...newer.damage];
  const area = damage.reduce((a, r) => a + r.width * r.height, 0);
  return { ...newer, damage, damageRatio: Math.min(1, area / (newer.width * newer.height)), coalesced: older.coalesced + newer.coalesced + 1 };
}

function validateOptions(o: CaptureStreamOptions): void {
  if (typeof o !== "object" || o === null) throw new TypeError("CaptureStream.open: options must be an object");
  if (o.fd !== undefined && (!Number.isInteger(o.fd) || o.fd < 0 || o.fd > 0x7fffffff))
    throw new TypeError(`CaptureStream.open: fd must be a non-negative integer, got ${String(o.fd)}`);
  if (!Number.isInteger(o.nodeId) || o.nodeId < 0 || o.nodeId > PW_ID_ANY)
    throw new TypeError(`CaptureStream.open: nodeId must be a 32-bit unsigned integer, got ${String(o.nodeId)}`);
  if (o.tileSize !== undefined && (!Number.isInteger(o.tileSize) || o.tileSize < 8 || o.tileSize > 512))
    throw new TypeError(`CaptureStream.open: tileSize must be an integer in 8..512, got ${String(o.tileSize)}`);
  if (o.openTimeoutMs !== undefined && (!Number.isFinite(o.openTimeoutMs) || o.openTimeoutMs <= 0))
    throw new TypeError("CaptureStream.open: openTimeoutMs must be a positive number");
  if (o.name !== undefined && (typeof o.name !== "string" || o.name.length === 0 || o.name.length > 128))
    throw new TypeError("CaptureStream.open: name must be a non-empty string of at most 128 characters");
  if (typeof o.log !== "object" || o.log === null) throw new TypeError("CaptureStream.open: log (a pino Logger) is required");
  if (o.dmabuf !== undefined) {
    const d = o.dmabuf as unknown;
    if (typeof d !== "object" || d === null || typeof (d as DmabufChoice).reason !== "string")
      throw new TypeError("CaptureStream.open: dmabuf must be { device: string | null, reason: string }");
    const dev = (d as DmabufChoice).device;
    if (dev !== null && (typeof dev !== "string" || !/^\/dev\/dri\/renderD\d{1,4}$/.test(dev)))
      throw new TypeError(`CaptureStream.open: dmabuf.device must be a /dev/dri/renderD* path or null, got ${String(dev)}`);
  }
}
