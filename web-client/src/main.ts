export {};

// The web client: sign in with a token (URL fragment or pasted; never a query string), open the
// signaling WebSocket, offer to receive video (+ the control and input data channels), show the remote
// screen with a stats overlay, explain every failure, and reconnect with backoff (not after a refused
// token). The agent ends a session when its token expires or is revoked; the page cannot make tokens, so
// shortly before the expiry it asks for a new one, and a token pasted while connected continues the
// session on the open connection (`token` -> `renewed`).

// The control channel's cursor messages, defined once for the agent and this client (types only: the
// bundle gets no agent code).
import type { CursorMessage, CursorMode, CursorModeMessage } from "../../agent/protocol/control.js";
import type { RenewedMessage, TokenMessage } from "../../agent/protocol/signaling.js";

const PROTOCOL_VERSION = 1;
const SUBPROTOCOL = "wl-webrtc.v1";
const TOKEN_KEY = "wl-webrtc-token";
/** How long before the token's expiry the page asks for a new one (the agent ends the session at expiry). */
const EXPIRY_WARNING_S = 120;

const CLOSE_MESSAGES: Record<number, string> = {
  1001: "The agent is shutting down.",
  1009: "A message was too large for the agent.",
  4400: "The agent did not understand this client (bad message).",
  4401: "The token was refused",
  4406: "This client speaks a protocol version the agent does not support.",
  4408: "The agent did not receive a hello in time.",
  4410: "The connection went idle.",
  4413: "This client was not reading fast enough.",
  4429: "Too many messages: rate limited.",
  4500: "The agent hit an internal error.",
  4503: "The agent has too many sessions; try again later.",
};

type Kind = "info" | "ok" | "error";
type Failure = "token" | "unreachable" | "refused" | "ice" | "stream" | "closed";

interface AgentStats {
  agentTimeMs: number;
  targetBitrateBps: number;
  encoderBitrateBps: number;
  rttMs: number | null;
  lossFraction: number;
  width: number;
  height: number;
  backend: string;
  clock: { rtpTimestamp: number; captureTimeMs: number } | null;
}

interface ViewStats {
  fps: number;
  bitrateBps: number;
  rttMs: number | null;
  lossPercent: number;
  decodeMs: number | null;
  latencyMs: number | null;
  framesDecoded: number;
  width: number;
  height: number;
}

const $ = <T extends HTMLElement>(id: string): T => document.getElementById(id) as T;
const statusEl = $<HTMLParagraphElement>("status");
const form = $<HTMLFormElement>("signin");
const input = $<HTMLInputElement>("token");
const viewer = $<HTMLDivElement>("viewer");
const video = $<HTMLVideoElement>("screen");
const statsEl = $<HTMLPreElement>("stats");
const cursorEl = $<HTMLCanvasElement>("cursor");
const fitBtn = $<HTMLButtonElement>("fit");
const fsBtn = $<HTMLButtonElement>("fullscreen");
const statsBtn = $<HTMLButtonElement>("toggle-stats");

/** State visible to tests and to curious users (window.wl in the console). */
const wl = {
  state: "idle" as "idle" | "connecting" | "signaling" | "streaming" | "failed",
  failure: undefined as Failure | undefined,
  role: undefined as string | undefined,
  pc: undefined as RTCPeerConnection | undefined,
  control: undefined as RTCDataChannel | undefined,
  input: undefined as RTCDataChannel | undefined,
  stats: undefined as ViewStats | undefined,
  agentStats: undefined as AgentStats | undefined,
  controlMessages: [] as unknown[],
  reconnects: 0,
  retryInMs: 0,
  clockOffsetMs: undefined as number | undefined,
  /** Where the remote pointer is: "embedded" (in the picture: not drawn here), "metadata" (drawn here), "hidden". */
  cursorMode: undefined as CursorMode | undefined,
  /** The overlay as placed, in CSS pixels relative to the viewer (tests, console). */
  cursorOverlay: undefined as { left: number; top: number; width: number; height: number; serial: number } | undefined,
  /** When the agent ends this session unless it gets a fresh token (seconds since the epoch). */
  expiresAt: undefined as number | undefined,
  /** Milestones of the current connection (wall clock ms: performance.timeOrigin + now), for benches. */
  marks: {} as Record<string, number>,
};
(window as unknown as { wl: typeof wl }).wl = wl;

