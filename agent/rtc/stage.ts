import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import { Counter, Gauge } from "prom-client";
import { H264Packetizer, type RTCIceServer } from "werift";
import type { RtcConfig } from "../config/schema.js";
import type { Logger } from "../log/logger.js";
import type { Metrics } from "../metrics/metrics.js";
import type { CursorUpdate, EncodedFrame, EncodedVideoSource, KeyframeReason } from "../encode/types.js";
import type { CursorMessage, CursorShapeMessage } from "./control.js";
import type { SignalingServer } from "../signaling/server.js";
import type { Session } from "../signaling/session.js";
import type { ClientMessage } from "../signaling/protocol.js";
import { TypedEmitter } from "../util/events.js";
import { ConfigError, WlError, errorMessage } from "../util/errors.js";
import { KeyframeGate } from "./keyframe-gate.js";
import { useNativeSrtpGcm } from "./srtp.js";
import { PeerSession, type PeerSessionOptions } from "./peer.js";
import { BadOfferError, MAX_TRICKLED_CANDIDATES, candidateProblem, checkOffer, type OfferShape } from "./offer-check.js";
import { spsProfileLevelId, splitAnnexB } from "./h264.js";
import { RungPolicy, type RungName, type RungViewer } from "./rungs.js";
import { TurnSelector } from "./turn-select.js";
import { MemoryTrimmer } from "./trim.js";
import { noDefaultStunServer } from "./stun-default.js";
import { rangedUdpBinds } from "./ports.js";

/** Opens the shared encoded source when the first viewer arrives. Rejects with a message for the user. */
export type VideoSourceFactory = () => Promise<EncodedVideoSource>;

