/**
 * The whole JS surface of the native addon `native/build/Release/wl_webrtc.node` (built from
 * native/binding.gyp). Hand-written; load it through `agent/native/addon.ts`, never directly.
 *
 * Arguments are validated in TypeScript before they get here (agent/capture/*.ts); the native side
 * only checks the shape. Native threads never touch JS values: events arrive through one bounded
 * thread-safe function per object.
 */

// ---- versions ---------------------------------------------------------------------------------------

export interface NativeVersions {
  /** libpipewire the addon runs with (pw_get_library_version). */
  readonly pipewireLibrary: string;
  /** libpipewire headers the addon was built with. */
  readonly pipewireHeaders: string;
  /** N-API version the addon targets. */
  readonly napi: number;
}

// ---- damage -----------------------------------------------------------------------------------------

export interface NativeRect {
  x: number;
  y: number;
  width: number;
  height: number;
}

export interface NativeDiffResult {
  /** Damaged area: dirty tiles merged into runs per tile row, then vertically. Clipped, non-overlapping. */
  rects: NativeRect[];
  dirtyTiles: number;
  /** Time spent in the native comparison only (CLOCK_MONOTONIC). */
  elapsedNs: number;
}

// ---- capture ----------------------------------------------------------------------------------------

export type NativeCaptureState = "connecting" | "paused" | "streaming" | "error" | "closed";
export type NativeBufferType = "memfd" | "memptr" | "dmabuf";
export type NativeDamageSource = "full" | "compositor" | "tiles";

export interface NativeFormat {
  width: number;
  height: number;
  /** Bytes per row of the producer's buffers; 0 until the first buffer arrives. */
  stride: number;
  /** SPA video format name: "BGRx", "RGBx", "BGRA", "RGBA", "xRGB", "xBGR", "ARGB", "ABGR". */
  format: string;
  /** null until the first buffer arrives (a static screen may send none for a while). */
  bufferType: NativeBufferType | null;
  /** Negotiated frame rate; 0 means variable. */
  framerate: number;
  maxFramerate: number;
}

export interface NativeCaptureOptions {
  /** The portal's PipeWire remote fd (dup'd natively; the caller keeps and closes it), or -1 for the
   *  default daemon of this process's XDG_RUNTIME_DIR / PIPEWIRE_RUNTIME_DIR. */
  fd: number;
  /** Node id to capture (0xffffffff: any). */
  nodeId: number;
  /** Tile size of the native differ, used when the producer sends no damage. */
  tileSize: number;
  /** PipeWire node name of the consumer stream. */
  name?: string;
}

export type NativeCaptureEvent =
  | { type: "state"; state: NativeCaptureState; message: string }
  | { type: "format"; format: NativeFormat | null }
  | {
      type: "frame";
      seq: number;
      width: number;
      height: number;
      /** What changed since the previous frame event (merged when notes were coalesced). */
      damage: NativeRect[];
      damageRatio: number;
      damageSource: NativeDamageSource;
      /** The producer's pts (SPA_META_Header), -1 when absent. */
      ptsNs: number;
      /** PipeWire process callback -> frame in the mailbox. */
      latencyUs: number;
      /** Frame notes replaced before JS read them (the JS thread was busy). */
      coalesced: number;
    };

export interface NativeCaptureCounters {
  framesReceived: number;
  framesDelivered: number;
  framesDropped: number;
  framesUnchanged: number;
  framesEmpty: number;
  framesCorrupted: number;
  buffersSkipped: number;
  framesNoSlot: number;
  renegotiations: number;
}

export interface NativeTiming {
  count: number;
  minUs: number;
  avgUs: number;
  maxUs: number;
  /** Upper bounds of `buckets` (µs); the last bucket counts everything above the last bound. */
  bucketBoundsUs: number[];
  buckets: number[];
}

export interface NativeCursor {
  id: number;
  x: number;
  y: number;
  hotspotX: number;
  hotspotY: number;
  shapeWidth: number;
  shapeHeight: number;
  shapeSerial: number;
}

export interface NativeCaptureSnapshot {
  state: NativeCaptureState;
  message: string;
  format: NativeFormat | null;
  counters: NativeCaptureCounters;
  damage: { seq: number; rects: NativeRect[]; ratio: number; source: NativeDamageSource };
  processToAvailable: NativeTiming;
  /** Only when the producer sends SPA_META_Cursor (xdpw 0.7 does not). */
  cursor: NativeCursor | null;
  dmabuf: { offered: boolean; reason: string };
}

export interface NativeFrameCopy {
  /** Tightly packed: stride === width * 4. */
  data: Buffer;
  width: number;
  height: number;
  stride: number;
  format: string;
  seq: number;
  ptsNs: number;
  damage: NativeRect[];
  damageSource: NativeDamageSource;
  crop: NativeRect | null;
}

/**
 * A PipeWire consumer stream on its own pw_thread_loop. Frames stay in native memory; the newest one
 * sits in a one-slot mailbox that native consumers (the encoder, same addon) take through the C++
 * `wl::capture::LatestFrameSource` interface (native/src/capture/frame.h).
 */
export declare class PipeWireCapture {
  /** Connects at once; throws Error with PipeWire's reason when the daemon cannot be reached. */
  constructor(options: NativeCaptureOptions, onEvent: (events: NativeCaptureEvent[]) => void);
  snapshot(): NativeCaptureSnapshot;
  /** Copies the newest published frame (not taken from the mailbox). null before the first frame. */
  copyFrame(): NativeFrameCopy | null;
  cursorShape(): { width: number; height: number; serial: number; rgba: Buffer } | null;
  /** Disconnects, joins the loop thread, releases the thread-safe function. Idempotent. */
  close(): void;
  readonly closed: boolean;
}

export interface WlWebrtcAddon {
  readonly versions: NativeVersions;
  readonly PipeWireCapture: typeof PipeWireCapture;
  /** Compares two frames of the same geometry (both `stride` bytes per row, 4 bytes per pixel). */
  diffTiles(prev: Buffer, cur: Buffer, width: number, height: number, stride: number, tileSize: number): NativeDiffResult;
}