/** Records the first time a milestone of the current connection is reached. */
function mark(name: string): void {
  wl.marks[name] ??= performance.timeOrigin + performance.now();
}

function setStatus(text: string, kind: Kind = "info"): void {
  statusEl.textContent = text;
  statusEl.dataset.kind = kind;
}

/**
 * `#ice=relay` in the address forces the browser to use TURN relays only (to check a TURN setup, or to
 * keep the browser's own addresses from the host); kept for this tab like the token.
 */
const ICE_POLICY_KEY = "wl-webrtc-ice";

function tokenFromFragment(): string | undefined {
  const params = new URLSearchParams(location.hash.slice(1));
  const ice = params.get("ice");
  if (ice === "relay" || ice === "all") sessionStorage.setItem(ICE_POLICY_KEY, ice);
  const t = params.get("token") ?? undefined;
  if (t !== undefined) {
    sessionStorage.setItem(TOKEN_KEY, t);
    // Drop the token from the address bar and history.
    history.replaceState(null, "", location.pathname);
  }
  return t ?? sessionStorage.getItem(TOKEN_KEY) ?? undefined;
}

// ---- view controls ----

let fitted = true;
fitBtn.addEventListener("click", () => {
  fitted = !fitted;
  viewer.classList.toggle("native", !fitted);
  fitBtn.textContent = fitted ? "Native size" : "Fit to window";
});
fsBtn.addEventListener("click", () => {
  if (document.fullscreenElement) void document.exitFullscreen();
  else void viewer.requestFullscreen().catch((e: unknown) => setStatus(`Fullscreen refused: ${String(e)}`, "error"));
});
statsBtn.addEventListener("click", () => {
  statsEl.hidden = !statsEl.hidden;
});

// ---- remote pointer (cursor mode "metadata") ----

let cursorPos: CursorMessage | undefined;
let cursorShape: { serial: number; width: number; height: number; scale: number } | undefined;

function setCursorMode(mode: CursorMode | undefined): void {
  wl.cursorMode = mode;
  if (mode !== "metadata") {
    cursorPos = undefined;
    cursorEl.hidden = true;
    wl.cursorOverlay = undefined;
  }
}

function onCursor(m: CursorMessage): void {
  if (wl.cursorMode !== "metadata") return; // the pointer is in the picture: never draw a second one
  const sh = m.shape;
  if (sh && (sh.width === 0 || sh.height === 0)) cursorShape = { serial: sh.serial, width: 0, height: 0, scale: 1 }; // hidden
  else if (sh && sh.width > 0 && sh.height > 0 && sh.width <= 256 && sh.height <= 256) {
    const bytes = Uint8ClampedArray.from(atob(sh.rgba), (c) => c.charCodeAt(0));
    if (bytes.length === sh.width * sh.height * 4) {
      cursorEl.width = sh.width;
      cursorEl.height = sh.height;
      cursorEl.getContext("2d")?.putImageData(new ImageData(bytes, sh.width, sh.height), 0, 0);
      cursorShape = { serial: sh.serial, width: sh.width, height: sh.height, scale: sh.scale };
    }
  }
  cursorPos = m;
  placeCursor();
}

