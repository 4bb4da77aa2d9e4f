import {
  GenericNack, MediaStreamTrack, PictureLossIndication, ReceiverEstimatedMaxBitrate,
  RTCPeerConnection, RTCRtpHeaderExtensionParameters, RtcpPayloadSpecificFeedback, RtcpRrPacket, RtcpSrPacket,
  RtcpTransportLayerFeedback, RtpHeader, serializeTransportWideCC, TransportWideCC, useAbsSendTime, useFIR,
  useH264, useNACK, usePLI, useREMB, useSdesMid, useTransportWideCC, useTWCC,
  type RTCDataChannel, type RTCDtlsTransport, type RTCIceServer, type RTCRtpSender, type RtcpPacket, type RtpPacket,
} from "werift";
import { isIPv4 } from "node:net";
import type { Logger } from "../log/logger.js";
import type { RtcConfig } from "../config/schema.js";
import type { EncodedFrame, KeyframeReason } from "../encode/types.js";
import type { Role } from "../auth/tokens.js";
import type { CandidateInit } from "../signaling/protocol.js";
import { TypedEmitter } from "../util/events.js";
import { ExhaustedError, InvalidStateError, UnsupportedError, errorMessage } from "../util/errors.js";
import { AbrController, DelayTracker, twccPacketResults, type TwccFeedback } from "./abr.js";
import { ViewerPacer } from "./pacer.js";
import { RtpHistory } from "./history.js";
import { BadOfferError } from "./offer-check.js";
import { chooseOfferedH264, keepOnlyVideoPayload, offeredH264, rewriteProfileLevelId } from "./h264.js";
import {
  CONTROL_LABEL, INPUT_LABEL, parseControlMessage, type AgentControlMessage, type CursorMessage, type CursorMode, type CursorShapeMessage, type ViewerStats,
} from "./control.js";

export const PLAYOUT_DELAY_URI = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay";
/** werift's own NACK history, in packets (rtpSender.ts RTP_HISTORY_SIZE). */
const WERIFT_HISTORY = 128;
/** RTCP payload-specific feedback FMT of FIR (RFC 5104); werift does not export its class. */
const FIR_FMT = 4;
/** Bytes a media packet carries besides its payload on an Ethernet link (what the bench measured: ~7.5 %). */
const WIRE_OVERHEAD = 88;
/** A throttled viewer's pacing rate per bit of its target, as on the wire (1.25 x its payload rate). */
const PACE_FACTOR = 1.25 * 1.075;
/** How long the window keeps the last measured capacity through a gap in the samples (ms). */
const LIMIT_HOLD_MS = 3000;
/**
 * The agent releases a viewer whose connection failed, this long after werift says "failed" (werift
 * does so when consent freshness expires: 30 s without an answer to its STUN checks, RFC 7675) or stays
 * "disconnected". The client decides first: it restarts ICE 5 s after losing the path and gives up
 * 10 s later (web-client), hanging up the WebSocket; this catches clients that never do (a frozen tab, a
 * closed laptop lid whose half-open TCP connection lingers for minutes). A restart offer in between
 * stops the countdown.
 */
export const ICE_FAILED_RELEASE_MS = 5_000;
export const ICE_DISCONNECTED_RELEASE_MS = 30_000;
/** At most one `cursor` message per viewer this often (~60/s, a display's rate); the newest position wins. */
export const CURSOR_MIN_INTERVAL_MS = 16;
/** Cursor messages wait while this much is queued on the control channel (a slow path gets fewer updates, never a backlog). */
const CURSOR_MAX_BUFFERED = 64 * 1024;

export interface PeerSessionOptions {
  id: string;
  role: Role;
  config: RtcConfig;
  /** ICE servers, TURN credentials already resolved. */
  iceServers: RTCIceServer[];
  /** What the encoder really produces, as an SDP profile-level-id. */
  profileLevelId: string;
  /** The browser's first offer: the H.264 payload type is chosen from it before the connection exists. */
  firstOffer: string;
  log: Logger;
  /** Sends signaling messages to this viewer. */
  signal: (msg: { type: "answer"; sdp: string } | { type: "candidate"; candidate: CandidateInit | null }) => void;
  /** What the shared encoder is doing, for stats. */
  encoderInfo: () => { bitrateBps: number; backend: string; clock: ViewerStats["clock"] };
  /** Where the pointer is, and (metadata mode) its last position and bitmap: sent when the control channel opens. */
  cursorState?: () => { mode: CursorMode; last?: Omit<CursorMessage, "type" | "shape">; shape?: CursorShapeMessage };
}

export type PeerSessionEvents = {
  /** This viewer needs a keyframe (it joined, lost one, or asked). The stage rate-limits these. */
  keyframe: [KeyframeReason];
  /** The ICE/DTLS connection came up (first time, or again after an ICE restart). */
  connected: [];
  close: [{ reason: string }];
};

/**
 * One viewer: a werift RTCPeerConnection answering the browser's offer (recvonly video + data
 * channels), sending the shared stream's packets with this viewer's own sequence numbers, answering
 * NACKs from a history long enough for `nack_history_ms` at the maximum bitrate, turning PLI and FIR
 * into keyframe requests, and running this viewer's bitrate controller.
 */
