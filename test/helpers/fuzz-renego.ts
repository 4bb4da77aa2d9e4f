import { readFileSync } from "node:fs";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { Socket as UdpSocket } from "node:dgram";
import { startRtcAgent } from "../rtc/fixture.js";
import { hello, type TestClient } from "./ws-client.js";
import { Rng, staysOnLoopback } from "./fuzz.js";

/**
 * What a hostile token holder can do with offers alone: many sessions at once, each sending a valid first
 * offer twice (racing first offers), then, without waiting for answers, offers that change the layout
 * (BUNDLE group dropped or changed, mids renamed, m-sections added), byte-flipped offers and loopback
 * candidates, then leaving. Measures the agent's RSS and JS heap (baseline, peak, after a settle and full
 * GCs), its UDP sockets and a legitimate session's ping round trips.
 */
export const RENEGO_OFFER = [
  "v=0", "o=- 55787041 0 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=group:BUNDLE 0 1", "a=msid-semantic:WMS *",
  "m=video 9 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 0.0.0.0", "a=ice-ufrag:2efe", "a=ice-pwd:2351235b852d91de646578", "a=ice-options:trickle",
  "a=fingerprint:sha-256 26:38:A4:81:4E:64:11:68:ED:82:2A:59:69:1B:2F:C5:90:68:91:94:D2:8B:55:F6:0C:9E:99:7F:CD:EE:FD:EF",
  "a=setup:actpass", "a=recvonly", "a=mid:0", "a=rtcp-mux", "a=rtpmap:96 H264/90000", "a=rtcp-fb:96 nack", "a=rtcp-fb:96 nack pli",
  "a=fmtp:96 profile-level-id=42e01f;packetization-mode=1;level-asymmetry-allowed=1", "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
  "a=candidate:1 1 udp 2122260223 127.0.0.1 9 typ host",
  "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "c=IN IP4 0.0.0.0", "a=ice-ufrag:2efe", "a=ice-pwd:2351235b852d91de646578",
  "a=fingerprint:sha-256 26:38:A4:81:4E:64:11:68:ED:82:2A:59:69:1B:2F:C5:90:68:91:94:D2:8B:55:F6:0C:9E:99:7F:CD:EE:FD:EF",
  "a=setup:actpass", "a=mid:1", "a=sctp-port:5000", "a=max-message-size:65536", "",
].join("\r\n");

const video = RENEGO_OFFER.slice(RENEGO_OFFER.indexOf("m=video"), RENEGO_OFFER.indexOf("m=application"));
const app = RENEGO_OFFER.slice(RENEGO_OFFER.indexOf("m=application"));
/** Each a new ICE credential so that werift sees a restart, and a layout change. */
function layout(rng: Rng, k: number): string {
  const creds = (s: string): string => s.replaceAll("a=ice-ufrag:2efe", `a=ice-ufrag:u${k.toString(16)}x`).replaceAll("a=ice-pwd:2351235b852d91de646578", `a=ice-pwd:${k.toString(16).padStart(8, "0")}2351235b852d91de6465`);
  const m = rng.nextInt(0, 5);
  const mids = [rng.nextInt(2, 40), rng.nextInt(41, 80), rng.nextInt(81, 120)];
  let sdp: string;
  if (m === 0) sdp = RENEGO_OFFER.replace("a=group:BUNDLE 0 1\r\n", "");
  else if (m === 1) sdp = RENEGO_OFFER.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0");
  else if (m === 2) sdp = RENEGO_OFFER.replace("a=mid:1", `a=mid:${mids[0]}`).replace("BUNDLE 0 1", `BUNDLE 0 ${mids[0]}`);
  else if (m === 3) sdp = RENEGO_OFFER.replace("a=group:BUNDLE 0 1", `a=group:BUNDLE 0 1 ${mids[0]}`) + video.replace("a=mid:0", `a=mid:${mids[0]}`);
  else if (m === 4) sdp = RENEGO_OFFER.replace("a=group:BUNDLE 0 1\r\n", "") + video.replace("a=mid:0", `a=mid:${mids[0]}`) + video.replace("a=mid:0", `a=mid:${mids[1]}`);
  else sdp = RENEGO_OFFER.replace("a=group:BUNDLE 0 1", `a=group:BUNDLE ${mids[0]} ${mids[1]}`).replace("a=mid:0", `a=mid:${mids[0]}`).replace("a=mid:1", `a=mid:${mids[1]}`) + app.replace("a=mid:1", `a=mid:${mids[2]}`);
  return creds(sdp);
}