/** Puts the overlay where the pointer is on the video as shown (object-fit: contain, or native size). */
function placeCursor(): void {
  const m = cursorPos, sh = cursorShape;
  const vw = video.videoWidth, vh = video.videoHeight;
  // Hidden: no bitmap yet, an empty one (the producer hides the pointer), or a position off this frame
  // (the pointer is on another monitor).
  const off = !m || m.x < 0 || m.y < 0 || m.x >= m.frameWidth || m.y >= m.frameHeight;
  if (!m || !sh || off || sh.width === 0 || sh.serial !== m.serial || vw === 0 || vh === 0 || m.frameWidth <= 0) {
    cursorEl.hidden = true;
    wl.cursorOverlay = undefined;
    return;
  }
  const cw = video.clientWidth, ch = video.clientHeight;
  const s = Math.min(cw / vw, ch / vh);
  const ox = video.offsetLeft + (cw - vw * s) / 2, oy = video.offsetTop + (ch - vh * s) / 2;
  // Frame pixels (what the position refers to) -> video pixels (the encoder may scale) -> CSS pixels.
  const k = s * (vw / m.frameWidth);
  const o = { left: ox + (m.x - m.hotspotX) * k, top: oy + (m.y - m.hotspotY) * k, width: sh.width * sh.scale * k, height: sh.height * sh.scale * k, serial: sh.serial };
  cursorEl.style.transform = `translate(${o.left}px, ${o.top}px)`;
  cursorEl.style.width = `${o.width}px`;
  cursorEl.style.height = `${o.height}px`;
  cursorEl.hidden = false;
  wl.cursorOverlay = o;
}
video.addEventListener("resize", placeCursor);
new ResizeObserver(placeCursor).observe(video);

// ---- connection ----

let current: Connection | undefined;
/** A token pasted while connected, sent to renew the session; kept once the agent accepts it. */
let pendingToken: string | undefined;
let retryTimer: number | undefined;
let backoffMs = 1000;

class Connection {
  readonly ws: WebSocket;
  pc: RTCPeerConnection | undefined;
  #pendingRemote: RTCIceCandidateInit[] = [];
  #haveAnswer = false;
  #closed = false;
  #timers: number[] = [];
  #iceTimer: number | undefined;
  #restarted = false;
  #prev: { t: number; frames: number; bytes: number; decodeTime: number; decoded: number } | undefined;
  #latency: number[] = [];
  #welcomed = false;
  /** The timeout until the expiry warning, then the interval that keeps its countdown current. */
  #expiryTimer: number | undefined;
  /** Set while the page is asking for a new token: the session's end (seconds since the epoch). */
  #warningFor: number | undefined;
  /** Why the last token pasted was not accepted (shown with the warning). */
  #renewError: string | undefined;

  constructor(readonly token: string) {
    wl.state = "connecting";
    wl.marks = {};
    mark("connect");
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    this.ws = new WebSocket(`${scheme}//${location.host}/signal`, SUBPROTOCOL);
    let opened = false;
    this.ws.onopen = () => {
      opened = true;
      mark("wsOpen");
      wl.state = "signaling";
      this.ws.send(JSON.stringify({ type: "hello", v: PROTOCOL_VERSION, token, client: { name: "wl-webrtc-web" } }));
    };
    this.ws.onmessage = (ev) => this.#onSignal(String(ev.data));
    this.ws.onclose = (ev) => {
      if (this.#closed) return;
      if (ev.code === 4401) {
        sessionStorage.removeItem(TOKEN_KEY);
        form.hidden = false;
        const why = ev.reason.replace(/^unauthorized: /, "");
        // A live session ends with 4401 when its token expires or is revoked; this page cannot make a new
        // token (it only has the one it was opened with), so the user brings one.
        const what = this.#welcomed
          ? `The session ended: its token ${why === "expired" ? "expired" : why === "revoked" ? "was revoked" : `was refused (${why})`}.`
          : `${CLOSE_MESSAGES[4401]}: ${why}.`;
        this.fail("token", `${what} Get a new token with \`wl-webrtc token\` and paste it here (or open the page again with #token=…).`, false);
        return;
      }
      if (!opened || ev.code === 1006) this.fail("unreachable", "The agent is unreachable (is it running, and is this the right address?).", true);
      else this.fail("closed", CLOSE_MESSAGES[ev.code] ?? `Disconnected (${ev.code}${ev.reason ? `: ${ev.reason}` : ""}).`, ev.code !== 4400 && ev.code !== 4406);
    };
  }

  #send(msg: unknown): void {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  /** Whether a fresh token can go on this connection (it is open and welcomed) instead of a new one. */
  get canRenew(): boolean {
    return this.#welcomed && !this.#closed && this.ws.readyState === WebSocket.OPEN;
  }

  /** Presents a fresh token on the open connection; the agent answers `renewed` or an error. */
  renew(token: string): void {
    const msg: TokenMessage = { type: "token", token };
    this.#send(msg);
    this.#renewError = undefined;
    setStatus("Checking the new token…", "info");
  }

  /** Asks for a new token a little before the session's end (the agent closes it then). */
  #armExpiryWarning(expiresAt: number): void {
    wl.expiresAt = expiresAt;
    this.#clearExpiryWarning();
    const warnInMs = Math.max(0, (expiresAt - EXPIRY_WARNING_S) * 1000 - Date.now());
    this.#expiryTimer = window.setTimeout(() => {
      if (this.#closed) return;
      form.hidden = false;
      this.#warningFor = expiresAt;
      const show = (): void => {
        if (!this.#closed && this.#warningFor !== undefined) setStatus(this.#expiryText(this.#warningFor), "error");
      };
      show();
      this.#expiryTimer = window.setInterval(show, 1000);
    }, warnInMs);
  }