export class PeerSession extends TypedEmitter<PeerSessionEvents> {
  readonly id: string;
  readonly role: Role;
  readonly abr: AbrController;
  readonly #o: PeerSessionOptions;
  readonly #pc: RTCPeerConnection;
  readonly #track = new MediaStreamTrack({ kind: "video" });
  readonly #history: RtpHistory<RtpPacket>;
  readonly #delay = new DelayTracker();
  readonly #unsubs: (() => void)[] = [];
  #sender: RTCRtpSender | undefined;
  #playoutExtId: number | undefined;
  #playoutPayload: Buffer;
  #seq = Math.floor(Math.random() * 0x10000);
  #waitingKeyframe = true;
  #tokens = 0;
  #tokensAt = performance.now();
  #control: RTCDataChannel | undefined;
  #cursorPending: Omit<CursorMessage, "type" | "shape"> | undefined;
  #cursorShape: CursorShapeMessage | undefined;
  #cursorShapeSent = -1;
  #cursorSentAt = 0;
  #cursorTimer: NodeJS.Timeout | undefined;
  readonly cursorCounters = { updates: 0, sent: 0, shapesSent: 0 };
  #input: RTCDataChannel | undefined;
  #statsTimer: NodeJS.Timeout | undefined;
  #iceFailedTimer: NodeJS.Timeout | undefined;
  #connected = false;
  #closed = false;
  #closing: Promise<void> | undefined;
  /** Every DTLS/ICE transport werift made for this connection (see #trackTransports). */
  readonly #transports = new Set<RTCDtlsTransport>();
  /** Their candidate gatherings (each binds sockets until it ends). */
  readonly #gatherings = new Set<Promise<void>>();
  #queue: Promise<void> = Promise.resolve();
  readonly counters = { framesSent: 0, framesDropped: 0, keyframesSent: 0, packetsSent: 0, bytesSent: 0, packetsRetransmitted: 0, bytesRetransmitted: 0, nackedTooOld: 0, nackedSkipped: 0, framesHeldTooLong: 0, nacks: 0, plis: 0, firs: 0 };
  /** When each history slot's packet was last resent (performance.now() ms; 0: never). */
  #resentAt: Float64Array;
  /** Retransmission budget (bytes), refilled at half this viewer's target. */
  #rtxTokens = 0;
  #rtxTokensAt = performance.now();
  width = 0;
  height = 0;

