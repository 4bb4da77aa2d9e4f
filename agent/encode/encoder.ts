import type { CaptureStream } from "../capture/capture-stream.js";
import type { EncodeConfig } from "../config/schema.js";
import type { Logger } from "../log/logger.js";
import { loadAddon } from "../native/addon.js";
import type { FrameFeeder, NativeEncoderEvent, NativeEncoderStats, NativeVideoEncoder, PipeWireCapture } from "../native/addon.js";
import { InvalidStateError, UnsupportedError, WlError } from "../util/errors.js";
import { TypedEmitter } from "../util/events.js";
import type { DropReason, EncodeMetrics, EncodeMetricsSource } from "./metrics.js";
import type { EncodedFrame, EncodedSourceEvents, EncodedVideoSource, H264Format, KeyframeReason } from "./types.js";

export const ENCODER_BACKENDS = ["vaapi", "nvenc", "x264", "openh264"] as const;
export type EncoderBackend = (typeof ENCODER_BACKENDS)[number];

/** Bitrates the rtc stage may ask for: below 50 kbit/s nothing is legible, above 200 Mbit/s no link carries it. */
export const MIN_BITRATE_BPS = 50_000;
export const MAX_BITRATE_BPS = 200_000_000;

export interface EncoderFallback {
  from: string;
  to: string;
  reason: string;
}

export type VideoEncoderEvents = EncodedSourceEvents & {
  /** A backend could not open or failed mid-stream and the next one took over (also logged and counted). */
  fallback: [EncoderFallback];
};

/** Something whose native frame mailbox the encoder thread can read: a CaptureStream, or a FrameFeeder. */
export type EncoderFrameSource = CaptureStream | { readonly nativeFrameSource: PipeWireCapture | FrameFeeder };

export interface VideoEncoderOptions {
  capture: EncoderFrameSource;
  config: EncodeConfig;
  log: Logger;
  metrics?: EncodeMetrics;
  /** Initial size; default the capture's negotiated format. The encoder follows the frames' size. */
  width?: number;
  height?: number;
  /** Encoder threads; default one per core. */
  threads?: number;
  /** Output size as a fraction of the capture's (a lower rung), 0.1..1; default 1. Each dimension is
   *  rounded down to even, at least 16; the encoder follows the capture's size changes scaled so. */
  outputScale?: number;
  /** Initial bitrate (bit/s); default config.bitrate_kbps. */
  bitrateBps?: number;
  /** Bench only: no max_fps pacing, no real-frame-rate adaptation (identical settings to the ffmpeg CLI). */
  benchmark?: boolean;
}

export interface EncoderStats extends NativeEncoderStats {
  /** Keyframe requests merged into an earlier one by keyframe_min_interval_ms. */
  keyframeRequestsCoalesced: number;
}

/**
 * The desktop's H.264 source: a native encoder thread fed straight from the capture mailbox (the
 * pixels never reach JS), behind one interface for libx264, OpenH264, VA-API and NVENC with automatic
 * fallback along `config.backends`. Implements {@link EncodedVideoSource} for the rtc stage.
 *
 * Keyframe requests are rate-limited: requests closer together than `keyframe_min_interval_ms`
 * (a joining browser sends several PLIs per second until it gets one) are merged into one IDR at the
 * end of the interval. A new viewer's request (`new-viewer`) is not delayed: that viewer sees nothing
 * until it comes; on a still screen the native pipeline makes it from the last picture at once.
 */
export class VideoEncoder extends TypedEmitter<VideoEncoderEvents> implements EncodedVideoSource {
  readonly #native: NativeVideoEncoder;
  readonly #log: Logger;
  readonly #metrics: EncodeMetrics | undefined;
  readonly #config: EncodeConfig;
  #format: H264Format | null = null;
  #backend = "";
  #targetBps: number;
  #closed = false;
  #lastKeyframeRequest = -Infinity;
  #keyframeTimer: NodeJS.Timeout | undefined;
  #coalesced = 0;
  #lastDrops: Record<DropReason, number> = { busy: 0, rate: 0, queue_full: 0, unchanged: 0, failed: 0 };
  #window: { t: number; bytes: number }[] = [];
  readonly #metricsSource: EncodeMetricsSource;