  #clearExpiryWarning(): void {
    // Timeouts and intervals share one id space: clearTimeout ends either.
    if (this.#expiryTimer !== undefined) clearTimeout(this.#expiryTimer);
    this.#expiryTimer = undefined;
    this.#warningFor = undefined;
    this.#renewError = undefined;
  }

  #expiryText(expiresAt: number): string {
    const left = Math.max(0, Math.round(expiresAt - Date.now() / 1000));
    const refused = this.#renewError !== undefined ? `The new token was not accepted (${this.#renewError}). ` : "";
    return `${refused}The token expires in ${left} s and the session with it: paste a new token (\`wl-webrtc token\`) to continue, or reload the page with one.`;
  }

  #onSignal(text: string): void {
    let msg: { type?: string; role?: string; session?: string; message?: string; code?: string; sdp?: string; candidate?: RTCIceCandidateInit | null; ref?: string; iceServers?: RTCIceServer[]; expiresAt?: number };
    try {
      msg = JSON.parse(text) as typeof msg;
    } catch {
      return;
    }
    switch (msg.type) {
      case "welcome":
        mark("welcome");
        this.#welcomed = true;
        wl.role = msg.role;
        if (typeof msg.expiresAt === "number") this.#armExpiryWarning(msg.expiresAt);
        setStatus(`Connected as ${msg.role ?? "?"}; starting the stream…`, "info");
        void this.#startPeer(msg.role === "control", Array.isArray(msg.iceServers) ? msg.iceServers : []).catch((e: unknown) => this.fail("stream", `Could not start WebRTC in this browser: ${String(e)}`, true));
        break;
      case "answer":
        mark("answer");
        void this.#onAnswer(msg.sdp ?? "");
        break;
      case "candidate":
        if (msg.candidate === null || msg.candidate === undefined) return;
        if (this.#haveAnswer && this.pc) this.pc.addIceCandidate(msg.candidate).catch(() => undefined);
        else this.#pendingRemote.push(msg.candidate);
        break;
      case "renewed": {
        const r = msg as RenewedMessage;
        if (pendingToken !== undefined) sessionStorage.setItem(TOKEN_KEY, pendingToken);
        pendingToken = undefined;
        form.hidden = true;
        this.#armExpiryWarning(r.expiresAt);
        setStatus(`Token renewed: the session continues until ${new Date(r.expiresAt * 1000).toLocaleTimeString()}.`, "ok");
        break;
      }
      case "error": {
        const m = msg.message ?? "unknown";
        if (msg.ref === "token") {
          pendingToken = undefined;
          form.hidden = false;
          this.#renewError = m;
          setStatus(this.#warningFor !== undefined ? this.#expiryText(this.#warningFor) : `The new token was not accepted (${m}); the session goes on until its current token expires.`, "error");
        } else if (msg.ref === "offer" || msg.code === "unavailable") {
          if (/refused|cancel/i.test(m)) this.fail("refused", `Screen sharing was refused on the host (${m}). Someone at the host must allow it.`, true);
          else this.fail("stream", `The agent cannot stream: ${m}`, true);
        } else setStatus(`Agent error: ${m}`, "error");
        break;
      }
      case "bye":
        this.fail("closed", `The agent ended the session: ${String((msg as { reason?: string }).reason ?? "")}`, true);
        break;
    }
  }

  async #startPeer(control: boolean, iceServers: RTCIceServer[]): Promise<void> {
    // The agent's STUN/TURN servers (TURN with short-lived credentials of our own), so both ends gather
    // the same kinds of candidates.
    const relay = sessionStorage.getItem(ICE_POLICY_KEY) === "relay";
    if (relay && !iceServers.some((s) => [s.urls].flat().some((u) => /^turns?:/.test(u)))) {
      this.fail("ice", "This page asks for relayed connections only (#ice=relay), but the agent gives browsers no TURN server (it needs rtc.turn_servers and a shared secret: rtc.turn_secret_file or WL_WEBRTC_TURN_SECRET).", false);
      return;
    }
    const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle", iceServers, iceTransportPolicy: relay ? "relay" : "all" });
    this.pc = pc;
    wl.pc = pc;
    pc.addTransceiver("video", { direction: "recvonly" });
    const ch = pc.createDataChannel("control", { ordered: true });
    wl.control = ch;
    wl.controlMessages = [];
    ch.onmessage = (ev) => this.#onControl(String(ev.data));
    ch.onopen = () => this.#syncClock();
    if (control) {
      const inp = pc.createDataChannel("input", { ordered: true });
      wl.input = inp;
    } else wl.input = undefined;
    pc.oniceconnectionstatechange = () => mark(`ice-${pc.iceConnectionState}`);
    pc.ontrack = (ev) => {
      video.srcObject = ev.streams[0] ?? new MediaStream([ev.track]);
      void video.play().catch(() => undefined);
    };
    pc.onicecandidate = (ev) => this.#send({ type: "candidate", candidate: ev.candidate ? ev.candidate.toJSON() : null });
    pc.onconnectionstatechange = () => this.#onPcState();
    pc.onnegotiationneeded = () => undefined; // offers are made explicitly below (first one, ICE restart)
    await this.#offer(false);
    this.#timers.push(window.setInterval(() => void this.#pollStats(), 1000));
    this.#timers.push(window.setInterval(() => this.#syncClock(), 10_000));
    const onFrame = (_now: number, meta: VideoFrameCallbackMetadata & { rtpTimestamp?: number }): void => {
      if (this.#closed) return;
      mark("firstFrameShown");
      this.#noteFrame(meta);
      video.requestVideoFrameCallback(onFrame);
    };
    if ("requestVideoFrameCallback" in video) video.requestVideoFrameCallback(onFrame);
  }

  async #offer(iceRestart: boolean): Promise<void> {
    const pc = this.pc;
    if (!pc) return;
    this.#haveAnswer = false;
    const offer = await pc.createOffer({ iceRestart });
    await pc.setLocalDescription(offer);
    this.#send({ type: "offer", sdp: offer.sdp });
    mark("offerSent");
  }

  async #onAnswer(sdp: string): Promise<void> {
    const pc = this.pc;
    if (!pc) return;
    try {
      await pc.setRemoteDescription({ type: "answer", sdp });
      this.#haveAnswer = true;
      for (const c of this.#pendingRemote.splice(0)) await pc.addIceCandidate(c).catch(() => undefined);
    } catch (e) {
      this.fail("stream", `The agent's answer was not accepted: ${String(e)}`, true);
    }
  }

  #onPcState(): void {
    const pc = this.pc;
    if (!pc || this.#closed) return;
    const s = pc.connectionState;
    if (s === "connected") {
      mark("connected");
      wl.state = "streaming";
      wl.failure = undefined;
      backoffMs = 1000;
      this.#restarted = false;
      if (this.#iceTimer !== undefined) clearTimeout(this.#iceTimer);
      // The expiry warning, when it is up, stays: it asks the user for something.
      if (this.#warningFor !== undefined) setStatus(this.#expiryText(this.#warningFor), "error");
      else setStatus(`Streaming (${wl.role ?? "?"}).`, "ok");
    } else if (s === "disconnected") {
      setStatus("Connection interrupted; waiting for it to come back…", "info");
      this.#iceTimer = window.setTimeout(() => this.#onIceFailed(), 5000);
    } else if (s === "failed") this.#onIceFailed();
  }

  /** A new offer with new ICE credentials (also what #onIceFailed does once). */
  restartIce(): void {
    void this.#offer(true).catch(() => undefined);
  }

  #onIceFailed(): void {
    if (this.#closed || this.pc?.connectionState === "connected") return;
    if (!this.#restarted) {
      // One ICE restart: a new path may exist (network change). Then give up and reconnect.
      this.#restarted = true;
      setStatus("Network path lost; restarting ICE…", "info");
      void this.#offer(true).catch(() => undefined);
      this.#iceTimer = window.setTimeout(() => this.#onIceFailed(), 10_000);
      return;
    }
    this.fail("ice", "No network path to the agent (ICE failed): UDP may be blocked between here and the host; the agent may need STUN/TURN servers (rtc.stun_servers, rtc.turn_servers).", true);
  }

  #onControl(text: string): void {
    let m: { type?: string; stats?: AgentStats; t?: number; agentTimeMs?: number };
    try {
      m = JSON.parse(text) as typeof m;
    } catch {
      return;
    }
    if (wl.controlMessages.length < 200) wl.controlMessages.push(m);
    if (m.type === "stats" && m.stats) wl.agentStats = m.stats;
    else if (m.type === "cursor-mode") setCursorMode((m as Partial<CursorModeMessage>).mode);
    else if (m.type === "cursor") onCursor(m as unknown as CursorMessage);
    else if (m.type === "pong" && typeof m.t === "number" && typeof m.agentTimeMs === "number") {
      const now = Date.now();
      // NTP-style: the agent's clock minus ours, assuming a symmetric path.
      const offset = m.agentTimeMs - (m.t + now) / 2;
      wl.clockOffsetMs = wl.clockOffsetMs === undefined ? offset : 0.7 * wl.clockOffsetMs + 0.3 * offset;
    }
  }

  #syncClock(): void {
    const ch = wl.control;
    if (ch?.readyState === "open") ch.send(JSON.stringify({ type: "ping", t: Date.now() }));
  }

  /** End-to-end latency of a shown frame: its capture time (agent clock) to its display time. */
  #noteFrame(meta: VideoFrameCallbackMetadata & { rtpTimestamp?: number }): void {
    const clock = wl.agentStats?.clock;
    if (!clock || meta.rtpTimestamp === undefined || wl.clockOffsetMs === undefined) return;
    const dRtp = ((meta.rtpTimestamp - clock.rtpTimestamp) | 0) / 90;
    const captureAgentMs = clock.captureTimeMs + dRtp;
    const shownAgentMs = performance.timeOrigin + meta.expectedDisplayTime + wl.clockOffsetMs;
    const l = shownAgentMs - captureAgentMs;
    if (l > -1000 && l < 60_000) {
      this.#latency.push(l);
      if (this.#latency.length > 60) this.#latency.shift();
    }
  }

  async #pollStats(): Promise<void> {
    const pc = this.pc;
    if (!pc || this.#closed) return;
    const report = await pc.getStats();
    let inbound: Record<string, number> | undefined;
    let rtt: number | null = null;
    report.forEach((s: Record<string, unknown>) => {
      if (s.type === "inbound-rtp" && s.kind === "video") inbound = s as Record<string, number>;
      if (s.type === "candidate-pair" && s.nominated && typeof s.currentRoundTripTime === "number") rtt = s.currentRoundTripTime * 1000;
    });
    if (!inbound) return;
    const now = performance.now();
    const cur = { t: now, frames: inbound.framesDecoded ?? 0, bytes: inbound.bytesReceived ?? 0, decodeTime: inbound.totalDecodeTime ?? 0, decoded: inbound.framesDecoded ?? 0 };
    const prev = this.#prev;
    this.#prev = cur;
    if (!prev) return;
    const dt = (cur.t - prev.t) / 1000;
    const lost = inbound.packetsLost ?? 0, recv = inbound.packetsReceived ?? 0;
    const dFrames = cur.decoded - prev.decoded;
    const lat = this.#latency.length > 0 ? [...this.#latency].sort((a, b) => a - b)[Math.floor(this.#latency.length / 2)]! : null;
    wl.stats = {
      fps: Math.round((10 * (cur.frames - prev.frames)) / dt) / 10,
      bitrateBps: Math.round(((cur.bytes - prev.bytes) * 8) / dt),
      rttMs: rtt,
      lossPercent: recv + lost > 0 ? Math.round((1000 * lost) / (recv + lost)) / 10 : 0,
      decodeMs: dFrames > 0 ? Math.round((10000 * (cur.decodeTime - prev.decodeTime)) / dFrames) / 10 : null,
      latencyMs: lat === null ? null : Math.round(lat),
      framesDecoded: cur.frames,
      width: video.videoWidth,
      height: video.videoHeight,
    };
    const st = wl.stats;
    const a = wl.agentStats;
    statsEl.textContent = [
      `${st.width}×${st.height}  ${st.fps} fps`,
      `bitrate ${(st.bitrateBps / 1e6).toFixed(2)} Mbit/s${a ? ` (target ${(a.targetBitrateBps / 1e6).toFixed(2)})` : ""}`,
      `RTT ${st.rttMs === null ? "–" : `${Math.round(st.rttMs)} ms`}  loss ${st.lossPercent} %`,
      `decode ${st.decodeMs === null ? "–" : `${st.decodeMs} ms`}`,
      `latency ≈ ${st.latencyMs === null ? "–" : `${st.latencyMs} ms`} (capture → display)`,
      a ? `encoder ${a.backend}` : "",
    ].filter((l) => l !== "").join("\n");
  }

  /** Ends this attempt, says why, and schedules a reconnect with backoff when that can help. */
  fail(kind: Failure, text: string, retry: boolean): void {
    if (this.#closed) return;
    this.close();
    wl.state = "failed";
    wl.failure = kind;
    if (!retry) {
      setStatus(text, "error");
      return;
    }
    const wait = backoffMs;
    backoffMs = Math.min(30_000, backoffMs * 2);
    wl.retryInMs = wait;
    setStatus(`${text} Retrying in ${Math.round(wait / 1000)} s…`, "error");
    retryTimer = window.setTimeout(() => {
      retryTimer = undefined;
      wl.reconnects++;
      start(this.token);
    }, wait);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const t of this.#timers) clearInterval(t);
    if (this.#iceTimer !== undefined) clearTimeout(this.#iceTimer);
    this.#clearExpiryWarning();
    wl.expiresAt = undefined;
    try {
      if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: "bye", reason: "client closed" }));
      this.ws.close(1000);
    } catch {
      // already closed
    }
    this.pc?.close();
    video.srcObject = null;
    setCursorMode(undefined);
  }
}

function start(token: string): void {
  if (retryTimer !== undefined) clearTimeout(retryTimer);
  retryTimer = undefined;
  current?.close();
  setStatus("Connecting…");
  current = new Connection(token);
}

/** For tests and the console: drop the current connection (as a reload would) and connect again. */
(window as unknown as { wlReconnect: () => void }).wlReconnect = () => {
  const t = sessionStorage.getItem(TOKEN_KEY);
  if (t) start(t);
};
(window as unknown as { wlRestartIce: () => void }).wlRestartIce = () => current?.restartIce();
(window as unknown as { wlDisconnect: () => void }).wlDisconnect = () => {
  if (retryTimer !== undefined) clearTimeout(retryTimer);
  retryTimer = undefined;
  current?.close();
  current = undefined;
  wl.state = "idle";
};

form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const t = input.value.trim();
  if (t === "") return;
  input.value = "";
  if (current?.canRenew) {
    // Connected: continue this session with the new token instead of starting over.
    pendingToken = t;
    current.renew(t);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, t);
  form.hidden = true;
  backoffMs = 1000;
  start(t);
});

const initial = tokenFromFragment();
if (initial) start(initial);
else {
  form.hidden = false;
  setStatus("Paste a token to connect.");
}