  constructor(opts: PeerSessionOptions) {
    super();
    this.id = opts.id;
    this.role = opts.role;
    this.#o = opts;
    const c = opts.config;
    this.abr = new AbrController({ minBps: c.min_bitrate_bps, maxBps: c.max_bitrate_bps, startBps: c.start_bitrate_bps });
    this.#history = new RtpHistory(RtpHistory.sizeFor(c.nack_history_ms, c.max_bitrate_bps, c.max_payload_bytes));
    this.#resentAt = new Float64Array(this.#history.capacity);
    const min = Math.round(c.playout_delay_min_ms / 10), max = Math.round(c.playout_delay_max_ms / 10);
    this.#playoutPayload = Buffer.from([(min >> 4) & 0xff, ((min & 0xf) << 4) | ((max >> 8) & 0xf), max & 0xff]);
    this.#pc = new RTCPeerConnection({
      iceServers: opts.iceServers,
      icePortRange: c.udp_port_min !== 0 ? [c.udp_port_min, c.udp_port_max] : undefined,
      ...iceHostOptions(c.ice_host_addresses),
      bundlePolicy: "max-bundle",
      codecs: { video: [this.#chooseCodec(opts.firstOffer)], audio: [] },
      headerExtensions: {
        video: [useSdesMid(), useTransportWideCC(), useAbsSendTime(), new RTCRtpHeaderExtensionParameters({ uri: PLAYOUT_DELAY_URI })],
        audio: [],
      },
    });
    this.#trackTransports();
    this.#pc.onIceCandidate.subscribe((cand) => {
      if (this.#closed) return;
      if (!cand) {
        opts.signal({ type: "candidate", candidate: null });
        return;
      }
      const j = cand.toJSON();
      opts.signal({ type: "candidate", candidate: { candidate: j.candidate ?? "", sdpMid: j.sdpMid ?? null, sdpMLineIndex: j.sdpMLineIndex ?? null } });
    });
    this.#pc.connectionStateChange.subscribe((state) => {
      opts.log.debug({ viewer: this.id, state }, "peer connection state");
      if (state === "connected") {
        if (!this.#connected) {
          this.#connected = true;
          this.#waitingKeyframe = true;
          this.safeEmit("connected");
          this.safeEmit("keyframe", "new-viewer");
        }
      } else if (state === "failed" || state === "disconnected") {
        // The client decides first: it restarts ICE with a new offer, or gives up and hangs up.
        this.#connected = false;
        if (this.#iceFailedTimer) clearTimeout(this.#iceFailedTimer);
        this.#iceFailedTimer = setTimeout(() => this.close("ice failed"), state === "failed" ? ICE_FAILED_RELEASE_MS : ICE_DISCONNECTED_RELEASE_MS);
        this.#iceFailedTimer.unref();
      } else if (state === "closed") this.close("peer connection closed");
      if (state === "connected" || state === "connecting" || state === "new") {
        if (this.#iceFailedTimer) clearTimeout(this.#iceFailedTimer);
        this.#iceFailedTimer = undefined;
      }
    });
    this.#pc.onDataChannel.subscribe((ch) => this.#onDataChannel(ch));
  }

  get closed(): boolean {
    return this.#closed;
  }

  /**
   * werift forgets a transport that a later offer replaces on its m-line (a new BUNDLE group, new mids):
   * RTCPeerConnection.close() stops only the transports still attached, and a forgotten one keeps its UDP
   * sockets and ICE timers, so the process never exits. Every transport it creates is recorded here and
   * stopped in close(), whatever the offers did.
   */
  #trackTransports(): void {
    const sm = (this.#pc as unknown as { secureManager?: { createTransport?: (o?: unknown) => RTCDtlsTransport } }).secureManager;
    const create = sm?.createTransport?.bind(sm);
    if (!sm || !create) throw new Error("werift changed: RTCPeerConnection.secureManager.createTransport is gone (agent/rtc/peer.ts)");
    sm.createTransport = (o?: unknown) => {
      const t = create(o);
      const conn = t.iceTransport.connection as unknown as IceConnectionInternals;
      const gather = conn.gatherCandidates.bind(conn);
      conn.gatherCandidates = () => {
        const g = gather();
        this.#gatherings.add(g);
        return g;
      };
      this.#transports.add(t);
      return t;
    };
  }

  /** Transports werift made for this viewer that still hold sockets (tests: 0 after close). */
  get openTransports(): number {
    let n = 0;
    for (const t of this.#transports) if (t.iceTransport.state !== "closed" || (t.iceTransport.connection as unknown as IceConnectionInternals).protocols.length > 0) n++;
    return n;
  }

  /** Resolves once the peer connection and every transport it made have released their sockets. */
  get released(): Promise<void> {
    return this.#closing ?? new Promise<void>((resolve) => this.once("close", () => void this.#closing?.then(resolve)));
  }

  get connected(): boolean {
    return this.#connected;
  }

  get peerConnection(): RTCPeerConnection {
    return this.#pc;
  }

  /** Applies an offer (the first one, or a renegotiation / ICE restart) and sends the answer. */
  handleOffer(sdp: string): Promise<void> {
    return this.#serial(async () => {
      // werift would answer the first offered H.264, whatever its profile: show it only the one chosen.
      const offer = this.#codecPt === undefined ? sdp : keepOnlyVideoPayload(sdp, this.#codecPt);
      // The offer passed checkOffer; what werift still throws on is an inconsistency it found in it. Its
      // text (a JavaScript TypeError at times) means nothing to a client: it goes to our log only.
      await this.#pc.setRemoteDescription({ type: "offer", sdp: offer }).catch((err: unknown) => {
        this.#o.log.info({ viewer: this.id, err: errorMessage(err) }, "werift could not apply the offer");
        throw new BadOfferError("offer refused: its SDP is inconsistent (the agent could not apply it)");
      });
      // Answer a=setup:passive (DTLS server): as the client, werift sleeps 100 ms after ICE connects before
      // its ClientHello (RTCDtlsTransport.start), most of the DTLS time of a new viewer; the browser as
      // the client starts the handshake at once. Kept across renegotiations (the role is no longer auto).
      for (const t of this.#pc.dtlsTransports) if (t.role === "auto") t.role = "server";
      const video = this.#pc.getTransceivers().find((t) => t.kind === "video");
      if (!video) throw new UnsupportedError("the offer has no video section: offer to receive video (recvonly)");
      if (this.#sender === undefined) {
        video.setDirection("sendonly");
        await video.sender.replaceTrack(this.#track);
        this.#attachSender(video.sender);
      }
      const answer = await this.#pc.createAnswer().catch((err: unknown) => {
        this.#o.log.info({ viewer: this.id, err: errorMessage(err) }, "werift could not answer the offer");
        throw new BadOfferError("offer refused: no answer fits it (check its codecs and m-sections)");
      });
      // Announce what the encoder really produces (werift matched the offered string byte for byte).
      const sdpOut = this.#codecPt === undefined ? answer.sdp : rewriteProfileLevelId(answer.sdp, this.#codecPt, this.#o.profileLevelId);
      this.#o.signal({ type: "answer", sdp: sdpOut });
      await this.#pc.setLocalDescription(answer);
      this.#checkGathered();
      const ext = Object.entries(this.#pc.extIdUriMap).find(([, uri]) => uri === PLAYOUT_DELAY_URI);
      this.#playoutExtId = ext ? Number(ext[0]) : undefined;
      const twcc = Object.entries(this.#pc.extIdUriMap).find(([, uri]) => uri === useTransportWideCC().uri);
      this.#twccExtId = twcc ? Number(twcc[0]) : undefined;
    });
  }

  addCandidate(candidate: CandidateInit | null): Promise<void> {
    return this.#serial(async () => {
      if (candidate === null || candidate.candidate === "") return; // end of candidates
      await this.#pc.addIceCandidate({ candidate: candidate.candidate, sdpMid: candidate.sdpMid ?? undefined, sdpMLineIndex: candidate.sdpMLineIndex ?? undefined });
    });
  }

  #codecPt: number | undefined;
  #twccExtId: number | undefined;

  /** The agent gathered a relay (TURN) candidate for this viewer. */
  get gatheredRelay(): boolean {
    return (this.#pc.localDescription?.sdp ?? "").split(/\r?\n/).some((l) => l.startsWith("a=candidate:") && / typ relay( |$)/.test(l));
  }

  /**
   * werift skips an interface whose socket cannot be bound (all ports of rtc.udp_port_min..max taken) and
   * goes on without it: with no candidate at all the browser would only see ICE fail after seconds. Say
   * why at once instead (the stage answers the offer with an error and releases this viewer).
   */
  #checkGathered(): void {
    const sdp = this.#pc.localDescription?.sdp ?? "";
    const cands = sdp.split(/\r?\n/).filter((l) => l.startsWith("a=candidate:"));
    const c = this.#o.config;
    if (cands.length > 0) return;
    if (c.udp_port_min !== 0)
      throw new ExhaustedError(`no free UDP port for this viewer in rtc.udp_port_min..udp_port_max (${c.udp_port_min}-${c.udp_port_max}, ${c.udp_port_max - c.udp_port_min + 1} ports, one per viewer and network interface): raise the range or wait for a viewer to leave`);
    throw new ExhaustedError("no ICE candidate could be gathered (no usable network interface, no UDP socket)");
  }

  #chooseCodec(offer: string): ReturnType<typeof useH264> {
    const offered = offeredH264(offer);
    const chosen = chooseOfferedH264(offered, this.#o.profileLevelId);
    if (!chosen)
      throw new UnsupportedError(`the browser offers no H.264 with packetization-mode=1 in the profile the encoder produces (${this.#o.profileLevelId}); offered: ${offered.map((o) => o.profileLevelId).join(", ") || "no H.264"}`);
    this.#codecPt = chosen.payloadType;
    return useH264({
      payloadType: chosen.payloadType,
      parameters: `level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=${chosen.profileLevelId}`,
      rtcpFeedback: [useNACK(), usePLI(), useFIR(), useREMB(), useTWCC()],
    });
  }

  #attachSender(sender: RTCRtpSender): void {
    this.#sender = sender;
    const dtls = sender.dtlsTransport;
    // All RTCP of the transport: werift routes FIR by the sender SSRC field (the browser's), so it never
    // reaches sender.onRtcp; looking at the transport catches FIR, PLI, NACK, REMB, RR and transport-cc.
    const sub = dtls.onRtcp.subscribe((p) => this.#onRtcp(p));
    this.#unsubs.push(() => sub.unSubscribe());
    this.#statsTimer = setInterval(() => this.#tick(), 200);
    this.#statsTimer.unref();
  }

  #onRtcp(p: RtcpPacket): void {
    if (this.#closed || !this.#sender) return;
    const ssrc = this.#sender.ssrc;
    const now = performance.now();
    if (p instanceof RtcpPayloadSpecificFeedback) {
      const f = p.feedback;
      if (f instanceof PictureLossIndication && f.mediaSsrc === ssrc) {
        this.counters.plis++;
        this.safeEmit("keyframe", "pli");
      } else if (f.count === FIR_FMT && (f as unknown as { fir: { ssrc: number }[] }).fir.some((e) => e.ssrc === ssrc)) {
        this.counters.firs++;
        this.safeEmit("keyframe", "fir");
      } else if (f instanceof ReceiverEstimatedMaxBitrate && f.ssrcFeedbacks.includes(ssrc)) {
        this.abr.onRemb(Number(f.bitrate), now);
      }
    } else if (p instanceof RtcpTransportLayerFeedback) {
      const f = p.feedback;
      if (f instanceof GenericNack && f.mediaSourceSsrc === ssrc) this.#onNack(f.lost);
      else if (f instanceof TransportWideCC) {
        const r = this.#delay.feedback(twccPacketResults(f as unknown as TwccFeedback), now);
        if (r) {
          if (r.queueingDelayMs !== undefined) this.abr.onQueueingDelay(r.queueingDelayMs, now);
          if (r.ackedBps !== undefined) this.abr.onAckedRate(r.ackedBps, now);
          for (const c of r.capacityBps) this.abr.onCapacity(c, now);
          if (r.recentCount >= 20) this.abr.onLoss(r.recentLoss, now);
        }
      }
    } else if (p instanceof RtcpRrPacket || p instanceof RtcpSrPacket) {
      for (const rep of p.reports) if (rep.ssrc === ssrc && !this.#twccNegotiated()) this.abr.onLoss(rep.fractionLost / 256, now);
    }
  }

  #twccNegotiated(): boolean {
    return Object.values(this.#pc.extIdUriMap).includes(useTransportWideCC().uri);
  }

  /**
   * All NACKs are answered here, from our history (werift's own answering is switched off in sendFrame).
   * werift resends every NACKed packet every time it is NACKed, without limit: on a congested link
   * (tbf, 5 -> 2 Mbit/s) that tripled the offered load with resends that were dropped again and cut the
   * target to the minimum. Like libwebrtc, a packet is not resent again within about half an RTT (a
   * duplicate NACK), and resends are limited to half the viewer's target, and to a tenth of it while a
   * standing queue says the path is congested: resending what a full bottleneck queue dropped only keeps
   * it full (seen on a tbf 8 -> 5 Mbit/s: resends at ~40 % of the media rate held the queue at its limit
   * for 3 s after the target was already under the link). Each resend gets its own transport-wide
   * sequence number (as in libwebrtc), so transport-cc reports it and the acknowledged rate counts it.
   */
  #onNack(lost: number[]): void {
    this.counters.nacks++;
    const sender = this.#sender;
    if (!sender) return;
    const now = performance.now();
    const budgetBps = (this.abr.target * (this.abr.queueCongested ? 0.1 : 0.5)) / 8;
    // A quarter second of budget, but at least two full packets: at a low target a lone lost packet of a
    // keyframe must still be resendable.
    const depth = Math.max(budgetBps * 0.25, 2 * this.#o.config.max_payload_bytes);
    this.#rtxTokens = Math.min(depth, this.#rtxTokens + ((now - this.#rtxTokensAt) / 1000) * budgetBps);
    this.#rtxTokensAt = now;
    const minGapMs = Math.max(10, (this.abr.rttMs ?? 50) / 2);
    let overBudget = 0;
    this.#syncPacer(now);
    let room = this.#pacer.room(now);
    for (const seq of lost) {
      const pkt = this.#history.get(seq);
      if (!pkt) {
        this.counters.nackedTooOld++;
        continue;
      }
      const slot = seq & (this.#history.capacity - 1);
      // Resends count in the viewer's 1 s window (ViewerPacer) and wait for nothing: one that does not
      // fit is skipped like one over the budget (media waiting in the window keeps its order).
      const noRoom = room < pkt.payload.length + WIRE_OVERHEAD;
      if (now - this.#resentAt[slot]! < minGapMs || this.#rtxTokens < pkt.payload.length || noRoom) {
        if (this.#rtxTokens < pkt.payload.length || noRoom) overBudget++;
        this.counters.nackedSkipped++;
        continue;
      }
      room -= pkt.payload.length + WIRE_OVERHEAD;
      this.#pacer.record(now, pkt.payload.length + WIRE_OVERHEAD);
      this.#resentAt[slot] = now;
      this.#rtxTokens -= pkt.payload.length;
      this.counters.packetsRetransmitted++;
      this.counters.bytesRetransmitted += pkt.payload.length;
      sender.dtlsTransport.sendRtp(pkt.payload, this.#freshWideSeq(pkt.header, now, pkt.payload.length)).catch(() => undefined);
    }
    // A loss burst the budget cannot repair (a blackout) for a second: the browser may not ask for a
    // keyframe while it still hopes for resends (seen: a 1.5 s blackout at 2 Mbit/s, Chromium NACKed for
    // seconds, the budget skipped ~3000 resends, no PLI, no picture for > 10 s). The browser decides
    // first (its PLI usually comes sooner); then a keyframe is cheaper than the resends.
    if (overBudget >= 8) {
      if (this.#overBudgetSince === undefined || now - this.#overBudgetLast > 1000) this.#overBudgetSince = now;
      this.#overBudgetLast = now;
      if (now - this.#overBudgetSince >= 1000) {
        this.#overBudgetSince = undefined;
        this.safeEmit("keyframe", "recovery");
      }
    }
  }

  #overBudgetSince: number | undefined;
  #overBudgetLast = -Infinity;

  /** A copy of a sent packet's header with a new transport-wide sequence number, recorded for feedback. */
  #freshWideSeq(header: RtpHeader, now: number, payloadBytes: number): RtpHeader {
    const dtls = this.#sender!.dtlsTransport;
    const id = this.#twccExtId;
    if (id === undefined || !header.extensions.some((e) => e.id === id)) return header;
    const wide = (dtls.transportSequenceNumber + 1) & 0xffff;
    dtls.transportSequenceNumber = wide;
    this.#delay.sent(wide, now, payloadBytes + WIRE_OVERHEAD);
    return new RtpHeader({ ...header, extensions: header.extensions.map((e) => (e.id === id ? { id, payload: serializeTransportWideCC(wide) } : e)) });
  }

  /**
   * Sends one encoded frame, already packetized (shared by all viewers; each packet is copied by werift
   * as it is sent). Returns whether it was sent. A viewer that has not got a keyframe since it joined or
   * since a frame was dropped for it gets nothing until the next keyframe: P-frames without their
   * reference would only be decoded into garbage.
   */
  sendFrame(frame: EncodedFrame, packets: readonly RtpPacket[], bytes: number, encoderTargetBps: number): boolean {
    const sender = this.#sender;
    if (this.#closed || !this.#connected || !sender) return false;
    this.width = frame.width;
    this.height = frame.height;
    const now = performance.now();
    const target = this.abr.target;
    // Per-viewer budget at this viewer's own target: the shared encoder may run faster than this
    // viewer's path (it follows the fastest viewer). Debt up to 0.5 s of its target is allowed.
    this.#tokens = Math.min(target * 0.25, this.#tokens + ((now - this.#tokensAt) / 1000) * target);
    this.#tokensAt = now;
    if (this.#waitingKeyframe && !frame.keyframe) {
      this.counters.framesDropped++;
      return false;
    }
    // The viewer the encoder follows is never throttled here: the encoder already keeps to its rate, and
    // its overshoots (keyframes, VBV) must not cost the fastest viewer frames.
    const throttled = target < encoderTargetBps * 0.95;
    this.#encoderSetpoint = throttled ? 0 : encoderTargetBps;
    if (!throttled) this.#tokens = Math.max(this.#tokens, 0);
    // The pacer's backlog is bounded too (a sudden cut of the target leaves bytes queued at the old rate).
    if (throttled && !frame.keyframe && (this.#tokens < -target * 0.5 || this.#pacer.backlogBytes * 8 > target)) {
      this.counters.framesDropped++;
      this.#waitingKeyframe = true;
      this.safeEmit("keyframe", "recovery");
      return false;
    }
    // Held by the 1 s window for too long (ViewerPacer.overdue): skip to the next keyframe.
    if (!throttled && !frame.keyframe && this.#pacer.overdue(now)) {
      this.counters.framesDropped++;
      this.counters.framesHeldTooLong++;
      this.#waitingKeyframe = true;
      this.safeEmit("keyframe", "recovery");
      return false;
    }
    if (frame.keyframe) {
      this.#waitingKeyframe = false;
      this.#overBudgetSince = undefined;
      this.counters.keyframesSent++;
    }
    this.#tokens -= bytes * 8;
    // Each frame is one burst: its dispersion at the receiver measures the path (DelayTracker).
    const group = this.#frameNo = (this.#frameNo + 1) & 0x7fffffff;
    this.counters.framesSent++;
    this.counters.bytesSent += bytes;
    // A throttled viewer gets frames sized for the fastest viewer's rate: sent as one burst, a frame
    // overflows a slow link's bottleneck queue (seen: 30 % of every frame lost on a 1.5 Mbit/s tbf with
    // a 100 ms queue, loss > 10 % cut the target to the minimum, 1 fps). Paced at a little over its
    // target, the queue stays short. The viewer the encoder follows is held under its path's measured
    // capacity (ViewerPacer). Packets keep their order; the token bucket and ViewerPacer.HOLD_MAX_MS
    // bound the backlog.
    this.#pacer.paceBps = throttled ? target * PACE_FACTOR : 0;
    // What this viewer was handed (the encoder's output), for the overshoot: counted before the window
    // holds any of it, or a held peak would read as an encoder keeping to its target.
    this.#pacer.push(packets.map((p) => {
      const bytes = p.payload.length + WIRE_OVERHEAD;
      this.#wireBytes += bytes;
      return { item: p, bytes, group };
    }), now, frame.keyframe);
    this.#drainPaced(now);
    return true;
  }

  /** What the send queue held and for how long (cumulative; `maxWaitMs` may be reset by the reader). */
  get pacerCounters(): ViewerPacer<RtpPacket>["counters"] {
    return this.#pacer.counters;
  }

  /** This viewer's send queue: pacing when throttled, else the limits of its path (ViewerPacer). */
  readonly #pacer = new ViewerPacer<RtpPacket>(() => (this.#frameNo = (this.#frameNo + 1) & 0x7fffffff));
  #paceTimer: NodeJS.Timeout | undefined;
  /** The last capacity the window was set from, and when (held over short gaps in the samples). */
  #limitCap: { bps: number; at: number } | undefined;

  /** Gives the send window the path's state as of `now` (before it is asked for room or drained). */
  #syncPacer(now: number): void {
    this.#pacer.capacityBps = this.#windowCapacity(now);
    this.#pacer.queueMs = this.abr.queueingDelayMs;
  }

  /**
   * The capacity the send window limits to (`AbrController.steadyCapacityBps`), unless clearly more
   * arrived than the samples say (a starved sender spreading its own bursts reads low, 1.2-2.5 for a
   * 5 Mbit/s link at load 10: the controller does not follow that down either). Kept LIMIT_HOLD_MS across a gap in the samples (frames too small, or a
   * still screen), then none (Infinity: nothing waits).
   */
  #windowCapacity(now: number): number {
    const cap = this.abr.steadyCapacityBps;
    const acked = this.abr.ackedBps;
    if (cap !== undefined) {
      // (Not the controller's 0.95: while a queue stands, what arrives is the capacity itself, and a
      // median 5 % low would lift the limit just when a burst overflows that queue.)
      if (acked !== undefined && cap < 0.85 * acked) this.#limitCap = undefined;
      else this.#limitCap = { bps: cap, at: now };
    }
    if (this.#limitCap === undefined || now - this.#limitCap.at > LIMIT_HOLD_MS) return Infinity;
    return this.#limitCap.bps;
  }

  #drainPaced(now = performance.now()): void {
    const sender = this.#sender;
    if (this.#paceTimer) clearTimeout(this.#paceTimer);
    this.#paceTimer = undefined;
    if (this.#closed || !sender) return;
    this.#syncPacer(now);
    const next = this.#pacer.drain(now, (p) => this.#sendPacket(sender, p.item, now, p.group));
    if (next !== undefined) this.#paceTimer = setTimeout(() => this.#drainPaced(), next);
  }

  #frameNo = 0;

  #sendPacket(sender: RTCRtpSender, p: RtpPacket, now: number, group: number): void {
    const seq = this.#seq;
    this.#seq = (seq + 1) & 0xffff;
    p.header.sequenceNumber = seq;
    p.header.extensions = this.#playoutExtId !== undefined ? [{ id: this.#playoutExtId, payload: this.#playoutPayload }] : [];
    // sendRtp copies and rewrites the packet synchronously before its first await.
    sender.sendRtp(p).catch(() => undefined);
    // Sizes as on the wire (RTP header and extensions, SRTP tag, UDP, IP, Ethernet: ~88 bytes), so that
    // measured rates compare with the link's and the target (media payload) keeps the overhead's room.
    this.#delay.sent(sender.dtlsTransport.transportSequenceNumber, now, p.payload.length + WIRE_OVERHEAD, group);
    // Keep what werift really sent (its SSRC, payload type, MID and transport-cc extensions).
    const cache = (sender as unknown as { rtpCache?: (RtpPacket | undefined)[] }).rtpCache;
    const sent = cache?.[seq % WERIFT_HISTORY];
    if (sent && sent.header.sequenceNumber === seq) {
      this.#history.put(seq, sent);
      this.#resentAt[seq & (this.#history.capacity - 1)] = 0;
      // Take NACK answering over from werift (it finds nothing in its cache): see #onNack.
      cache![seq % WERIFT_HISTORY] = undefined;
    }
    this.counters.packetsSent++;
  }

  /**
   * The pointer moved or changed shape (cursor mode "metadata"). Rate-limited to one message per
   * CURSOR_MIN_INTERVAL_MS and held back while the control channel is backed up; the newest position
   * wins, and the bitmap goes once per change (or to a viewer that has not had it yet).
   */
  sendCursor(pos: Omit<CursorMessage, "type" | "shape">, shape: CursorShapeMessage | undefined): void {
    if (this.#closed) return;
    this.cursorCounters.updates++;
    this.#cursorPending = pos;
    if (shape) this.#cursorShape = shape;
    this.#flushCursor();
  }

  #flushCursor(): void {
    if (this.#closed || this.#cursorTimer !== undefined) return;
    const ch = this.#control;
    const pos = this.#cursorPending;
    if (!ch || ch.readyState !== "open" || !pos) return;
    const now = performance.now();
    const wait = this.#cursorSentAt + CURSOR_MIN_INTERVAL_MS - now;
    if (wait > 0 || ch.bufferedAmount > CURSOR_MAX_BUFFERED) {
      this.#cursorTimer = setTimeout(() => {
        this.#cursorTimer = undefined;
        this.#flushCursor();
      }, Math.max(wait, CURSOR_MIN_INTERVAL_MS));
      this.#cursorTimer.unref();
      return;
    }
    this.#cursorPending = undefined;
    this.#cursorSentAt = now;
    const shape = this.#cursorShape && this.#cursorShape.serial !== this.#cursorShapeSent ? this.#cursorShape : undefined;
    if (shape) {
      this.#cursorShapeSent = shape.serial;
      this.cursorCounters.shapesSent++;
    }
    this.cursorCounters.sent++;
    this.sendControl({ type: "cursor", ...pos, ...(shape ? { shape } : {}) });
  }

  /** The next frame this viewer gets must be a keyframe (its stream switched to another encoder). */
  waitForKeyframe(): void {
    this.#waitingKeyframe = true;
  }

  /** Sends on the control channel, if open. */
  sendControl(msg: AgentControlMessage): void {
    const ch = this.#control;
    if (!ch || ch.readyState !== "open") return;
    try {
      ch.send(JSON.stringify(msg));
    } catch (err) {
      this.#o.log.debug({ viewer: this.id, err: errorMessage(err) }, "control channel send failed");
    }
  }

  stats(): ViewerStats {
    const enc = this.#o.encoderInfo();
    return {
      agentTimeMs: Date.now(),
      targetBitrateBps: this.abr.target,
      encoderBitrateBps: enc.bitrateBps,
      rttMs: this.abr.rttMs ?? null,
      lossFraction: this.abr.lossFraction,
      queueingDelayMs: Math.round(this.abr.queueingDelayMs * 10) / 10,
      abrState: this.abr.state,
      framesSent: this.counters.framesSent,
      framesDropped: this.counters.framesDropped,
      keyframesSent: this.counters.keyframesSent,
      packetsSent: this.counters.packetsSent,
      packetsRetransmitted: this.counters.packetsRetransmitted,
      nacks: this.counters.nacks,
      plis: this.counters.plis,
      firs: this.counters.firs,
      width: this.width,
      height: this.height,
      backend: enc.backend,
      clock: enc.clock,
    };
  }

  #ticks = 0;
  #wireBytes = 0;
  #sendLog: { t: number; bytes: number; enc: number }[] = [];
  /** The encoder's target at the last frame while this viewer is the one it follows (0: throttled). */
  #encoderSetpoint = 0;
  #tick(): void {
    if (this.#closed || !this.#sender) return;
    const now = performance.now();
    try {
      const rs = this.#sender.collectStats(Date.now()).find((s) => s.type === "remote-inbound-rtp") as { roundTripTime?: number } | undefined;
      if (rs?.roundTripTime !== undefined) this.abr.onRtt(rs.roundTripTime * 1000);
    } catch {
      // stats are best effort
    }
    // What this viewer really sent over the last second (media only), for the encoder's overshoot.
    this.#sendLog.push({ t: now, bytes: this.#wireBytes, enc: this.#encoderSetpoint });
    while (this.#sendLog.length > 1 && this.#sendLog[0]!.t < now - 1000) this.#sendLog.shift();
    const first = this.#sendLog[0]!;
    if (now - first.t >= 800) {
      // What the encoder was really asked for over the same window (it follows this viewer's target
      // late and only past a 5 % dead band), when this viewer got all it made.
      const enc = this.#sendLog.slice(1).map((x) => x.enc);
      const encoder = enc.length > 0 && enc.every((x) => x > 0) ? { meanBps: enc.reduce((a, b) => a + b, 0) / enc.length, minBps: Math.min(...enc), maxBps: Math.max(...enc) } : undefined;
      this.abr.onSendRate(((this.#wireBytes - first.bytes) * 8) / ((now - first.t) / 1000), now, now - first.t, encoder);
    }
    // The send window's holds since the last tick: the controller pushes the target back (pushback).
    this.abr.onSendHold(this.#pacer.takeWindowHoldMs(now), now);
    this.abr.update(now);
    if (++this.#ticks % 5 === 0) this.sendControl({ type: "stats", stats: this.stats() });
  }

  #onDataChannel(ch: RTCDataChannel): void {
    if (ch.label === CONTROL_LABEL && this.#control === undefined) {
      this.#control = ch;
      ch.onMessage.subscribe((data) => this.#onControl(data));
      const hello = (): void => {
        const cs = this.#o.cursorState?.() ?? { mode: "embedded" as const };
        this.sendControl({ type: "cursor-mode", mode: cs.mode });
        if (cs.mode === "metadata" && cs.last) this.sendCursor(cs.last, cs.shape);
      };
      if (ch.readyState === "open") hello();
      else {
        const sub = ch.stateChanged.subscribe((st) => {
          if (st !== "open") return;
          sub.unSubscribe();
          hello();
        });
      }
    } else if (ch.label === INPUT_LABEL && this.role === "control" && this.#input === undefined) {
      this.#input = ch;
      ch.onMessage.subscribe((data) => {
        const parsed = typeof data === "string" ? safeJson(data) : undefined;
        const id = pickId(parsed);
        if (ch.readyState === "open")
          ch.send(JSON.stringify({ type: "error", code: "not-implemented", message: "remote input is not implemented in this agent yet", ...(id !== undefined ? { id } : {}) }));
      });
    } else {
      // A view-role session never gets input; unknown labels are not ours.
      this.#o.log.info({ viewer: this.id, label: ch.label.slice(0, 64), role: this.role }, "data channel refused");
      ch.close();
    }
  }

  #onControl(data: string | Buffer): void {
    const r = parseControlMessage(data);
    if (!r.ok) {
      this.sendControl(r.error);
      return;
    }
    const m = r.msg;
    const idPart = m.id !== undefined ? { id: m.id } : {};
    switch (m.type) {
      case "stats-request":
        this.sendControl({ type: "stats", stats: this.stats() });
        break;
      case "keyframe":
        this.safeEmit("keyframe", "api");
        this.sendControl({ type: "ok", ...idPart, ref: m.type });
        break;
      case "quality":
        this.abr.setPreferredMax(m.maxBitrateBps ?? undefined);
        this.sendControl({ type: "ok", ...idPart, ref: m.type });
        break;
      case "ping":
        this.sendControl({ type: "pong", ...idPart, t: m.t, agentTimeMs: Date.now() });
        break;
    }
  }

  #serial(fn: () => Promise<void>): Promise<void> {
    if (this.#closed) return Promise.reject(new InvalidStateError("the peer session is closed"));
    const p = this.#queue.then(fn);
    this.#queue = p.catch(() => undefined);
    return p;
  }

  /** Idempotent: closes the peer connection; emits `close` once. */
  close(reason = "closed"): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#connected = false;
    if (this.#statsTimer) clearInterval(this.#statsTimer);
    if (this.#iceFailedTimer) clearTimeout(this.#iceFailedTimer);
    if (this.#cursorTimer) clearTimeout(this.#cursorTimer);
    this.#cursorPending = undefined;
    this.#cursorShape = undefined;
    if (this.#paceTimer) clearTimeout(this.#paceTimer);
    this.#paceTimer = undefined;
    this.#pacer.clear();
    for (const u of this.#unsubs) u();
    this.#history.clear();
    this.#closing = this.#release();
    this.safeEmit("close", { reason });
    this.removeAllListeners();
  }

  async #release(): Promise<void> {
    await this.#pc.close().catch(() => undefined);
    // A gathering still binding its sockets when close() ran adds them after werift cleared its list:
    // wait for each transport's gathering to end, then stop it again.
    await Promise.allSettled(this.#gatherings);
    for (const t of this.#transports) {
      await t.stop().catch(() => undefined);
      const conn = t.iceTransport.connection as unknown as IceConnectionInternals;
      if (conn.protocols.length > 0) await conn.close().catch(() => undefined);
    }
  }
}

/** What werift's ICE Connection keeps private but the release needs: its sockets and its gathering. */
interface IceConnectionInternals {
  protocols: unknown[];
  gatherCandidates(): Promise<void>;
  close(): Promise<void>;
}

function safeJson(s: string): unknown {
  try {
    return JSON.parse(s);
  } catch {
    return undefined;
  }
}

function pickId(v: unknown): string | number | undefined {
  const id = (v as { id?: unknown } | null | undefined)?.id;
  if (typeof id === "number" && Number.isInteger(id)) return id;
  if (typeof id === "string" && id.length <= 64) return id;
  return undefined;
}

/**
 * werift's options for `rtc.ice_host_addresses`. werift gathers on every interface address unless told
 * otherwise, and its own filter (`iceInterfaceAddresses`) falls back to all of them when none matches, so
 * the interface scan is turned off and the configured addresses are the only host candidates. A family
 * with exactly one address also binds its sockets (host, TURN client) there, so nothing leaves from
 * another local address.
 */
export function iceHostOptions(addresses: readonly string[]): { iceUseIpv4?: boolean; iceUseIpv6?: boolean; iceAdditionalHostAddresses?: string[]; iceInterfaceAddresses?: { udp4?: string; udp6?: string } } {
  if (addresses.length === 0) return {};
  const v4 = addresses.filter((a) => isIPv4(a));
  const v6 = addresses.filter((a) => !isIPv4(a));
  const bind: { udp4?: string; udp6?: string } = {};
  if (v4.length === 1) bind.udp4 = v4[0];
  if (v6.length === 1) bind.udp6 = v6[0];
  return { iceUseIpv4: false, iceUseIpv6: false, iceAdditionalHostAddresses: [...addresses], iceInterfaceAddresses: bind };
}