  private constructor(options: VideoEncoderOptions, width: number, height: number) {
    super();
    this.#log = options.log;
    this.#metrics = options.metrics;
    this.#config = options.config;
    this.#targetBps = options.bitrateBps !== undefined ? Math.round(options.bitrateBps) : options.config.bitrate_kbps * 1000;
    const addon = loadAddon();
    const source = "nativeFrameSource" in options.capture ? options.capture.nativeFrameSource : undefined;
    if (source === undefined) throw new TypeError("VideoEncoder.open: capture has no native frame source");
    let native: NativeVideoEncoder;
    try {
      native = new addon.NativeVideoEncoder(
        source,
        {
          backends: [...options.config.backends],
          width,
          height,
          bitrateBps: this.#targetBps,
          fps: options.config.max_fps,
          profile: options.config.profile,
          preset: options.config.preset,
          intraRefresh: options.config.intra_refresh,
          damageRoi: options.config.damage_roi,
          refreshIntervalMs: options.config.refresh_interval_ms,
          refreshMaxIntervalMs: options.config.refresh_max_interval_ms,
          ...(options.threads !== undefined ? { threads: options.threads } : {}),
          ...(options.outputScale !== undefined && options.outputScale < 1 ? { outputScale: options.outputScale } : {}),
          ...(options.benchmark === true ? { benchmark: true } : {}),
        },
        (events) => this.#onNative(events),
      );
    } catch (err) {
      const events = (err as { openEvents?: NativeEncoderEvent[] }).openEvents ?? [];
      for (const e of events) if (e.type === "fallback") this.#log.warn({ backend: e.from, reason: e.reason }, "encoder backend unavailable");
      throw new UnsupportedError(
        `${(err as Error).message}. Install libx264 (apt-get install libx264-164) or list an available backend in [encode] backends; ` +
          `"wl-webrtc probe" shows why each one is unavailable`,
        { cause: err },
      );
    }
    this.#native = native;
    this.#metricsSource = { takeDrops: () => this.#takeDrops(), producedBps: () => this.#producedBps() };
    this.#metrics?.attach(this.#metricsSource);
    this.#metrics?.targetBitrate.set(this.#targetBps);
    this.#onNative(native.openEvents);
  }

  /**
   * Opens the first backend of `config.backends` that works here and starts the encoder thread on the
   * capture's mailbox. Resolves once an encoder is open and its H.264 format (profile-level-id) is
   * known. Rejects with TypeError for bad options and UnsupportedError when no backend opens.
   */
  static async open(options: VideoEncoderOptions): Promise<VideoEncoder> {
    validateOptions(options);
    const fmt = "format" in options.capture ? options.capture.format : null;
    const width = options.width ?? fmt?.width;
    const height = options.height ?? fmt?.height;
    if (width === undefined || height === undefined) {
      throw new TypeError("VideoEncoder.open: width and height are needed when the capture has no negotiated format yet");
    }
    checkSize(width, height);
    return new VideoEncoder(options, width, height);
  }

  get format(): H264Format | null {
    return this.#format;
  }
  /** The active backend ("x264", ...). */
  get backend(): string {
    return this.#backend;
  }
  get targetBitrate(): number {
    return this.#targetBps;
  }
  get closed(): boolean {
    return this.#closed;
  }