function flip(rng: Rng, sdp: string): string {
  const a = [...sdp];
  const n = rng.nextInt(1, 3);
  for (let i = 0; i < n; i++) a[rng.nextInt(0, a.length - 1)] = String.fromCharCode(rng.nextInt(32, 126));
  return a.join("");
}

/** One hostile session's messages: two racing first offers, then layout changes, flips and candidates. */
export function hostileMessages(rng: Rng, offers: number): string[] {
  const out: string[] = [];
  let id = 0;
  const offer = (sdp: string): void => {
    const text = JSON.stringify({ type: "offer", id: ++id, sdp });
    // Traffic stays home: an offer that names an address off loopback is replaced by the valid one.
    out.push(staysOnLoopback(text) ? text : JSON.stringify({ type: "offer", id, sdp: RENEGO_OFFER }));
  };
  offer(RENEGO_OFFER);
  offer(RENEGO_OFFER);
  for (let k = 0; k < offers; k++) {
    const r = rng.nextInt(0, 9);
    if (r < 6) offer(layout(rng, k + 1));
    else if (r < 8) offer(flip(rng, layout(rng, k + 1)));
    else if (r < 9) offer(RENEGO_OFFER);
    else out.push(JSON.stringify({ type: "candidate", candidate: { candidate: `candidate:${k} 1 udp 2122260223 127.0.0.1 ${rng.nextInt(1024, 65535)} typ host`, sdpMid: "0", sdpMLineIndex: 0 } }));
  }
  return out;
}

export interface RenegoFigures {
  sessions: number;
  messages: number;
  seconds: number;
  rssBaselineMb: number;
  rssPeakMb: number;
  rssAfterMb: number;
  heapBaselineMb: number;
  heapPeakMb: number;
  heapAfterMb: number;
  /** process.memoryUsage() at the baseline and after, MB: where RSS went (V8 heap committed, external buffers). */
  baseline: { heapTotalMb: number; externalMb: number; arrayBuffersMb: number };
  after: { heapTotalMb: number; externalMb: number; arrayBuffersMb: number };
  udpBefore: number;
  udpPeak: number;
  udpAfter: number;
  viewersAfter: number;
  pingP99Ms: number;
  pingMaxMs: number;
  pings: number;
  replies: Record<string, number>;
}

