import { Counter, Gauge, Histogram, type Registry } from "prom-client";

/** Upper bounds (seconds) of the per-stage histograms: 0.25 ms .. 266 ms, as the native buckets. */
const STAGE_BUCKETS = [0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.033, 0.066, 0.133, 0.266];

export const DROP_REASONS = ["busy", "rate", "queue_full", "unchanged", "failed"] as const;
export type DropReason = (typeof DROP_REASONS)[number];

/**
 * The encode stage's Prometheus series (`wl_webrtc_encode_*`), registered on the registries the
 * caller gives (the agent's own registry, see agent/metrics/metrics.ts). One instance serves every
 * encoder of the process; series carry no per-encoder label (there is one desktop per agent).
 */
/** What an encoder reports at scrape time (counters the native side keeps). */
export interface EncodeMetricsSource {
  /** Drops since the last call, by reason. */
  takeDrops(): Partial<Record<DropReason, number>>;
  /** Bits per second produced over the last second. */
  producedBps(): number;
}

export class EncodeMetrics {
  readonly #sources = new Set<EncodeMetricsSource>();
  readonly waitSeconds: Histogram;
  readonly convertSeconds: Histogram;
  readonly encodeSeconds: Histogram;
  readonly frames: Counter<"kind">;
  readonly dropped: Counter<"reason">;
  readonly bytes: Counter;
  readonly fallbacks: Counter<"from" | "to">;
  readonly keyframeRequests: Counter<"reason">;
  readonly activeBackend: Gauge<"backend">;
  readonly targetBitrate: Gauge;
  readonly producedBitrate: Gauge;

  constructor(registers: Registry[]) {
    const r = registers;
    this.waitSeconds = new Histogram({
      name: "wl_webrtc_encode_wait_seconds",
      help: "Time a captured frame waited in the mailbox before the encoder picked it up",
      buckets: STAGE_BUCKETS,
      registers: r,
    });
    this.convertSeconds = new Histogram({
      name: "wl_webrtc_encode_convert_seconds",
      help: "Pixel format conversion (BGRx -> I420/NV12) per frame",
      buckets: STAGE_BUCKETS,
      registers: r,
    });
    this.encodeSeconds = new Histogram({ name: "wl_webrtc_encode_duration_seconds", help: "Encoder time per frame", buckets: STAGE_BUCKETS, registers: r });
    this.frames = new Counter({
      name: "wl_webrtc_encode_frames_total",
      help: "Encoded access units by kind (key, delta, refresh: a re-encode of an unchanged screen)",
      labelNames: ["kind"],
      registers: r,
    });
    this.dropped = new Counter({
      name: "wl_webrtc_encode_dropped_frames_total",
      help: "Frames not encoded or not delivered, by reason (busy: replaced while the encoder worked; rate: max_fps; queue_full: JS behind; unchanged: no damage; failed: encoder failure)",
      labelNames: ["reason"],
      registers: r,
      // Native counters, read at scrape time: nothing to do per frame for them.
      collect: () => this.sync(),
    });
    this.bytes = new Counter({ name: "wl_webrtc_encode_bytes_total", help: "Bytes of H.264 produced", registers: r });
    this.fallbacks = new Counter({
      name: "wl_webrtc_encode_fallbacks_total",
      help: "Encoder backend fallbacks (could not open, or failed mid-stream)",
      labelNames: ["from", "to"],
      registers: r,
    });
    this.keyframeRequests = new Counter({
      name: "wl_webrtc_encode_keyframe_requests_total",
      help: "Keyframe requests by reason (before rate limiting)",
      labelNames: ["reason"],
      registers: r,
    });
    this.activeBackend = new Gauge({ name: "wl_webrtc_encode_backend", help: "The active encoder backend (1)", labelNames: ["backend"], registers: r });
    this.targetBitrate = new Gauge({ name: "wl_webrtc_encode_target_bitrate_bps", help: "The encoder's bitrate target", registers: r });
    this.producedBitrate = new Gauge({
      name: "wl_webrtc_encode_bitrate_bps",
      help: "Bitrate produced over the last second",
      registers: r,
      collect: () => this.sync(),
    });
    for (const reason of DROP_REASONS) this.dropped.inc({ reason }, 0);
    this.producedBitrate.set(0);
    for (const kind of ["key", "delta", "refresh"]) this.frames.inc({ kind }, 0);
  }

  attach(source: EncodeMetricsSource): void {
    this.#sources.add(source);
  }

  /** Takes the source's last counts and forgets it (its encoder closed). */
  detach(source: EncodeMetricsSource): void {
    if (!this.#sources.delete(source)) return;
    this.#add(source);
    if (this.#sources.size === 0) this.producedBitrate.set(0);
  }

  /** Pulls the attached encoders' native counters into the series. */
  sync(): void {
    let bps = 0;
    for (const s of this.#sources) bps += this.#add(s);
    this.producedBitrate.set(bps);
  }

  #add(source: EncodeMetricsSource): number {
    for (const [reason, n] of Object.entries(source.takeDrops())) if (n) this.dropped.inc({ reason }, n);
    return source.producedBps();
  }
}