export interface RtcStageOptions {
  config: RtcConfig;
  signaling: SignalingServer;
  openSource: VideoSourceFactory;
  metrics: Metrics;
  log: Logger;
  env?: NodeJS.ProcessEnv;
  /** Keep the source open this long after the last viewer left; default: config.source_linger_ms. */
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

/** What the rungs did (tests, stats); counters since the stage opened. */
export interface RungCounters {
  opens: number;
  closes: number;
  openFailures: number;
  switchesDown: number;
  switchesUp: number;
}

/** One encoder rung: its source, its keyframe gate (its viewers' wishes only) and its packetizer. */
interface Rung {
  name: RungName;
  source: EncodedVideoSource;
  gate: KeyframeGate;
  packetizer: H264Packetizer;
  lastSetTarget: number;
}

/** The rung a viewer is on, and the one it is being moved to (it switches at that rung's next keyframe). */
interface ViewerRung {
  rung: RungName;
  pending: RungName | undefined;
}

/** PeerSession close reason when the shared source closed under it. */
const SOURCE_CLOSED = "video source closed";

/** Retry a low rung that could not open after this long (the encoder may have been busy or missing). */
const LOW_RUNG_RETRY_MS = 60_000;

export type RtcStageEvents = {
  viewer: [PeerSession];
  /** A viewer switched rung (at a keyframe of the destination). */
  rungSwitch: [{ viewer: string; to: RungName; width: number; height: number }];
  /** Emitted only while someone listens (benches): the cost when unused is one listenerCount() per frame. */
  frameSent: [FrameSentTrace];
  close: [];
};

/** Largest cursor bitmap sent as is (64x64 RGBA: 16 KiB, ~22 KB in base64); larger ones are downscaled to fit. */
export const CURSOR_SHAPE_MAX = 64;

/** A cursor bitmap as sent: at most CURSOR_SHAPE_MAX square, nearest-neighbour downscaled by an integer factor. */
export function cursorShapeMessage(serial: number, shape: { width: number; height: number; rgba: Buffer }): CursorShapeMessage {
  const f = Math.max(1, Math.ceil(Math.max(shape.width, shape.height) / CURSOR_SHAPE_MAX));
  if (f === 1) return { serial, width: shape.width, height: shape.height, scale: 1, rgba: shape.rgba.toString("base64") };
  const w = Math.floor(shape.width / f), h = Math.floor(shape.height / f);
  const out = Buffer.alloc(w * h * 4);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) shape.rgba.copy(out, (y * w + x) * 4, ((y * f) * shape.width + x * f) * 4, ((y * f) * shape.width + x * f) * 4 + 4);
  return { serial, width: w, height: h, scale: f, rgba: out.toString("base64") };
}

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
  readonly #ice: IceServers;
  /** Which TURN URL werift gets (it uses only the first it is given). */
  readonly #turn: TurnSelector;
  readonly #peers = new Map<string, PeerSession>();
  /** Closed viewers whose sockets werift is still releasing: close() waits for them. */
  readonly #releasing = new Set<Promise<void>>();
  /** Gives what released viewers freed in the C heap back to the system. */
  readonly #trimmer = new MemoryTrimmer();
  readonly #m: {
    viewers: Gauge; keyframeRequests: Counter<"reason">; framesDropped: Counter; retransmits: Counter;
    rungViewers: Gauge<"rung">; rungOpens: Counter; rungCloses: Counter; rungOpenFailures: Counter; rungSwitches: Counter<"to">;
  };
  readonly #viewerRungs = new Map<string, ViewerRung>();
  readonly #policy: RungPolicy | undefined;
  #low: Rung | undefined;
  #lowOpening: Promise<void> | undefined;
  #lowFailedAt = -Infinity;
  #lowEmptySince: number | undefined;
  readonly rungCounters: RungCounters = { opens: 0, closes: 0, openFailures: 0, switchesDown: 0, switchesUp: 0 };
  #source: EncodedVideoSource | undefined;
  #sourceOpening: Promise<EncodedVideoSource> | undefined;
  #gate: KeyframeGate | undefined;
  #packetizer: H264Packetizer | undefined;
  #profileLevelId: string | undefined;
  #lastClock: { rtpTimestamp: number; captureTimeMs: number } | null = null;
  #cursor: Omit<CursorMessage, "type" | "shape"> | undefined;
  #cursorShape: CursorShapeMessage | undefined;
  #lingerTimer: NodeJS.Timeout | undefined;
  #abrTimer: NodeJS.Timeout;
  #closed = false;
  readonly #onSession = (s: Session): void => this.#attach(s);

  private constructor(opts: RtcStageOptions, ice: IceServers) {
    super();
    this.#o = opts;
    this.#ice = ice;
    this.#turn = new TurnSelector({ log: opts.log.child({ part: "turn" }) });
    // werift's port search in rtc.udp_port_min..max races between sockets bound at once (ports.ts).
    if (opts.config.udp_port_min !== 0) rangedUdpBinds();
    noDefaultStunServer();
    const r = [opts.metrics.registry];
    // One registry per agent; a second stage on the same registry (tests) reuses the series.
    const get = <T>(name: string, make: () => T): T => (opts.metrics.registry.getSingleMetric(name) as T | undefined) ?? make();
    this.#m = {
      viewers: get("wl_webrtc_rtc_viewers", () => new Gauge({ name: "wl_webrtc_rtc_viewers", help: "Viewers with a peer connection", registers: r })),
      keyframeRequests: get("wl_webrtc_rtc_keyframe_requests_total", () => new Counter({ name: "wl_webrtc_rtc_keyframe_requests_total", help: "Keyframe wishes by reason (before rate limiting)", labelNames: ["reason"], registers: r })),
      framesDropped: get("wl_webrtc_rtc_frames_dropped_total", () => new Counter({ name: "wl_webrtc_rtc_frames_dropped_total", help: "Frames not sent to a viewer (over its budget, or waiting for a keyframe)", registers: r })),
      retransmits: get("wl_webrtc_rtc_retransmitted_packets_total", () => new Counter({ name: "wl_webrtc_rtc_retransmitted_packets_total", help: "Packets resent from our own history (older than werift's)", registers: r })),
      rungViewers: get("wl_webrtc_rtc_rung_viewers", () => new Gauge({ name: "wl_webrtc_rtc_rung_viewers", help: "Viewers per encoder rung (main, low)", labelNames: ["rung"], registers: r })),
      rungOpens: get("wl_webrtc_rtc_rung_opens_total", () => new Counter({ name: "wl_webrtc_rtc_rung_opens_total", help: "Low-rung encoders opened", registers: r })),
      rungCloses: get("wl_webrtc_rtc_rung_closes_total", () => new Counter({ name: "wl_webrtc_rtc_rung_closes_total", help: "Low-rung encoders closed", registers: r })),
      rungOpenFailures: get("wl_webrtc_rtc_rung_open_failures_total", () => new Counter({ name: "wl_webrtc_rtc_rung_open_failures_total", help: "Low-rung encoders that could not open (slow viewers fall back to frame dropping)", registers: r })),
      rungSwitches: get("wl_webrtc_rtc_rung_switches_total", () => new Counter({ name: "wl_webrtc_rtc_rung_switches_total", help: "Viewers switched between rungs, by destination", labelNames: ["to"], registers: r })),
    };
    const c = opts.config;
    this.#policy = c.low_rung
      ? new RungPolicy({ downRatio: c.low_rung_down_ratio, downMs: c.low_rung_down_ms, upRatio: c.low_rung_up_ratio, upMs: c.low_rung_up_ms, graceMs: c.low_rung_join_grace_ms })
      : undefined;
    opts.signaling.on("session", this.#onSession);
    // Browsers learn the STUN/TURN servers in `welcome`, so that both ends gather the same kinds of candidates.
    opts.signaling.iceServersFor = (subject) => this.#ice.forBrowser(subject);
    // Rungs and their encoders' targets, re-evaluated a few times a second.
    this.#abrTimer = setInterval(() => this.#tick(), 250);
    this.#abrTimer.unref();
  }

  /** Attaches to the signaling server: from now on, offers are answered. */
  static async open(opts: RtcStageOptions): Promise<RtcStage> {
    // Per-packet SRTP encryption is part of what each viewer costs (docs/streaming.md "Cost per viewer").
    const srtp = useNativeSrtpGcm();
    if (!srtp.active) opts.log.warn({ reason: srtp.reason }, "SRTP AES-GCM stays on werift's per-packet node:crypto cipher (slower per viewer)");
    return new RtcStage(opts, new IceServers(opts.config, opts.env ?? process.env));
  }

  get closed(): boolean {
    return this.#closed;
  }

  get viewerCount(): number {
    return this.#peers.size;
  }

  /** Closed viewers whose peer connections are still releasing their sockets (tests: 0 once settled). */
  get releasingCount(): number {
    return this.#releasing.size;
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

  /** The low rung's source while it is open. */
  get lowRung(): EncodedVideoSource | undefined {
    return this.#low?.source;
  }

  get lowRungKeyframeGate(): KeyframeGate | undefined {
    return this.#low?.gate;
  }

  /** The TURN URL the agent's peer connections use now (see TurnSelector). */
  get turnServerInUse(): string | undefined {
    return this.#turn.chosen;
  }

  /** The rung a viewer is on (undefined: not a viewer). */
  rungOf(viewer: string): RungName | undefined {
    return this.#viewerRungs.get(viewer)?.rung;
  }

  #attach(session: Session): void {
    if (this.#closed) return;
    let peer: PeerSession | undefined;
    let starting: Promise<PeerSession | undefined> | undefined;
    const log = this.#o.log.child({ session: session.id });

    const fail = (m: ClientMessage, err: unknown): void => {
      // A malformed offer or candidate is the client's: bad-message. A refusal of ours (no port, no
      // source) is unavailable; anything else is a bug of ours: internal.
      const code = err instanceof BadOfferError ? "bad-message" : err instanceof WlError ? "unavailable" : "internal";
      if (code === "internal") log.warn({ err }, "offer failed unexpectedly");
      else log.info({ err: errorMessage(err) }, `${m.type} not accepted`);
      session.send({ type: "error", code, message: code === "internal" ? `internal error: ${errorMessage(err)}` : errorMessage(err), ref: m.type, ...(m.id !== undefined ? { id: m.id } : {}) });
    };

    let turnUrl: string | undefined;
    const start = async (m: ClientMessage & { type: "offer" }): Promise<PeerSession | undefined> => {
      const [source, iceServers] = await Promise.all([this.#acquireSource(), this.#turn.select(this.#ice.forAgent())]);
      if (session.closed || this.#closed) return undefined;
      turnUrl = this.#turn.chosen !== undefined && iceServers.some((s) => s.urls === this.#turn.chosen) ? this.#turn.chosen : undefined;
      const p: PeerSession = new PeerSession({
        id: session.id,
        role: session.role,
        config: this.#o.config,
        iceServers,
        profileLevelId: this.#profileLevelId ?? source.format?.profileLevelId ?? FALLBACK_PROFILE_LEVEL_ID,
        firstOffer: m.sdp,
        log,
        signal: (msg) => session.send(msg),
        encoderInfo: (): ReturnType<PeerSessionOptions["encoderInfo"]> => ({ bitrateBps: this.#rungFor(session.id)?.source.targetBitrate ?? this.#source?.targetBitrate ?? 0, backend: this.#backend, clock: this.#lastClock }),
        cursorState: () => ({
          mode: this.#source?.cursorMode ?? "embedded",
          ...(this.#cursor ? { last: this.#cursor } : {}),
          ...(this.#cursorShape ? { shape: this.#cursorShape } : {}),
        }),
      });
      this.#peers.get(session.id)?.close("replaced by a new offer");
      this.#peers.set(session.id, p);
      this.#viewerRungs.set(p.id, { rung: "main", pending: undefined });
      this.#m.viewers.set(this.#peers.size);
      this.#countRungViewers();
      this.#cancelLinger();
      p.on("keyframe", (reason) => this.#requestKeyframe(reason, p.id));
      p.once("close", ({ reason }) => {
        const released = p.released.finally(() => {
          this.#releasing.delete(released);
          this.#trimmer.request();
        });
        this.#releasing.add(released);
        if (reason === SOURCE_CLOSED && !session.closed) {
          // The picture is gone: the viewer hears why at once (not from its own ICE timeout), and may
          // offer again on this session (a new peer, on a reopened source).
          session.send({ type: "error", code: "unavailable", message: `the video stopped: ${this.#sourceEndReason ?? "the video source closed"}` });
        }
        if (peer === p) {
          peer = undefined;
          starting = undefined;
        }
        if (reason === "ice failed" && !session.closed) {
          // The agent gave up on this viewer's network path: a new attempt needs a new session.
          log.info("no ICE connection (werift: failed, or disconnected for long): viewer released");
          session.send({ type: "bye", reason: "no network path (ICE failed); connect again" });
          session.close(1000, "ice failed");
        }
        // Only this viewer's own entries: a later peer of the same session may have taken its key.
        if (this.#peers.get(session.id) !== p) return;
        this.#peers.delete(session.id);
        this.#viewerRungs.delete(p.id);
        this.#gate?.withdraw(p.id);
        this.#low?.gate.withdraw(p.id);
        this.#m.viewers.set(this.#peers.size);
        this.#countRungViewers();
        this.#m.framesDropped.inc(p.counters.framesDropped);
        this.#m.retransmits.inc(p.counters.packetsRetransmitted);
        if (this.#peers.size === 0) this.#scheduleLinger();
        this.#tick();
      });
      this.safeEmit("viewer", p);
      return p;
    };

    /** The first accepted offer's m-sections: later offers (ICE restarts) must keep them. */
    let shape: OfferShape | undefined;
    /** One offer at a time: werift applies descriptions in order, and two first offers raced for one viewer. */
    let answering = false;
    let trickled = 0;
    session.on("message", (m) => {
      if (m.type === "offer") {
        let checked: OfferShape;
        try {
          checked = checkOffer(m.sdp, peer ? shape : undefined);
        } catch (err) {
          fail(m, err);
          return;
        }
        if (answering) {
          session.send({ type: "error", code: "unexpected", message: "an offer is still being answered: send the next one after its answer (or error)", ref: m.type, ...(m.id !== undefined ? { id: m.id } : {}) });
          return;
        }
        answering = true;
        if (!starting) starting = start(m);
        const first = !peer;
        const mine = starting;
        mine
          .then(async (p) => {
            peer = p;
            if (!p) return;
            await p.handleOffer(m.sdp);
            if (first) shape = checked;
            trickled = 0; // each answered offer (an ICE restart too) starts a new round of candidates
            // Gathering is over: a TURN server that gave no relay candidate is checked again for the next viewer.
            if (first && turnUrl !== undefined && !p.gatheredRelay) this.#turn.failed(turnUrl);
          })
          .catch((err: unknown) => {
            fail(m, err);
            // Nothing half-built stays behind: a later offer starts from scratch.
            if (first && starting === mine) {
              void mine.then((p) => p?.close("offer failed"), () => undefined);
              peer = undefined;
              starting = undefined;
              shape = undefined;
            }
          })
          .finally(() => {
            answering = false;
          });
      } else if (m.type === "candidate") {
        if (!starting) return; // candidates before any offer have nothing to apply to
        if (m.candidate !== null && m.candidate.candidate !== "") {
          const problem = candidateProblem(m.candidate.candidate) ?? (++trickled > MAX_TRICKLED_CANDIDATES ? `more than ${MAX_TRICKLED_CANDIDATES} candidates for this viewer` : undefined);
          if (problem !== undefined) {
            fail(m, new BadOfferError(problem));
            return;
          }
        }
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
  /** The open source's last error: what its viewers are told when it closes. */
  #sourceEndReason: string | undefined;
  #videoDown: string | undefined;

  /**
   * Why the last video source ended from outside or could not open, until one opens again (readiness
   * on a desktop the agent cannot restart: the user's session).
   */
  get videoDown(): string | undefined {
    return this.#videoDown;
  }

  async #acquireSource(): Promise<EncodedVideoSource> {
    if (this.#source && !this.#source.closed) return this.#source;
    this.#sourceOpening ??= (async () => {
      try {
        const src = await this.#o.openSource();
        this.#wireSource(src);
        return src;
      } catch (err) {
        this.#videoDown = errorMessage(err);
        throw err;
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
    src.on("cursor", (c) => this.#onCursor(src, c));
    src.on("format", (fmt) => {
      this.#profileLevelId = fmt.profileLevelId;
      this.#backend = fmt.backend;
    });
    this.#sourceEndReason = undefined;
    this.#videoDown = undefined;
    src.on("error", (err) => {
      this.#sourceEndReason = errorMessage(err);
      this.#o.log.warn({ err: errorMessage(err) }, "video source error");
    });
    src.once("close", () => {
      if (this.#source !== src) return;
      if (this.#sourceEndReason !== undefined) this.#videoDown = this.#sourceEndReason;
      void this.#closeLow("the source closed");
      this.#source = undefined;
      this.#gate?.close();
      this.#gate = undefined;
      this.#cursor = undefined;
      this.#cursorShape = undefined;
      // Viewers cannot go on without a picture: they reconnect, which reopens the source.
      for (const p of this.#peers.values()) p.close(SOURCE_CLOSED);
    });
  }

  #onFrame(src: EncodedVideoSource, f: EncodedFrame): void {
    if (this.#closed) return;
    let rung: RungName;
    let packetizer: H264Packetizer | undefined;
    if (src === this.#source) {
      rung = "main";
      packetizer = this.#packetizer;
      this.#backend = f.backend;
      this.#lastClock = { rtpTimestamp: f.rtpTimestamp, captureTimeMs: f.captureTimeMs };
      if (f.keyframe) {
        this.#gate?.noteKeyframe();
        if (this.#profileLevelId === undefined) {
          const sps = splitAnnexB(f.data).find((n) => (n[0]! & 0x1f) === 7);
          if (sps) this.#profileLevelId = spsProfileLevelId(sps);
        }
      }
    } else if (this.#low && src === this.#low.source) {
      rung = "low";
      packetizer = this.#low.packetizer;
      if (f.keyframe) this.#low.gate.noteKeyframe();
    } else {
      return;
    }
    if (this.#peers.size === 0 || !packetizer) return;
    let packets: ReturnType<H264Packetizer["packetize"]> | undefined;
    const encoderTarget = src.targetBitrate;
    let sentTo = 0;
    for (const p of this.#peers.values()) {
      const vr = this.#viewerRungs.get(p.id);
      if (!vr) continue;
      if (vr.pending === rung && f.keyframe && p.connected) {
        // The switch: this rung's keyframe starts the viewer on it. Its sequence numbers go on (they are
        // the viewer's own) and both rungs stamp frames from the same capture clock, so the browser
        // sees one stream whose resolution changes at an IDR.
        vr.rung = rung;
        vr.pending = undefined;
        if (rung === "low") this.rungCounters.switchesDown++;
        else this.rungCounters.switchesUp++;
        this.#m.rungSwitches.inc({ to: rung });
        this.#countRungViewers();
        this.#policy?.reset(p.id);
        this.#o.log.info({ viewer: p.id, to: rung, width: f.width, height: f.height, targetBps: Math.round(p.abr.target) }, "viewer switched rung");
        this.safeEmit("rungSwitch", { viewer: p.id, to: rung, width: f.width, height: f.height });
      }
      if (vr.rung !== rung) continue;
      packets ??= packetizer.packetize(f.data, f.rtpTimestamp >>> 0);
      if (p.sendFrame(f, packets, f.data.length, encoderTarget)) sentTo++;
    }
    if (rung !== "main") return;
    if (this.listenerCount("frameSent") > 0) {
      this.safeEmit("frameSent", {
        seq: f.seq, rtpTimestamp: f.rtpTimestamp >>> 0, keyframe: f.keyframe, bytes: f.data.length,
        captureTimeMs: f.captureTimeMs, readyTimeMs: f.readyTimeMs, sentTimeMs: performance.timeOrigin + performance.now(), viewers: sentTo,
      });
    }
  }

  #onCursor(src: EncodedVideoSource, c: CursorUpdate): void {
    if (this.#source !== src || this.#closed) return;
    // The bitmap is encoded once per change, for all viewers; each gets it once (PeerSession.sendCursor).
    if (c.shape) this.#cursorShape = cursorShapeMessage(c.shapeSerial, c.shape);
    this.#cursor = { x: c.x, y: c.y, hotspotX: c.hotspotX, hotspotY: c.hotspotY, frameWidth: c.frameWidth, frameHeight: c.frameHeight, serial: c.shapeSerial };
    for (const p of this.#peers.values()) p.sendCursor(this.#cursor, this.#cursorShape);
  }

  /** The rung whose keyframes a viewer's wishes are for: the one it is moving to, else the one it is on. */
  #rungFor(viewer: string): { source: EncodedVideoSource; gate: KeyframeGate } | undefined {
    const vr = this.#viewerRungs.get(viewer);
    const name = vr?.pending ?? vr?.rung ?? "main";
    if (name === "low") return this.#low;
    return this.#source && this.#gate ? { source: this.#source, gate: this.#gate } : undefined;
  }

  #requestKeyframe(reason: KeyframeReason, viewer: string): void {
    this.#m.keyframeRequests.inc({ reason });
    // PLI, FIR, recovery of a viewer go to its own rung only: the others do not pay for its keyframes.
    this.#rungFor(viewer)?.gate.request(reason, viewer);
  }

  #countRungViewers(): void {
    let low = 0;
    for (const vr of this.#viewerRungs.values()) if (vr.rung === "low") low++;
    this.#m.rungViewers.set({ rung: "main" }, this.#viewerRungs.size - low);
    this.#m.rungViewers.set({ rung: "low" }, low);
  }

  #tick(): void {
    this.#chooseRungs();
    this.#updateEncoderTargets();
  }

  /** Moves viewers between rungs (RungPolicy), opens the low rung on first need, closes it when unused. */
  #chooseRungs(): void {
    const policy = this.#policy;
    const main = this.#source;
    if (!policy || !main || main.closed || this.#closed) return;
    const now = performance.now();
    const viewers: RungViewer[] = [];
    for (const p of this.#peers.values()) {
      const vr = this.#viewerRungs.get(p.id);
      if (vr && p.connected) viewers.push({ id: p.id, target: p.abr.target, rung: vr.pending ?? vr.rung, limited: p.abr.state === "decrease" || p.abr.state === "hold" });
    }
    for (const [id, to] of policy.decide(viewers, now)) {
      const vr = this.#viewerRungs.get(id);
      if (!vr) continue;
      if (to === "low") {
        if (!main.openRung || now - this.#lowFailedAt < LOW_RUNG_RETRY_MS) continue; // fallback: the token bucket
        if (vr.rung === "low") vr.pending = undefined; // it never left
        else {
          vr.pending = "low";
          if (this.#low) this.#low.gate.request("rung-switch", id);
          else this.#openLow(main);
        }
      } else if (vr.rung === "main") {
        vr.pending = undefined; // it had not switched down yet
      } else {
        vr.pending = "main";
        this.#gate?.request("rung-switch", id);
      }
    }
    // The low rung closes some seconds after nobody is on it or on the way to it.
    if (this.#low) {
      let used = false;
      for (const vr of this.#viewerRungs.values()) if (vr.rung === "low" || vr.pending === "low") used = true;
      if (used) this.#lowEmptySince = undefined;
      else {
        this.#lowEmptySince ??= now;
        if (now - this.#lowEmptySince >= this.#o.config.low_rung_linger_ms) void this.#closeLow("unused");
      }
    }
  }

  #openLow(main: EncodedVideoSource): void {
    if (this.#lowOpening || !main.openRung) return;
    const cfg = this.#o.config;
    let bitrate = cfg.min_bitrate_bps;
    for (const p of this.#peers.values()) if (this.#viewerRungs.get(p.id)?.pending === "low") bitrate = Math.max(bitrate, p.abr.target);
    this.#lowOpening = (async () => {
      try {
        const src = await main.openRung!({ scale: cfg.low_rung_scale, bitrateBps: bitrate });
        if (this.#closed || this.#source !== main || main.closed) {
          await src.close();
          return;
        }
        this.#low = {
          name: "low", source: src, lastSetTarget: bitrate,
          gate: new KeyframeGate({ minIntervalMs: cfg.keyframe_min_interval_ms, request: (reason) => src.requestKeyframe(reason) }),
          packetizer: new H264Packetizer({ maxPayloadSize: cfg.max_payload_bytes, inputFormat: "annexb" }),
        };
        this.#lowEmptySince = undefined;
        this.rungCounters.opens++;
        this.#m.rungOpens.inc();
        this.#o.log.info({ scale: cfg.low_rung_scale, bitrateBps: bitrate }, "low rung opened");
        src.on("frame", (f) => this.#onFrame(src, f));
        src.on("error", (err) => this.#o.log.warn({ err: errorMessage(err) }, "low rung error"));
        src.once("close", () => {
          if (this.#low?.source === src) this.#lowGone("its encoder closed");
        });
      } catch (err) {
        this.#lowFailedAt = performance.now();
        this.rungCounters.openFailures++;
        this.#m.rungOpenFailures.inc();
        this.#o.log.warn({ err: errorMessage(err), retryInMs: LOW_RUNG_RETRY_MS }, "low rung could not open: slow viewers get the main rung, thinned by frame dropping");
        for (const [id, vr] of this.#viewerRungs) if (vr.pending === "low") {
          vr.pending = undefined;
          this.#policy?.reset(id);
        }
      } finally {
        this.#lowOpening = undefined;
      }
    })();
  }

  /** The low rung is gone: its viewers go back to the main rung from its next keyframe. */
  #lowGone(why: string): void {
    const low = this.#low;
    if (!low) return;
    this.#low = undefined;
    this.#lowEmptySince = undefined;
    low.gate.close();
    this.rungCounters.closes++;
    this.#m.rungCloses.inc();
    this.#o.log.info({ why }, "low rung closed");
    for (const [id, vr] of this.#viewerRungs) {
      if (vr.pending === "low") vr.pending = undefined;
      if (vr.rung !== "low") continue;
      vr.rung = "main";
      vr.pending = undefined;
      this.#peers.get(id)?.waitForKeyframe();
      this.#gate?.request("rung-switch", id);
    }
    this.#countRungViewers();
  }

  async #closeLow(why: string): Promise<void> {
    const low = this.#low;
    if (!low) return;
    this.#lowGone(why);
    low.source.removeAllListeners();
    await low.source.close();
  }

  #lastSetTarget = 0;
  /** Since when the fastest viewer's target has been 2-5 % off the encoder's (undefined: within 2 %). */
  #offSince: number | undefined;
  /** Each rung's encoder follows the fastest of its own viewers. */
  #updateEncoderTargets(): void {
    const src = this.#source;
    if (!src || src.closed) return;
    let best = 0;
    let lowBest = 0;
    for (const p of this.#peers.values()) {
      if (!p.connected) continue;
      const vr = this.#viewerRungs.get(p.id);
      if ((vr?.pending ?? vr?.rung) === "low") lowBest = Math.max(lowBest, p.abr.target);
      else best = Math.max(best, p.abr.target);
    }
    const low = this.#low;
    if (low && !low.source.closed && lowBest > 0 && Math.abs(lowBest - low.lastSetTarget) / Math.max(1, low.lastSetTarget) >= 0.05) {
      low.lastSetTarget = lowBest;
      low.source.setTargetBitrate(lowBest);
    }
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
    const ms = this.#o.sourceLingerMs ?? this.#o.config.source_linger_ms;
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
    await this.#lowOpening;
    await this.#closeLow("the source closed");
    const src = this.#source;
    this.#source = undefined;
    this.#gate?.close();
    this.#gate = undefined;
    this.#packetizer = undefined;
    this.#lastSetTarget = 0;
    this.#cursor = undefined;
    this.#cursorShape = undefined;
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
    this.#turn.close();
    this.#trimmer.close();
    this.#cancelLinger();
    this.#o.signaling.off("session", this.#onSession);
    this.#o.signaling.iceServersFor = undefined;
    for (const p of [...this.#peers.values()]) p.close("agent shutting down");
    await Promise.allSettled([...this.#releasing]);
    const opening = this.#sourceOpening;
    if (opening) await opening.then((s) => s.close(), () => undefined);
    await this.#closeSource();
    this.safeEmit("close");
    this.removeAllListeners();
  }
}

/** An ICE server as the browser's RTCPeerConnection takes it (and as the `welcome` message carries it). */
export interface IceServerInit {
  urls: string;
  username?: string;
  credential?: string;
}

/**
 * Short-lived TURN credentials of the "TURN REST API" scheme (coturn `use-auth-secret`): the user name is
 * "<unix expiry>:<name>", the password base64(HMAC-SHA1(secret, user name)). The TURN server checks the
 * HMAC and the expiry; nothing is stored, and a leaked credential dies by itself.
 */
export function turnRestCredential(secret: string, name: string, ttlS: number, nowMs = Date.now()): { username: string; credential: string } {
  const username = `${Math.floor(nowMs / 1000) + ttlS}:${name}`;
  return { username, credential: createHmac("sha1", secret).update(username).digest("base64") };
}

/**
 * The STUN and TURN servers of the config, for the agent and for each browser. The static TURN password
 * (WL_WEBRTC_TURN_PASSWORD or a file, never argv) is the agent's own: it is never sent to browsers. With a
 * shared secret (WL_WEBRTC_TURN_SECRET or rtc.turn_secret_file), both get fresh REST credentials.
 */
export class IceServers {
  readonly #cfg: RtcConfig;
  readonly #secret: string | undefined;
  readonly #password: string | undefined;

  constructor(cfg: RtcConfig, env: NodeJS.ProcessEnv) {
    this.#cfg = cfg;
    const fromFile = (key: "turn_password_file" | "turn_secret_file"): string | undefined => {
      const path = cfg[key];
      if (path === "") return undefined;
      try {
        return readFileSync(path, "utf8").trim();
      } catch (err) {
        throw new ConfigError([`rtc.${key}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? errorMessage(err)}`]);
      }
    };
    if (cfg.turn_servers.length === 0) return;
    this.#secret = env.WL_WEBRTC_TURN_SECRET || fromFile("turn_secret_file");
    if (this.#secret !== undefined) {
      if (this.#secret === "") throw new ConfigError(["rtc.turn_secret_file: the TURN secret is empty"]);
      return;
    }
    this.#password = env.WL_WEBRTC_TURN_PASSWORD ?? fromFile("turn_password_file");
    if (cfg.turn_username === "" || this.#password === undefined || this.#password === "")
      throw new ConfigError(["rtc.turn_servers: TURN needs rtc.turn_username and a password (WL_WEBRTC_TURN_PASSWORD or rtc.turn_password_file), or a shared secret (WL_WEBRTC_TURN_SECRET or rtc.turn_secret_file)"]);
  }

  /** Whether browsers get TURN servers too (only with a shared secret). */
  get turnForBrowsers(): boolean {
    return this.#secret !== undefined;
  }

  /** The agent's servers for a new peer connection (fresh credentials each time with a secret). */
  forAgent(nowMs = Date.now()): RTCIceServer[] {
    const out: RTCIceServer[] = this.#cfg.stun_servers.map((urls) => ({ urls }));
    if (this.#secret !== undefined) {
      const c = turnRestCredential(this.#secret, this.#cfg.turn_username || "wl-webrtc-agent", this.#cfg.turn_credential_ttl_s, nowMs);
      for (const urls of this.#cfg.turn_servers) out.push({ urls, ...c });
    } else if (this.#password !== undefined) {
      for (const urls of this.#cfg.turn_servers) out.push({ urls, username: this.#cfg.turn_username, credential: this.#password });
    }
    return out;
  }

  /** What one browser gets in `welcome`: the STUN servers, and TURN with its own credentials when a secret is set. */
  forBrowser(subject: string, nowMs = Date.now()): IceServerInit[] {
    const out: IceServerInit[] = this.#cfg.stun_servers.map((urls) => ({ urls }));
    if (this.#secret !== undefined) {
      // The token's subject in the user name: the TURN server's log says whose relay it is. ':' would end
      // the expiry part early for servers that split at the last one; keep it out.
      const c = turnRestCredential(this.#secret, subject.replace(/[^\w.@-]/g, "_").slice(0, 64) || "viewer", this.#cfg.turn_credential_ttl_s, nowMs);
      for (const urls of this.#cfg.turn_servers) out.push({ urls, ...c });
    }
    return out;
  }
}

/** The agent's STUN and TURN servers from the config (see IceServers). */
export function iceServersFrom(cfg: RtcConfig, env: NodeJS.ProcessEnv): RTCIceServer[] {
  return new IceServers(cfg, env).forAgent();
}