  requestKeyframe(reason: KeyframeReason): void {
    if (this.#closed) return;
    this.#metrics?.keyframeRequests.inc({ reason });
    const now = performance.now();
    // A new viewer sees nothing until a keyframe: it does not wait for the interval (the stage's gate
    // already keeps these to one per joining viewer); a merged request waiting is answered by it.
    if (reason === "new-viewer") {
      if (this.#keyframeTimer !== undefined) clearTimeout(this.#keyframeTimer);
      this.#keyframeTimer = undefined;
      this.#sendKeyframe(reason);
      return;
    }
    if (this.#keyframeTimer !== undefined) {
      this.#coalesced++;
      return;
    }
    const wait = this.#lastKeyframeRequest + this.#config.keyframe_min_interval_ms - now;
    if (wait <= 0) {
      this.#sendKeyframe(reason);
      return;
    }
    this.#coalesced++;
    this.#keyframeTimer = setTimeout(() => {
      this.#keyframeTimer = undefined;
      if (!this.#closed) this.#sendKeyframe(reason);
    }, wait);
  }

  #sendKeyframe(reason: KeyframeReason): void {
    this.#lastKeyframeRequest = performance.now();
    this.#log.debug({ reason }, "keyframe requested");
    this.#native.requestKeyframe();
  }

