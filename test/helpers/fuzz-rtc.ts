import { readdirSync } from "node:fs";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { Socket as UdpSocket } from "node:dgram";
import { startRtcAgent } from "../rtc/fixture.js";
import { hello } from "./ws-client.js";
import { connectLoopbackViewer } from "./loopback-viewer.js";
import { Rng, mutate, rawMutation, staysOnLoopback } from "./fuzz.js";

/**
 * A fuzz run against a streaming agent (x264 source, werift) while a legitimate viewer streams and a
 * legitimate session pings: fuzzed offers (byte flips of a real offer, mutated JSON), candidates (all on
 * 127.0.0.1), pings and garbage, over many sessions. Shared by test/rtc/fuzz.test.ts and bench/fuzz.ts.
 */
export interface RtcFuzzFigures {
  messages: number;
  sessions: number;
  seconds: number;
  rssBaselineMb: number;
  rssPeakMb: number;
  rssAfterMb: number;
  heapBaselineMb: number;
  heapAfterMb: number;
  /** process.memoryUsage() after the run and a GC, MB: where RSS went (V8 heap committed, external buffers). */
  after: { heapTotalMb: number; externalMb: number; arrayBuffersMb: number };
  baseline: { heapTotalMb: number; externalMb: number; arrayBuffersMb: number };
  fdsBefore: number;
  fdsAfter: number;
  udpBefore: number;
  udpAfter: number;
  pingP99Ms: number;
  pingMaxMs: number;
  pings: number;
  /** The legit viewer's longest gap between two RTP packets during the run. */
  viewerMaxGapMs: number;
  viewerPackets: number;
  replies: Record<string, number>;
  internal: string[];
  viewersLeft: number;
}

