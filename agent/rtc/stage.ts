import { readFileSync } from "node:fs";
import { Counter, Gauge } from "prom-client";
import { H264Packetizer, type RTCIceServer } from "werift";
import type { RtcConfig } from "../config/schema.js";
import type { Logger } from "../log/logger.js";
import type { Metrics } from "../metrics/metrics.js";
import type { EncodedFrame, EncodedVideoSource, KeyframeReason } from "../encode/types.js";
import type { SignalingServer } from "../signaling/server.js";
import type { Session } from "../signaling/session.js";
import type { ClientMessage } from "../signaling/protocol.js";
import { TypedEmitter } from "../util/events.js";
import { ConfigError, WlError, errorMessage } from "../util/errors.js";
import { KeyframeGate } from "./keyframe-gate.js";
import { PeerSession } from "./peer.js";
import { spsProfileLevelId, splitAnnexB } from "./h264.js";

/** Opens the shared encoded source when the first viewer arrives. Rejects with a message for the user. */
export type VideoSourceFactory = () => Promise<EncodedVideoSource>;

export interface RtcStageOptions {
  config: RtcConfig;
  signaling: SignalingServer;
  openSource: VideoSourceFactory;
  metrics: Metrics;
  log: Logger;
  env?: NodeJS.ProcessEnv;
  /** Keep the source open this long after the last viewer left (a reload reconnects without a new portal dialog). */
  sourceLingerMs?: number;
}

/** One frame's timing through the stage (benches); all wall clock ms (performance.timeOrigin + now). */
export interface FrameSentTrace {
  seq: number;
  rtpTimestamp: number;
  keyframe: boolean;
  bytes: number;
  /** PipeWire delivered the source frame (EncodedFrame.captureTimeMs). */
  captureTimeMs: number;
  /** The encoded frame reached JavaScript (EncodedFrame.readyTimeMs). */
  readyTimeMs: number;
  /** The last RTP packet to the last viewer was encrypted and handed to the socket (werift does both synchronously). */
  sentTimeMs: number;
  /** Viewers the frame went to. */
  viewers: number;
}

export type RtcStageEvents = {
  viewer: [PeerSession];
  /** Emitted only while someone listens (benches): the cost when unused is one listenerCount() per frame. */
  frameSent: [FrameSentTrace];
  close: [];
};

/** Used when the source has not told its format yet: constrained baseline 3.1, what every browser takes. */
const FALLBACK_PROFILE_LEVEL_ID = "42e01f";

/**
 * The streaming stage: one shared encoded source fanned out to one PeerSession per viewer.
 * Each frame is packetized once; each viewer gets it with its own sequence numbers, or not at all when
 * its own bitrate budget is exhausted (see docs/streaming.md). The encoder runs at the highest target
 * among viewers, so a slow viewer never drags a fast one down; keyframe wishes of all viewers pass one
 * rate limit. A viewer who leaves is closed and forgotten; with no viewers left, the source is closed.
 */
export class RtcStage extends TypedEmitter<RtcStageEvents> {
  readonly #o: RtcStageOptions;
  readonly #iceServers: RTCIceServer[];
  readonly #peers = new Map<string, PeerSession>();
  readonly #m: { viewers: Gauge; keyframeRequests: Counter<"reason">; framesDropped: Counter; retransmits: Counter };
  #source: EncodedVideoSource | undefined;
  #sourceOpening: Promise<EncodedVideoSource> | undefined;
  #gate: KeyframeGate | undefined;
  #packetizer: H264Packetizer | undefined;
  #profileLevelId: string | undefined;
  #lastClock: { rtpTimestamp: number; captureTimeMs: number } | null = null;
  #lingerTimer: NodeJS.Timeout | undefined;
  #abrTimer: NodeJS.Timeout;
  #closed = false;
  readonly #onSession = (s: Session): void => this.#attach(s);