const udpSockets = (): number => (process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles().filter((h) => h instanceof UdpSocket).length;
/** RSS by kind of mapping (MB): the brk heap and anonymous maps (malloc, V8), files (code). */
export function rssByKind(): Record<string, number> {
  const out: Record<string, number> = {};
  let kind = "";
  for (const line of readFileSync("/proc/self/smaps", "utf8").split("\n")) {
    const head = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (head) kind = head[1] === "" ? "anon" : head[1]!.startsWith("/") ? "file" : head[1]!;
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (rss) out[kind] = (out[kind] ?? 0) + Number(rss[1]) / 1024;
  }
  for (const k of Object.keys(out)) out[k] = Math.round(out[k]! * 10) / 10;
  return out;
}
const mb = (b: number): number => Math.round((b / 2 ** 20) * 10) / 10;
let gcFn: (() => void) | undefined;
function gc(): void {
  if (!gcFn) {
    setFlagsFromString("--expose-gc");
    gcFn = runInNewContext("gc") as () => void;
  }
  gcFn();
}
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export async function runRenegoFuzz(opts: { sessions: number; concurrency: number; offersPerSession: number; seed: number; afterS?: number; log?: (s: string) => void }): Promise<RenegoFigures> {
  const fx = await startRtcAgent(
    { signaling: { messages_per_second: 100_000, message_burst: 100_000, max_bad_messages: 100_000, connections_per_second_per_address: 10_000, connection_burst_per_address: 10_000 } },
    { width: 1280, height: 720, fps: 30, bitrateKbps: 6000 },
  );
  const rng = new Rng(opts.seed);
  const replies: Record<string, number> = {};
  const pings: number[] = [];
  let pinger: NodeJS.Timeout | undefined;
  let sampler: NodeJS.Timeout | undefined;
  try {
    const token = await fx.token("control");
    const legit = await hello(fx.wsUrl, token);
    if (!legit.welcome) throw new Error("legit session refused");
    // Warm-up: one hostile session, so that the baseline holds the open source and werift's module state.
    {
      const w = await hello(fx.wsUrl, token);
      for (const t of hostileMessages(rng, 3)) w.client.send(t);
      await sleep(1500);
      w.client.close();
      await sleep(1500);
    }
    gc();
    await sleep(200);
    gc();
    const base = process.memoryUsage();
    const udpBefore = udpSockets();
    opts.log?.(`baseline RSS by mapping: ${JSON.stringify(rssByKind())}`);
    let rssPeak = base.rss;
    let heapPeak = base.heapUsed;
    let udpPeak = udpBefore;
    sampler = setInterval(() => {
      const u = process.memoryUsage();
      rssPeak = Math.max(rssPeak, u.rss);
      heapPeak = Math.max(heapPeak, u.heapUsed);
      udpPeak = Math.max(udpPeak, udpSockets());
    }, 100);
    const sentAt = new Map<number, number>();
    let pingId = 0;
    legit.client.ws.on("message", (d) => {
      const m = JSON.parse(String(d)) as { type: string; id?: number };
      if (m.type === "pong" && m.id !== undefined && sentAt.has(m.id)) pings.push(performance.now() - sentAt.get(m.id)!);
    });
    pinger = setInterval(() => {
      sentAt.set(++pingId, performance.now());
      legit.client.send({ type: "ping", id: pingId });
    }, 50);
    const t0 = performance.now();
    let messages = 0;
    let started = 0;
    const one = async (): Promise<void> => {
      // At the session cap or the budget of connections before hello (HTTP 503 for the upgrade, or a close
      // after hello; closed sessions leave them a moment later): try again, as an attacker would.
      const attempt = (): ReturnType<typeof hello> => hello(fx.wsUrl, token).catch((err: unknown) => {
        if (!/HTTP 503/.test(String(err))) throw err;
        return { client: undefined as unknown as TestClient, closed: { code: 503, reason: String(err) } };
      });
      let s = await attempt();
      for (let i = 0; !s.welcome && [503, 4503, 4408].includes(s.closed?.code ?? 0) && i < 100; i++) {
        await sleep(100);
        s = await attempt();
      }
      if (!s.welcome) throw new Error(`hostile session refused: ${JSON.stringify(s.closed)}`);
      const client: TestClient = s.client;
      const msgs = hostileMessages(rng, opts.offersPerSession);
      for (const t of msgs) client.send(t);
      messages += msgs.length;
      // Long enough for werift to start gathering and answer some of them; then the session goes.
      await sleep(rng.nextInt(100, 600));
      for (const m of client.messages) {
        const key = `${String(m.type)}${m.code !== undefined ? `:${String(m.code)}` : ""}`;
        replies[key] = (replies[key] ?? 0) + 1;
      }
      client.close();
    };
    const worker = async (): Promise<void> => {
      while (started < opts.sessions) {
        started++;
        await one();
        if (started % 50 === 0) opts.log?.(`${started} sessions, RSS ${mb(process.memoryUsage().rss)} MB, heap ${mb(process.memoryUsage().heapUsed)} MB, UDP ${udpSockets()}, viewers ${fx.agent.rtc!.viewerCount}`);
      }
    };
    await Promise.all(Array.from({ length: opts.concurrency }, () => worker()));
    const seconds = (performance.now() - t0) / 1000;
    clearInterval(pinger);
    // After: as issue 11 measured, some seconds after the run, with full GCs.
    const end = Date.now() + (opts.afterS ?? 12) * 1000;
    while (Date.now() < end) {
      await sleep(1000);
      gc();
    }
    clearInterval(sampler);
    gc();
    const after = process.memoryUsage();
    opts.log?.(`after RSS by mapping: ${JSON.stringify(rssByKind())}`);
    const sorted = [...pings].sort((a, b) => a - b);
    const figures: RenegoFigures = {
      sessions: started,
      messages,
      seconds: Math.round(seconds * 10) / 10,
      rssBaselineMb: mb(base.rss),
      rssPeakMb: mb(rssPeak),
      rssAfterMb: mb(after.rss),
      heapBaselineMb: mb(base.heapUsed),
      heapPeakMb: mb(heapPeak),
      heapAfterMb: mb(after.heapUsed),
      baseline: { heapTotalMb: mb(base.heapTotal), externalMb: mb(base.external), arrayBuffersMb: mb(base.arrayBuffers) },
      after: { heapTotalMb: mb(after.heapTotal), externalMb: mb(after.external), arrayBuffersMb: mb(after.arrayBuffers) },
      udpBefore,
      udpPeak,
      udpAfter: udpSockets(),
      viewersAfter: fx.agent.rtc!.viewerCount,
      pingP99Ms: Math.round(sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.99))] ?? NaN),
      pingMaxMs: Math.round(sorted[sorted.length - 1] ?? NaN),
      pings: pings.length,
      replies,
    };
    legit.client.close();
    return figures;
  } finally {
    if (pinger) clearInterval(pinger);
    if (sampler) clearInterval(sampler);
    await fx.close();
  }
}