  /** Applied between frames; libx264 and OpenH264 change in place without an IDR, VA-API reopens. */
  setTargetBitrate(bps: number): void {
    if (this.#closed) throw new InvalidStateError("VideoEncoder.setTargetBitrate() after close()");
    if (!Number.isFinite(bps) || bps < MIN_BITRATE_BPS || bps > MAX_BITRATE_BPS) {
      throw new TypeError(`setTargetBitrate: bps must be a number in ${MIN_BITRATE_BPS}..${MAX_BITRATE_BPS}, got ${String(bps)}`);
    }
    const rounded = Math.round(bps);
    if (rounded === this.#targetBps) return;
    this.#targetBps = rounded;
    this.#native.setBitrate(rounded);
    this.#metrics?.targetBitrate.set(rounded);
  }

  /** Changes the frame-rate cap (max_fps) at run time. */
  setMaxFramerate(fps: number): void {
    if (this.#closed) throw new InvalidStateError("VideoEncoder.setMaxFramerate() after close()");
    if (!Number.isInteger(fps) || fps < 1 || fps > 240) throw new TypeError(`setMaxFramerate: fps must be an integer in 1..240, got ${String(fps)}`);
    this.#native.setFramerate(fps);
  }

  /** Counters and per-stage timing histograms of the native pipeline. */
  stats(): EncoderStats {
    if (this.#closed) throw new InvalidStateError("VideoEncoder.stats() after close()");
    return { ...this.#native.stats(), keyframeRequestsCoalesced: this.#coalesced };
  }

  /** Test hook: the current backend's next encode fails as a broken device would (fallback tests). */
  injectFault(): void {
    if (this.#closed) throw new InvalidStateError("VideoEncoder.injectFault() after close()");
    this.#native.injectFault();
  }

  /** Stops and joins the encoder thread and closes the backend. Idempotent; emits `close` once. */
  close(): void {
    if (this.#closed) return;
    this.#takeDropsFromNative();
    this.#closed = true;
    clearTimeout(this.#keyframeTimer);
    this.#keyframeTimer = undefined;
    this.#native.close();
    this.#metrics?.detach(this.#metricsSource);
    this.#metrics?.activeBackend.remove({ backend: this.#backend });
    this.#log.debug("encoder closed");
    this.safeEmit("close");
  }

  #onNative(events: NativeEncoderEvent[]): void {
    for (const e of events) {
      if (this.#closed) return; // units that were in flight when close() ran
      switch (e.type) {
        case "frame":
          this.#onFrame(e);
          break;
        case "format": {
          if (this.#backend !== e.backend) {
            if (this.#backend) this.#metrics?.activeBackend.remove({ backend: this.#backend });
            this.#metrics?.activeBackend.set({ backend: e.backend }, 1);
          }
          this.#backend = e.backend;
          this.#format = { profileLevelId: e.profileLevelId, packetizationMode: 1 };
          this.#log.info({ backend: e.backend, profileLevelId: e.profileLevelId, width: e.width, height: e.height }, "encoder format");
          this.safeEmit("format", { ...this.#format, width: e.width, height: e.height, backend: e.backend });
          break;
        }
        case "fallback":
          this.#log.warn({ from: e.from, to: e.to, reason: e.reason }, "encoder fallback");
          this.#metrics?.fallbacks.inc({ from: e.from, to: e.to });
          this.safeEmit("fallback", { from: e.from, to: e.to, reason: e.reason });
          break;
        case "error": {
          const err = new WlError("encode-failed", `H.264 encoding stopped: ${e.message}`);
          this.#log.error({ err: e.message }, "encoder failed, closing");
          this.safeEmit("error", err);
          this.close();
          break;
        }
        case "ended":
          this.#log.debug({ reason: e.message }, "encoder source ended");
          this.close();
          break;
      }
    }
  }

  #onFrame(e: Extract<NativeEncoderEvent, { type: "frame" }>): void {
    const now = performance.timeOrigin + performance.now();
    const frame: EncodedFrame & { waitUs: number; convertUs: number } = {
      data: e.data,
      keyframe: e.keyframe,
      seq: e.seq,
      width: e.width,
      height: e.height,
      captureTimeMs: e.captureTimeMs,
      readyTimeMs: now,
      encodeUs: e.encodeUs,
      rtpTimestamp: e.rtpTimestamp,
      backend: e.backend,
      refresh: e.refresh,
      waitUs: e.waitUs,
      convertUs: e.convertUs,
    };
    const m = this.#metrics;
    if (m) {
      m.frames.inc({ kind: e.refresh ? "refresh" : e.keyframe ? "key" : "delta" });
      m.bytes.inc(e.data.length);
      m.encodeSeconds.observe(e.encodeUs / 1e6);
      m.convertSeconds.observe(e.convertUs / 1e6);
      if (!e.refresh) m.waitSeconds.observe(e.waitUs / 1e6);
      this.#window.push({ t: now, bytes: e.data.length });
      this.#trimWindow(now);
    }
    this.safeEmit("frame", frame);
  }

  #trimWindow(now: number): void {
    let i = 0;
    while (i < this.#window.length && this.#window[i]!.t < now - 1000) i++;
    if (i > 0) this.#window.splice(0, i);
  }

  #producedBps(): number {
    this.#trimWindow(performance.timeOrigin + performance.now());
    let bytes = 0;
    for (const w of this.#window) bytes += w.bytes;
    return bytes * 8;
  }

  #takeDropsFromNative(): Record<DropReason, number> {
    if (this.#closed) return { busy: 0, rate: 0, queue_full: 0, unchanged: 0, failed: 0 };
    const d = this.#native.stats().dropped;
    // DMA-BUF frames a software backend could not read count as failed (stats().dropped.dmabuf has them apart).
    const now: Record<DropReason, number> = { busy: d.busy, rate: d.rate, queue_full: d.queueFull, unchanged: d.unchanged, failed: d.failed + d.dmabuf };
    const delta = {} as Record<DropReason, number>;
    for (const k of Object.keys(now) as DropReason[]) delta[k] = now[k] - this.#lastDrops[k];
    this.#lastDrops = now;
    this.#pendingDrops = addDrops(this.#pendingDrops, delta);
    return delta;
  }

  #pendingDrops: Record<DropReason, number> = { busy: 0, rate: 0, queue_full: 0, unchanged: 0, failed: 0 };

  #takeDrops(): Partial<Record<DropReason, number>> {
    this.#takeDropsFromNative();
    const out = this.#pendingDrops;
    this.#pendingDrops = { busy: 0, rate: 0, queue_full: 0, unchanged: 0, failed: 0 };
    return out;
  }
}

function addDrops(a: Record<DropReason, number>, b: Record<DropReason, number>): Record<DropReason, number> {
  return { busy: a.busy + b.busy, rate: a.rate + b.rate, queue_full: a.queue_full + b.queue_full, unchanged: a.unchanged + b.unchanged, failed: a.failed + b.failed };
}

function checkSize(width: number, height: number): void {
  // H.264 level 6.2 tops out at 8192x4320; odd sizes would need padding for 4:2:0.
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 16 || height < 16 || width > 8192 || height > 8192) {
    throw new TypeError(`VideoEncoder.open: size ${String(width)}x${String(height)} is outside 16..8192`);
  }
  if (width % 2 !== 0 || height % 2 !== 0) throw new TypeError(`VideoEncoder.open: size ${width}x${height} must be even (4:2:0 chroma)`);
}

function validateOptions(o: VideoEncoderOptions): void {
  if (typeof o !== "object" || o === null) throw new TypeError("VideoEncoder.open: options must be an object");
  if (typeof o.capture !== "object" || o.capture === null || !("nativeFrameSource" in o.capture)) {
    throw new TypeError("VideoEncoder.open: capture must be a CaptureStream (or a FrameFeeder holder)");
  }
  if ("closed" in o.capture && o.capture.closed === true) throw new InvalidStateError("VideoEncoder.open: the capture stream is closed");
  if (typeof o.log !== "object" || o.log === null) throw new TypeError("VideoEncoder.open: log (a pino Logger) is required");
  const c = o.config;
  if (typeof c !== "object" || c === null) throw new TypeError("VideoEncoder.open: config (the [encode] section) is required");
  if (!Array.isArray(c.backends) || c.backends.length === 0 || !c.backends.every((b) => (ENCODER_BACKENDS as readonly string[]).includes(b))) {
    throw new TypeError(`VideoEncoder.open: config.backends must list some of ${ENCODER_BACKENDS.join(", ")}`);
  }
  const int = (name: string, v: unknown, min: number, max: number): void => {
    if (!Number.isInteger(v) || (v as number) < min || (v as number) > max) throw new TypeError(`VideoEncoder.open: config.${name} must be an integer in ${min}..${max}, got ${String(v)}`);
  };
  int("bitrate_kbps", c.bitrate_kbps, MIN_BITRATE_BPS / 1000, MAX_BITRATE_BPS / 1000);
  int("max_fps", c.max_fps, 1, 240);
  int("refresh_interval_ms", c.refresh_interval_ms, 0, 60_000);
  int("refresh_max_interval_ms", c.refresh_max_interval_ms, 0, 600_000);
  int("keyframe_min_interval_ms", c.keyframe_min_interval_ms, 0, 10_000);
  if (c.profile !== "constrained_baseline" && c.profile !== "main") throw new TypeError(`VideoEncoder.open: config.profile must be constrained_baseline or main`);
  if (!["ultrafast", "superfast", "veryfast"].includes(c.preset)) throw new TypeError(`VideoEncoder.open: config.preset must be ultrafast, superfast or veryfast`);
  if (typeof c.intra_refresh !== "boolean" || typeof c.damage_roi !== "boolean") throw new TypeError("VideoEncoder.open: config.intra_refresh and damage_roi must be booleans");
  if (o.threads !== undefined) int("threads (option)", o.threads, 0, 64);
  if (o.outputScale !== undefined && (typeof o.outputScale !== "number" || !Number.isFinite(o.outputScale) || o.outputScale < 0.1 || o.outputScale > 1)) {
    throw new TypeError(`VideoEncoder.open: outputScale must be a number in 0.1..1, got ${String(o.outputScale)}`);
  }
  if (o.bitrateBps !== undefined && (typeof o.bitrateBps !== "number" || !Number.isFinite(o.bitrateBps) || o.bitrateBps < MIN_BITRATE_BPS || o.bitrateBps > MAX_BITRATE_BPS)) {
    throw new TypeError(`VideoEncoder.open: bitrateBps must be a number in ${MIN_BITRATE_BPS}..${MAX_BITRATE_BPS}, got ${String(o.bitrateBps)}`);
  }
}
