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
  /** Buffers negotiated with the producer (0 until they are added). We ask for as many as fit in 64 MB,
   *  3..8 (native/src/capture/dmabuf.h: a producer short of buffers delays changes); the producer may
   *  give fewer. */
  buffers: number;
  /** Negotiated frame rate; 0 means variable. */
  framerate: number;
  maxFramerate: number;
  /** The format carries a DRM modifier: DMA-BUF buffers were negotiated (only with a GPU importer). */
  dmabuf: boolean;
  /** The producer's DRM format modifier, "0x%016x" (dmabuf only). */
  modifier?: string;
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
  /** Offer DMA-BUF (zero copy to VA-API) importing on this render node; absent: shared memory only. */
  dmabufDevice?: string;
  /** Without dmabufDevice: why not, for snapshot().dmabuf.reason. */
  dmabufOffReason?: string;
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
    }
  /** SPA_META_Cursor moved or changed shape (keep-latest: intermediate positions are skipped). */
  | { type: "cursor"; cursor: NativeCursor };

export interface NativeCaptureCounters {
  framesReceived: number;
  framesDelivered: number;
  framesDropped: number;
  framesUnchanged: number;
  framesEmpty: number;
  framesCorrupted: number;
  buffersSkipped: number;
  framesNoSlot: number;
  /** Published frames that reference the producer's PipeWire buffer (no copy; the buffer goes back when released). */
  framesHeld: number;
  /** Published shared-memory frames copied out of the buffer (MemPtr buffers, or framesCopiedShort). */
  framesCopied: number;
  /** Copied because holding the buffer would have left the producer fewer than 2. */
  framesCopiedShort: number;
  /** Buffers held by frames now, and the most at once. */
  buffersHeld: number;
  buffersHeldMax: number;
  /** Held buffers PipeWire handed us again (the producer reused them while a frame held them: PipeWire
   *  0.3.65 does not wait for the consumer), and held buffers removed by a renegotiation. */
  buffersRedeliveredHeld: number;
  buffersRemovedHeld: number;
  /** The tile differ's reference frame was such a reused buffer: that frame went out fully damaged. */
  referenceLost: number;
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
 * A PipeWire consumer stream on its own pw_thread_loop. Frames stay in native memory; each native
 * consumer (an encoder, same addon: the main one and a lower rung) registers its own one-slot mailbox
 * and takes the newest frame from it through the C++ `wl::capture::LatestFrameSource` interface
 * (native/src/capture/frame.h).
 */
export declare class PipeWireCapture {
  /** Connects at once; throws Error with PipeWire's reason when the daemon cannot be reached. */
  constructor(options: NativeCaptureOptions, onEvent: (events: NativeCaptureEvent[]) => void);
  snapshot(): NativeCaptureSnapshot;
  /** Copies the newest published frame (not taken from the mailbox). null before the first frame,
   *  and for DMA-BUF frames (no CPU copy of GPU memory). */
  copyFrame(): NativeFrameCopy | null;
  cursorShape(): { width: number; height: number; serial: number; rgba: Buffer } | null;
  /** Disconnects, joins the loop thread, releases the thread-safe function. Idempotent. */
  close(): void;
  readonly closed: boolean;
}

// ---- encode ----------------------------------------------------------------------------------------

export type NativeEncoderBackend = "vaapi" | "nvenc" | "x264" | "openh264";

export interface NativeEncoderCaps {
  /** Bitrate changes apply in place, without an IDR (libx264, OpenH264). */
  bitrateWithoutIdr: boolean;
  framerateWithoutIdr: boolean;
  /** Honours region-of-interest side data (damage-aware quality). */
  roi: boolean;
  intraRefresh: boolean;
  /** Imports DMA-BUF frames without a CPU copy. */
  zeroCopyDmabuf: boolean;
}

export interface NativeEncoderProbe {
  name: string;
  /** This addon has the code and libavcodec has the encoder. */
  compiled: boolean;
  /** A 256x144 encoder really opened and encoded a frame here. */
  available: boolean;
  /** Why not (no /dev/dri render node, no libcuda, ...), or what was used. */
  reason: string;
  /** The device node it found (vaapi: "/dev/dri/renderD128"); "" otherwise. */
  device: string;
  caps: NativeEncoderCaps;
}

export interface NativeEncoderOptions {
  /** Priority order; the first that opens wins, a failing one falls back to the next. */
  backends: string[];
  /** Initial input size; the encoder follows the frames' size (reopening with an IDR). */
  width: number;
  height: number;
  /** Output size as a fraction of the input's, in (0, 1] (validated in TS): each dimension scaled by
   *  libswscale and rounded down to even (at least 16). Absent or 1: the input's size. */
  outputScale?: number;
  bitrateBps: number;
  /** Frame-rate cap (pacing) and the encoders' nominal rate. */
  fps: number;
  profile: "constrained_baseline" | "main";
  preset: string;
  intraRefresh: boolean;
  damageRoi: boolean;
  /** Re-encode the last frame after this long without changes; 0: never. */
  refreshIntervalMs: number;
  /** Backoff cap of converged refreshes (the interval doubles up to this); <= refreshIntervalMs: constant. Absent: 8000. */
  refreshMaxIntervalMs?: number;
  /** Encoder threads; 0 or absent: one per core. */
  threads?: number;
  /** Bench only: no frame-rate cap and no real-frame-rate adaptation (the ffmpeg CLI's settings exactly). */
  benchmark?: boolean;
}

export type NativeEncoderEvent =
  | {
      type: "frame";
      /** One access unit, Annex-B; IDRs carry SPS and PPS. */
      data: Buffer;
      keyframe: boolean;
      /** A re-encode of an unchanged screen (refresh_interval_ms). */
      refresh: boolean;
      /** 1, 2, ...; a gap means units were dropped because JS did not keep up (then an IDR follows). */
      seq: number;
      /** The capture frame's seq. */
      sourceSeq: number;
      width: number;
      height: number;
      captureTimeMs: number;
      encodeUs: number;
      waitUs: number;
      convertUs: number;
      /** 90 kHz of the capture time (CLOCK_MONOTONIC itself, so every encoder of one capture agrees), modulo 2^32. */
      rtpTimestamp: number;
      backend: string;
    }
  | { type: "format"; backend: string; profileLevelId: string; width: number; height: number }
  | { type: "fallback"; from: string; to: string; reason: string }
  /** Every backend failed: the encoder thread stopped. */
  | { type: "error"; message: string }
  /** The frame source closed: the encoder thread stopped. */
  | { type: "ended"; message: string };

export interface NativeEncoderStats {
  framesIn: number;
  framesEncoded: number;
  framesRefresh: number;
  /** Refreshes that came out converged (<= refreshConvergedBytes): each doubles the next interval, up to the cap. */
  refreshConverged: number;
  /** The interval the next refresh waits after the last encode, ms (250 ms after a change, then the backoff). */
  refreshNextMs: number;
  /** At the current size: a refresh this small (or empty) is converged. */
  refreshConvergedBytes: number;
  keyframes: number;
  keyframeRequests: number;
  /** dmabuf: DMA-BUF frames a software backend could not read (not LINEAR): capture renegotiates to shared memory. */
  dropped: { busy: number; rate: number; queueFull: number; unchanged: number; failed: number; dmabuf: number };
  bytesOut: number;
  fallbacks: number;
  reinits: number;
  bitrateChanges: number;
  backend: string;
  bitrateBps: number;
  fps: number;
  width: number;
  height: number;
  profileLevelId: string;
  wait: NativeEncoderTiming;
  convert: NativeEncoderTiming;
  encode: NativeEncoderTiming;
}

export interface NativeEncoderTiming extends NativeTiming {
  sumUs: number;
}

/**
 * The encoder thread (native/src/encode/pipeline.h): pulls the newest frame from a PipeWireCapture's
 * mailbox (or a FrameFeeder), converts it once, encodes it with the first working backend and hands
 * access units to `onEvents` through a bounded thread-safe function.
 */
export declare class NativeVideoEncoder {
  /** Opens a backend synchronously; throws Error (with `openEvents`) when none opens. */
  constructor(source: PipeWireCapture | FrameFeeder, options: NativeEncoderOptions, onEvents: (events: NativeEncoderEvent[]) => void);
  /** Fallbacks and the format from opening (before any onEvents call). */
  readonly openEvents: NativeEncoderEvent[];
  requestKeyframe(): void;
  setBitrate(bps: number): void;
  setFramerate(fps: number): void;
  /** Test hook: the current backend's next encode fails like a broken device. */
  injectFault(): void;
  stats(): NativeEncoderStats;
  /** Stops and joins the encoder thread, closes the backend, releases the thread-safe function. Idempotent. */
  close(): void;
  readonly closed: boolean;
}

/** A frame source fed from JS or from recorded raw frames (bench, tests); same mailbox semantics as capture. */
export declare class FrameFeeder {
  constructor();
  /** Copies a frame in and publishes it; `damage` null or empty: the whole frame changed. */
  push(data: Buffer, width: number, height: number, stride: number, format: string, damage?: NativeRect[] | null): void;
  /** Test hook (no GPU): the frame goes into a memfd published as a DMA-BUF frame with this modifier,
   *  to exercise the encoder's DMA-BUF handling in software backends (LINEAR: mmap; others: refused). */
  pushMemfdAsDmabuf(data: Buffer, width: number, height: number, stride: number, format: "BGRx", modifier: "linear" | "x-tiled" | "implicit"): void;
  /** How often the encoder asked this source to renegotiate to shared memory, and why (last). */
  sharedMemoryRequests(): { count: number; lastReason: string };
  /** Loads up to `count` raw frames (width*height*4 bytes each) from a file; returns how many. */
  load(path: string, width: number, height: number, format: string, count: number): number;
  /** Publishes the loaded frames on a native thread: fps 0 = each once the previous was taken. */
  play(fps: number, loops?: number): void;
  readonly played: number;
  readonly playing: boolean;
  close(): void;
  readonly closed: boolean;
}

/**
 * SRTP AEAD_AES_128_GCM (RFC 7714) encryption of outgoing RTP packets with one session key kept set up
 * in OpenSSL (Node's own): used by agent/rtc/srtp.ts in place of werift's per-packet node:crypto cipher.
 */
export declare class SrtpGcmSealer {
  /** `sessionKey` 16 bytes, `sessionSalt` 12 (the SRTP session key and salt, not the master ones). */
  constructor(sessionKey: Buffer, sessionSalt: Buffer);
  /** header || AES-128-GCM(payload) || 16-byte tag, `header` (serialized) as additional authenticated data. */
  seal(header: Buffer, payload: Buffer, ssrc: number, rolloverCounter: number, sequenceNumber: number): Buffer;
  /** The same into `out`, exactly header + payload + 16 bytes long (a pooled Buffer.allocUnsafe slice: cheaper). */
  sealInto(out: Buffer, header: Buffer, payload: Buffer, ssrc: number, rolloverCounter: number, sequenceNumber: number): void;
  /** Frees the OpenSSL context (also done when the object is collected); seal() then throws. Idempotent. */
  close(): void;
  readonly closed: boolean;
}

export interface WlWebrtcAddon {
  readonly versions: NativeVersions;
  /** Returns the C heap's free pages to the system (glibc malloc_trim(0)); true if some were. A few ms. */
  trimMemory(): boolean;
  readonly PipeWireCapture: typeof PipeWireCapture;
  readonly NativeVideoEncoder: typeof NativeVideoEncoder;
  readonly FrameFeeder: typeof FrameFeeder;
  readonly SrtpGcmSealer: typeof SrtpGcmSealer;
  /** Probes the named backends (default: all, in the default priority order). Synchronous, a few ms each. */
  probeEncoders(names?: string[]): NativeEncoderProbe[];
  /** Compares two frames of the same geometry (both `stride` bytes per row, 4 bytes per pixel). With
   *  `dst` (>= width*4*height bytes) it also copies `cur` there, tightly packed, in the same pass. */
  diffTiles(prev: Buffer, cur: Buffer, width: number, height: number, stride: number, tileSize: number, dst?: Buffer): NativeDiffResult;
}