export const FUZZ_OFFER = [
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

const bases: unknown[] = [
  { type: "ping", id: 1 },
  { type: "offer", id: 2, sdp: FUZZ_OFFER },
  { type: "candidate", candidate: { candidate: "candidate:1 1 udp 2122260223 127.0.0.1 9 typ host", sdpMid: "0", sdpMLineIndex: 0 } },
  { type: "candidate", candidate: null },
  { type: "answer", sdp: "v=0\r\n" },
];

const videoSection = FUZZ_OFFER.slice(FUZZ_OFFER.indexOf("m=video"), FUZZ_OFFER.indexOf("m=application"));
/** Offers that change the session's layout (renegotiations werift half-applied and whose transports it forgot). */
const VARIANTS = [
  FUZZ_OFFER,
  FUZZ_OFFER.replace("a=group:BUNDLE 0 1\r\n", ""),
  FUZZ_OFFER.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0"),
  FUZZ_OFFER.replace("a=mid:1", "a=mid:2").replace("BUNDLE 0 1", "BUNDLE 0 2"),
  FUZZ_OFFER.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 1 2") + videoSection.replace("a=mid:0", "a=mid:2"),
  FUZZ_OFFER + videoSection.replace("a=mid:0", "a=mid:3"),
];

/** Byte flips inside the SDP of an offer (what broke werift most), keeping the JSON valid. */
function flipOffer(rng: Rng): string {
  const a = [...VARIANTS[rng.nextInt(0, VARIANTS.length - 1)]!];
  const n = rng.nextInt(0, 3);
  for (let i = 0; i < n; i++) a[rng.nextInt(0, a.length - 1)] = String.fromCharCode(rng.nextInt(32, 126));
  return JSON.stringify({ type: "offer", id: rng.nextInt(0, 1e6), sdp: a.join("") });
}

function fuzzText(rng: Rng): string {
  const base = bases[rng.nextInt(0, bases.length - 1)];
  const kind = rng.nextInt(0, 9);
  let text: string;
  if (kind < 4) text = flipOffer(rng);
  else if (kind < 6) text = JSON.stringify(mutate(rng, base));
  else if (kind < 9) text = rawMutation(rng, JSON.stringify(base));
  else text = JSON.stringify(base);
  // Traffic stays home: nothing that names an address off loopback (or an mDNS name) is sent.
  return staysOnLoopback(text) ? text : JSON.stringify(base);
}

const udpSockets = (): number => (process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles().filter((h) => h instanceof UdpSocket).length;
const fds = (): number => readdirSync("/proc/self/fd").length;
const mb = (b: number): number => Math.round((b / 2 ** 20) * 10) / 10;

let gcFn: (() => void) | undefined;
/** A full GC, so that RSS and heap figures compare what is held, not what is garbage not yet collected. */
function gc(): void {
  if (!gcFn) {
    setFlagsFromString("--expose-gc");
    gcFn = runInNewContext("gc") as () => void;
  }
  gcFn();
}

async function settle(what: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!what() && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
}

export async function runRtcFuzz(opts: { messages: number; perSession: number; seed: number; log?: (s: string) => void }): Promise<RtcFuzzFigures> {
  const fx = await startRtcAgent({
    signaling: { messages_per_second: 100_000, message_burst: 100_000, max_bad_messages: 100_000, connections_per_second_per_address: 10_000, connection_burst_per_address: 10_000 },
  });
  const rng = new Rng(opts.seed);
  const replies: Record<string, number> = {};
  const internal: string[] = [];
  const pings: number[] = [];
  let pinger: NodeJS.Timeout | undefined;
  let rssTimer: NodeJS.Timeout | undefined;
  try {
    const token = await fx.token("control");
    const viewer = await connectLoopbackViewer(fx.wsUrl, await fx.token("view"));
    const legit = await hello(fx.wsUrl, token);
    if (!legit.welcome) throw new Error("legit session refused");
    // Warm-up: a few sessions of the same fuzz, so that the baseline holds what a running agent holds
    // anyway (JIT code, werift's module state, the source, the legit viewer).
    for (let i = 0; i < 3; i++) {
      const w = await hello(fx.wsUrl, token);
      for (let k = 0; k < 100; k++) w.client.send(fuzzText(rng));
      await new Promise((r) => setTimeout(r, 300));
      w.client.close();
    }
    await settle(() => fx.agent.rtc!.viewerCount === 1 && fx.agent.rtc!.releasingCount === 0, 10_000);
    await new Promise((r) => setTimeout(r, 500));
    gc();
    const rssBaseline = process.memoryUsage().rss;
    const heapBaseline = process.memoryUsage().heapUsed;
    const usage = (): RtcFuzzFigures["after"] => {
      const u = process.memoryUsage();
      return { heapTotalMb: mb(u.heapTotal), externalMb: mb(u.external), arrayBuffersMb: mb(u.arrayBuffers) };
    };
    const baseline = usage();
    const fdsBefore = fds();
    const udpBefore = udpSockets();
    let rssPeak = rssBaseline;
    rssTimer = setInterval(() => (rssPeak = Math.max(rssPeak, process.memoryUsage().rss)), 100);

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
    const packetsAtStart = viewer.packets.length;
    const t0 = performance.now();
    let sent = 0;
    let sessions = 0;
    while (sent < opts.messages) {
      const s = await hello(fx.wsUrl, token);
      if (!s.welcome) throw new Error(`fuzz session refused: ${JSON.stringify(s.closed)}`);
      sessions++;
      const n = Math.min(opts.perSession, opts.messages - sent);
      for (let i = 0; i < n; i++) {
        s.client.send(fuzzText(rng));
        // Let the agent and the legit session breathe: a token holder's messages arrive over a socket, not all at once.
        if (i % 50 === 49) await new Promise((r) => setImmediate(r));
      }
      sent += n;
      await new Promise((r) => setTimeout(r, 200));
      for (const m of s.client.messages) {
        const key = `${String(m.type)}${m.code !== undefined ? `:${String(m.code)}` : ""}`;
        replies[key] = (replies[key] ?? 0) + 1;
        if (m.code === "internal") internal.push(String(m.message).slice(0, 200));
      }
      s.client.close();
      if (sessions % 10 === 0) opts.log?.(`${sent} messages, ${sessions} sessions, RSS ${mb(process.memoryUsage().rss)} MB, viewers ${fx.agent.rtc!.viewerCount}`);
    }
    const seconds = (performance.now() - t0) / 1000;
    clearInterval(pinger);
    // Settle: every fuzz session closed, every refused viewer released.
    await settle(() => fx.agent.signaling.connectionCount === 1 + 1 && fx.agent.rtc!.viewerCount === 1 && fx.agent.rtc!.releasingCount === 0, 15_000);
    await new Promise((r) => setTimeout(r, 1000));
    clearInterval(rssTimer);
    gc();
    const during = viewer.packets.slice(packetsAtStart);
    let gap = 0;
    for (let i = 1; i < during.length; i++) gap = Math.max(gap, during[i]!.at - during[i - 1]!.at);
    const sorted = [...pings].sort((a, b) => a - b);
    const figures: RtcFuzzFigures = {
      messages: sent,
      sessions,
      seconds: Math.round(seconds * 10) / 10,
      rssBaselineMb: mb(rssBaseline),
      rssPeakMb: mb(rssPeak),
      rssAfterMb: mb(process.memoryUsage().rss),
      heapBaselineMb: mb(heapBaseline),
      heapAfterMb: mb(process.memoryUsage().heapUsed),
      after: usage(),
      baseline,
      fdsBefore,
      fdsAfter: fds(),
      udpBefore,
      udpAfter: udpSockets(),
      pingP99Ms: Math.round(sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.99))] ?? NaN),
      pingMaxMs: Math.round(sorted[sorted.length - 1] ?? NaN),
      pings: pings.length,
      viewerMaxGapMs: Math.round(gap),
      viewerPackets: during.length,
      replies,
      internal,
      viewersLeft: fx.agent.rtc!.viewerCount,
    };
    legit.client.close();
    await viewer.close();
    return figures;
  } finally {
    if (pinger) clearInterval(pinger);
    if (rssTimer) clearInterval(rssTimer);
    await fx.close();
  }
}