  private constructor(opts: RtcStageOptions, iceServers: RTCIceServer[]) {
    super();
    this.#o = opts;
    this.#iceServers = iceServers;
    const r = [opts.metrics.registry];
    const existing = opts.metrics.registry.getSingleMetric("wl_webrtc_rtc_viewers");
    // One registry per agent; a second stage on the same registry (tests) reuses the series.
    this.#m = existing
      ? {
          viewers: existing as Gauge,
          keyframeRequests: opts.metrics.registry.getSingleMetric("wl_webrtc_rtc_keyframe_requests_total") as Counter<"reason">,
          framesDropped: opts.metrics.registry.getSingleMetric("wl_webrtc_rtc_frames_dropped_total") as Counter,
          retransmits: opts.metrics.registry.getSingleMetric("wl_webrtc_rtc_retransmitted_packets_total") as Counter,
        }
      : {
          viewers: new Gauge({ name: "wl_webrtc_rtc_viewers", help: "Viewers with a peer connection", registers: r }),
          keyframeRequests: new Counter({ name: "wl_webrtc_rtc_keyframe_requests_total", help: "Keyframe wishes by reason (before rate limiting)", labelNames: ["reason"], registers: r }),
          framesDropped: new Counter({ name: "wl_webrtc_rtc_frames_dropped_total", help: "Frames not sent to a viewer (over its budget, or waiting for a keyframe)", registers: r }),
          retransmits: new Counter({ name: "wl_webrtc_rtc_retransmitted_packets_total", help: "Packets resent from our own history (older than werift's)", registers: r }),
        };
    opts.signaling.on("session", this.#onSession);
    // The shared encoder follows the fastest viewer; re-evaluated a few times a second.
    this.#abrTimer = setInterval(() => this.#updateEncoderTarget(), 250);
    this.#abrTimer.unref();
  }

  /** Attaches to the signaling server: from now on, offers are answered. */
  static async open(opts: RtcStageOptions): Promise<RtcStage> {
    return new RtcStage(opts, iceServersFrom(opts.config, opts.env ?? process.env));
  }

  get closed(): boolean {
    return this.#closed;
  }

  get viewerCount(): number {
    return this.#peers.size;
  }

  get viewers(): PeerSession[] {
    return [...this.#peers.values()];
  }

  get source(): EncodedVideoSource | undefined {
    return this.#source;
  }

  get keyframeGate(): KeyframeGate | undefined {
    return this.#gate;
  }

  #attach(session: Session): void {
    if (this.#closed) return;
    let peer: PeerSession | undefined;
    let starting: Promise<PeerSession | undefined> | undefined;
    const log = this.#o.log.child({ session: session.id });

    const fail = (m: ClientMessage, err: unknown): void => {
      const refused = err instanceof WlError;
      log.info({ err: errorMessage(err) }, "offer not accepted");
      session.send({ type: "error", code: refused ? "unavailable" : "internal", message: errorMessage(err), ref: m.type, ...(m.id !== undefined ? { id: m.id } : {}) });
    };

    const start = async (m: ClientMessage & { type: "offer" }): Promise<PeerSession | undefined> => {
      const source = await this.#acquireSource();
      if (session.closed || this.#closed) return undefined;
      const p = new PeerSession({
        id: session.id,
        role: session.role,
        config: this.#o.config,
        iceServers: this.#iceServers,
        profileLevelId: this.#profileLevelId ?? source.format?.profileLevelId ?? FALLBACK_PROFILE_LEVEL_ID,
        firstOffer: m.sdp,
        log,
        signal: (msg) => session.send(msg),
        encoderInfo: () => ({ bitrateBps: this.#source?.targetBitrate ?? 0, backend: this.#backend, clock: this.#lastClock }),
      });
      this.#peers.set(session.id, p);
      this.#m.viewers.set(this.#peers.size);
      this.#cancelLinger();
      p.on("keyframe", (reason) => this.#requestKeyframe(reason, p.id));
      p.once("close", () => {
        this.#peers.delete(session.id);
        this.#gate?.withdraw(p.id);
        this.#m.viewers.set(this.#peers.size);
        this.#m.framesDropped.inc(p.counters.framesDropped);
        this.#m.retransmits.inc(p.counters.packetsRetransmitted);
        if (this.#peers.size === 0) this.#scheduleLinger();
        this.#updateEncoderTarget();
      });
      this.safeEmit("viewer", p);
      return p;
    };

    session.on("message", (m) => {
      if (m.type === "offer") {
        if (!starting) starting = start(m);
        const first = !peer;
        starting
          .then(async (p) => {
            peer = p;
            if (p) await p.handleOffer(m.sdp);
          })
          .catch((err: unknown) => {
            fail(m, err);
            if (first) {
              // Nothing half-built stays behind: a later offer starts from scratch.
              peer?.close("offer failed");
              peer = undefined;
              starting = undefined;
            }
          });
      } else if (m.type === "candidate") {
        if (!starting) return; // candidates before any offer have nothing to apply to
        starting
          .then((p) => p?.addCandidate(m.candidate))
          .catch((err: unknown) => log.debug({ err: errorMessage(err) }, "remote candidate not added"));
      } else if (m.type === "answer") {
        session.send({ type: "error", code: "unexpected", message: "this agent answers offers; it does not make them", ref: m.type, ...(m.id !== undefined ? { id: m.id } : {}) });
      }
    });
    session.once("close", () => {
      peer?.close("signaling session closed");
      void starting?.then((p) => p?.close("signaling session closed"), () => undefined);
    });
  }

  #backend = "";

  async #acquireSource(): Promise<EncodedVideoSource> {
    if (this.#source && !this.#source.closed) return this.#source;
    this.#sourceOpening ??= (async () => {
      try {
        const src = await this.#o.openSource();
        this.#wireSource(src);
        return src;
      } finally {
        this.#sourceOpening = undefined;
      }
    })();
    return this.#sourceOpening;
  }

  #wireSource(src: EncodedVideoSource): void {
    const cfg = this.#o.config;
    this.#source = src;
    this.#profileLevelId = src.format?.profileLevelId;
    this.#gate = new KeyframeGate({ minIntervalMs: cfg.keyframe_min_interval_ms, request: (reason) => src.requestKeyframe(reason) });
    this.#packetizer = new H264Packetizer({ maxPayloadSize: cfg.max_payload_bytes, inputFormat: "annexb" });
    src.setTargetBitrate(cfg.start_bitrate_bps);
    src.on("frame", (f) => this.#onFrame(src, f));
    src.on("format", (fmt) => {
      this.#profileLevelId = fmt.profileLevelId;
      this.#backend = fmt.backend;
    });
    src.on("error", (err) => this.#o.log.warn({ err: errorMessage(err) }, "video source error"));
    src.once("close", () => {
      if (this.#source !== src) return;
      this.#source = undefined;
      this.#gate?.close();
      this.#gate = undefined;
      // Viewers cannot go on without a picture: they reconnect, which reopens the source.
      for (const p of this.#peers.values()) p.close("video source closed");
    });
  }

  #onFrame(src: EncodedVideoSource, f: EncodedFrame): void {
    if (this.#source !== src || this.#closed) return;
    this.#backend = f.backend;
    this.#lastClock = { rtpTimestamp: f.rtpTimestamp, captureTimeMs: f.captureTimeMs };
    if (f.keyframe) {
      this.#gate?.noteKeyframe();
      if (this.#profileLevelId === undefined) {
        const sps = splitAnnexB(f.data).find((n) => (n[0]! & 0x1f) === 7);
        if (sps) this.#profileLevelId = spsProfileLevelId(sps);
      }
    }
    if (this.#peers.size === 0 || !this.#packetizer) return;
    const packets = this.#packetizer.packetize(f.data, f.rtpTimestamp >>> 0);
    const encoderTarget = src.targetBitrate;
    let sentTo = 0;
    for (const p of this.#peers.values()) if (p.sendFrame(f, packets, f.data.length, encoderTarget)) sentTo++;
    if (this.listenerCount("frameSent") > 0) {
      this.safeEmit("frameSent", {
        seq: f.seq, rtpTimestamp: f.rtpTimestamp >>> 0, keyframe: f.keyframe, bytes: f.data.length,
        captureTimeMs: f.captureTimeMs, readyTimeMs: f.readyTimeMs, sentTimeMs: performance.timeOrigin + performance.now(), viewers: sentTo,
      });
    }
  }

  #requestKeyframe(reason: KeyframeReason, viewer: string): void {
    this.#m.keyframeRequests.inc({ reason });
    this.#gate?.request(reason, viewer);
  }

  #lastSetTarget = 0;
  /** Since when the fastest viewer's target has been 2-5 % off the encoder's (undefined: within 2 %). */
  #offSince: number | undefined;
  #updateEncoderTarget(): void {
    const src = this.#source;
    if (!src || src.closed) return;
    let best = 0;
    for (const p of this.#peers.values()) if (p.connected) best = Math.max(best, p.abr.target);
    if (best === 0) return;
    // Small changes are not worth an encoder reconfiguration (VA-API reopens), unless they last: a 5 %
    // dead band alone left the encoder up to 5 % off a target that had settled (under it at the end of a
    // climb, the last part of 2 -> 5 Mbit/s taking seconds; over it after a slow decrease, over the link).
    const off = Math.abs(best - this.#lastSetTarget) / Math.max(1, this.#lastSetTarget);
    const now = performance.now();
    if (off < 0.02) this.#offSince = undefined;
    else this.#offSince ??= now;
    if (off < 0.05 && (this.#offSince === undefined || now - this.#offSince < 1000)) return;
    this.#offSince = undefined;
    this.#lastSetTarget = best;
    src.setTargetBitrate(best);
  }

  #scheduleLinger(): void {
    this.#cancelLinger();
    const ms = this.#o.sourceLingerMs ?? 5000;
    this.#lingerTimer = setTimeout(() => {
      this.#lingerTimer = undefined;
      if (this.#peers.size === 0) void this.#closeSource();
    }, ms);
    this.#lingerTimer.unref();
  }

  #cancelLinger(): void {
    if (this.#lingerTimer) clearTimeout(this.#lingerTimer);
    this.#lingerTimer = undefined;
  }

  async #closeSource(): Promise<void> {
    const src = this.#source;
    this.#source = undefined;
    this.#gate?.close();
    this.#gate = undefined;
    this.#packetizer = undefined;
    this.#lastSetTarget = 0;
    if (src) {
      src.removeAllListeners();
      await src.close();
    }
  }

  /** Idempotent: closes every viewer and the source, detaches from signaling; emits `close` once. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#abrTimer);
    this.#cancelLinger();
    this.#o.signaling.off("session", this.#onSession);
    for (const p of [...this.#peers.values()]) p.close("agent shutting down");
    const opening = this.#sourceOpening;
    if (opening) await opening.then((s) => s.close(), () => undefined);
    await this.#closeSource();
    this.safeEmit("close");
    this.removeAllListeners();
  }
}

/** STUN and TURN servers from the config; the TURN password from the environment or a file, never argv. */
export function iceServersFrom(cfg: RtcConfig, env: NodeJS.ProcessEnv): RTCIceServer[] {
  const servers: RTCIceServer[] = cfg.stun_servers.map((urls) => ({ urls }));
  if (cfg.turn_servers.length > 0) {
    let credential = env.WL_WEBRTC_TURN_PASSWORD;
    if (credential === undefined && cfg.turn_password_file !== "") {
      try {
        credential = readFileSync(cfg.turn_password_file, "utf8").trim();
      } catch (err) {
        throw new ConfigError([`rtc.turn_password_file: cannot read ${cfg.turn_password_file}: ${(err as NodeJS.ErrnoException).code ?? errorMessage(err)}`]);
      }
    }
    if (cfg.turn_username === "" || credential === undefined || credential === "")
      throw new ConfigError(["rtc.turn_servers: TURN needs rtc.turn_username and a password (WL_WEBRTC_TURN_PASSWORD or rtc.turn_password_file)"]);
    for (const urls of cfg.turn_servers) servers.push({ urls, username: cfg.turn_username, credential });
  }
  return servers;
}
