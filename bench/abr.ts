/**
 * Adaptive bitrate on a real shaped link. The agent (this process: its own headless desktop, native
 * capture and x264) sends to headless Chromium in a network namespace; the veth towards the browser is
 * limited by tbf (bounded queue) and the limit changes at run time:
 *   unshaped (start at 8 Mbit/s) -> 5 Mbit/s -> 2 Mbit/s -> raised to 5 Mbit/s.
 *   node dist/bench/abr.js [width, default 1280] [height, default 720] [tbf queue ms, default 100]
 * Content: foot printing random text, so the encoder can fill any bitrate.
 * For each lowered limit: time until the send rate (1 s window, on the wire) stays under the limit
 * (target <= 3 s), and the link's loss after that (tbf drops, target < 1 %). For the raised limit: time
 * until the send rate reaches 90 % of it (target <= 5 s). Next to them, what the send window
 * (ViewerPacer) held after settling (from 5 s into each phase): share of packets held, mean / p95 / max
 * wait over all packets (aim: mean <= 5 ms, p95 <= 20 ms), for all holds and for the 1 s window's alone
 * (`hold`, `windowHold`, a `summary:` line). Last line: one JSON object.
 */
import { readFileSync } from "node:fs";
import { startTestAgent } from "../test/helpers/agent.js";
import { BUSY_TERMINAL, NetLink, viewerSample } from "../test/helpers/netns.js";
import { TestBrowser } from "../test/helpers/browser.js";
import { ViewerPacer } from "../agent/rtc/pacer.js";

const width = Number(process.argv[2] ?? 1280);
const height = Number(process.argv[3] ?? 720);
const queueMs = Number(process.argv[4] ?? 100);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const round = (x: number, d = 2): number => Math.round(x * 10 ** d) / 10 ** d;

const link = await NetLink.create();
const t = await startTestAgent({
  server: { host: link.hostAddr },
  desktop: { mode: "headless", width, height, refresh_hz: 30 },
  metrics: { enabled: false },
  rtc: { ice_host_addresses: [link.hostAddr], start_bitrate_bps: 8_000_000, max_bitrate_bps: 8_000_000 },
});
const term = await t.agent.desktop!.headless!.spawnClient("foot", BUSY_TERMINAL, { name: "busy" });
const browser = await TestBrowser.launch({ link });
const txBytes = (): number => Number(readFileSync(`/sys/class/net/${link.hostIf}/statistics/tx_bytes`, "utf8"));

interface Sample { held: number; sentQ: number; waitSum: number; windowHeld: number; hist: number[]; whist: number[]; pushback: number; skipped: number; t: number; payload: number; target: number; enc: number; cap: number; qd: number; kf: number; tbfSent: number; tbfDropped: number; tbfBytes: number; tbfBacklog: number }
const results: Record<string, unknown> = {};
try {
  const { token } = await t.agent.tokens.mint({ role: "view", ttlS: 600, subject: "bench" });
  const page = await browser.context.newPage();
  await page.goto(`http://${link.hostAddr}:${new URL(t.httpUrl).port}/#token=${token}`);
  for (let i = 0; (((await viewerSample(page)).video.framesDecoded ?? 0) < 10); i++) {
    if (i > 150) throw new Error("no video within 30 s");
    await sleep(200);
  }
  const pair = await viewerSample(page);
  if (pair.local !== link.nsAddr) throw new Error(`the media path does not cross the link: ${pair.local} -> ${pair.remote}`);
  const peer = t.agent.rtc!.viewers[0]!;
  const src = t.agent.rtc!.source!;

  // Unshaped warm-up; it also measures the wire overhead (RTP, SRTP, UDP, IP, Ethernet, RTCP, resends)
  // as the ratio of the veth's bytes to the agent's media payload bytes.
  await sleep(3000);
  const w0 = { tx: txBytes(), p: peer.counters.bytesSent };
  await sleep(4000);
  const overhead = (txBytes() - w0.tx) / (peer.counters.bytesSent - w0.p);
  const unshapedMbps = ((txBytes() - w0.tx) * 8) / 4 / 1e6;
  results.overhead = round(overhead, 3);
  results.unshapedMbps = round(unshapedMbps);
  console.log(`unshaped: ${round(unshapedMbps)} Mbit/s on the wire, target ${round(peer.abr.target / 1e6)} Mbit/s, wire/payload ${round(overhead, 3)}`);

  const sample = async (): Promise<Sample> => {
    const q = await link.qdiscStats("down");
    // Resends count as sent: under congestion they are a large part of what the link is offered.
    const pc = peer.pacerCounters;
    return { held: pc.held, sentQ: pc.sent, waitSum: pc.waitMsSum, windowHeld: pc.windowHeld, hist: [...pc.holdHist], whist: [...pc.windowHist], pushback: peer.abr.pushback, skipped: peer.counters.framesHeldTooLong, t: performance.now(), payload: peer.counters.bytesSent + peer.counters.bytesRetransmitted, target: peer.abr.target, enc: src.targetBitrate, cap: peer.abr.capacityBps ?? 0, qd: peer.abr.queueingDelayMs, kf: peer.counters.keyframesSent, tbfSent: q.sentPackets, tbfDropped: q.dropped, tbfBytes: q.sentBytes, tbfBacklog: q.backlogBytes };
  };
  /**
   * Send rate over the last second ending at sample i, bit/s, as offered to the link: what the tbf sent,
   * plus what it dropped (at the window's mean packet size), plus the growth of its queue. Measured at
   * the link, so a sender slowed down by the CPU is not counted as sending.
   */
  const rateAt = (s: Sample[], i: number): number | undefined => {
    let j = i;
    while (j > 0 && s[i]!.t - s[j]!.t < 1000) j--;
    if (s[i]!.t - s[j]!.t < 900) return undefined;
    const a = s[j]!, b = s[i]!;
    const pkts = b.tbfSent - a.tbfSent, bytes = b.tbfBytes - a.tbfBytes;
    const offered = bytes + (b.tbfDropped - a.tbfDropped) * (pkts > 0 ? bytes / pkts : 1200) + (b.tbfBacklog - a.tbfBacklog);
    return (offered * 8) / ((b.t - a.t) / 1000);
  };
  /** The agent's own send rate (media + resends handed to werift, with wire overhead), bit/s. */
  const agentRateAt = (s: Sample[], i: number): number => {
    let j = i;
    while (j > 0 && s[i]!.t - s[j]!.t < 1000) j--;
    return ((s[i]!.payload - s[j]!.payload) * 8 * overhead) / Math.max(0.001, (s[i]!.t - s[j]!.t) / 1000);
  };
  const phase = async (limitKbit: number, seconds: number): Promise<{ s: Sample[]; lost0: number; recv0: number; lost1: number; recv1: number }> => {
    const b0 = (await viewerSample(page)).video;
    await link.shape("down", { rateKbit: limitKbit, latencyMs: queueMs });
    const s: Sample[] = [await sample()];
    const end = s[0]!.t + seconds * 1000;
    while (performance.now() < end) {
      await sleep(250);
      s.push(await sample());
    }
    const b1 = (await viewerSample(page)).video;
    return { s, lost0: b0.packetsLost ?? 0, recv0: b0.packetsReceived ?? 0, lost1: b1.packetsLost ?? 0, recv1: b1.packetsReceived ?? 0 };
  };

  /**
   * The send window's cost over a phase, its first 5 s (settling) and the rest (after settling) apart:
   * packets held (% of those sent through the window), the wait over all of them (mean, 95th percentile,
   * longest; 0 for those not held), the mean wait of the held ones; the same for the holds of the 1 s
   * window alone (`Window...`: the burst limit's wait is the bottleneck queue's, moved to the sender;
   * the 1 s window's is latency added while the path could carry the packet); frames skipped to a
   * keyframe, and the lowest pushback ratio.
   */
  const pacerStats = (s: Sample[]): Record<string, number> => {
    const part = (a: Sample, b: Sample, prefix: string): Record<string, number> => {
      const held = b.held - a.held;
      const h = ViewerPacer.holdStats(a.hist, b.hist), w = ViewerPacer.holdStats(a.whist, b.whist);
      return {
        [`${prefix}HeldPercent`]: round(h.heldPercent, 1), [`${prefix}MeanHoldMs`]: round(h.meanMs, 1), [`${prefix}P95HoldMs`]: h.p95Ms, [`${prefix}MaxHoldMs`]: h.maxMs,
        [`${prefix}MeanOfHeldMs`]: round((b.waitSum - a.waitSum) / Math.max(1, held), 1), [`${prefix}WindowHeldPercent`]: round(w.heldPercent, 1), [`${prefix}WindowMeanHoldMs`]: round(w.meanMs, 1), [`${prefix}WindowP95HoldMs`]: w.p95Ms, [`${prefix}WindowMaxHoldMs`]: w.maxMs,
        [`${prefix}Skipped`]: b.skipped - a.skipped,
        [`${prefix}MinPushback`]: round(Math.min(...s.filter((x) => x.t >= a.t && x.t <= b.t).map((x) => x.pushback)), 2),
      };
    };
    const k = Math.max(0, s.findIndex((x) => x.t - s[0]!.t >= 5000));
    return { ...part(s[0]!, s[k]!, "first5s"), ...part(s[k]!, s[s.length - 1]!, "later") };
  };
  const lowered = async (name: string, limitKbit: number, seconds: number): Promise<void> => {
    const { s, lost0, recv0, lost1, recv1 } = await phase(limitKbit, seconds);
    const limit = limitKbit * 1000;
    // Settled: from this sample on, every 1 s window is under the limit.
    let settledIdx: number | undefined;
    for (let i = s.length - 1; i >= 0; i--) {
      const r = rateAt(s, i);
      if (r === undefined || r > limit) break;
      settledIdx = i;
    }
    // Reported at the start of the first 1 s window that is under the limit (and all later ones are).
    const settleS = settledIdx === undefined ? null : round((s[settledIdx]!.t - 1000 - s[0]!.t) / 1000, 2);
    // Softer view of the same: the first 1 s window under the limit, and how often later windows were over
    // it (an upward probe overshooting into the link's queue).
    const firstIdx = s.findIndex((_, i) => (rateAt(s, i) ?? Infinity) <= limit);
    const later = s.map((_, i) => rateAt(s, i)).slice(firstIdx < 0 ? s.length : firstIdx).filter((x): x is number => x !== undefined);
    const from = s[settledIdx ?? s.length - 1]!, last = s[s.length - 1]!;
    const sent = last.tbfSent - from.tbfSent, dropped = last.tbfDropped - from.tbfDropped;
    const allDropped = last.tbfDropped - s[0]!.tbfDropped;
    const tail = s.slice(-8);
    const r = {
      limitMbps: limitKbit / 1000,
      settleS: settleS === null ? null : Math.max(0, settleS),
      firstUnderS: firstIdx < 0 ? null : round(Math.max(0, (s[firstIdx]!.t - 1000 - s[0]!.t) / 1000)),
      windowsOverLimitAfterPercent: round((100 * later.filter((x) => x > limit).length) / Math.max(1, later.length), 1),
      peakOverLimitPercent: round(100 * (Math.max(...later, 0) / limit - 1), 1),
      lossAfterSettlePercent: round((100 * dropped) / Math.max(1, sent + dropped), 2),
      lossAfterFirstUnderPercent: (() => {
        const f = s[firstIdx < 0 ? s.length - 1 : firstIdx]!;
        const se = last.tbfSent - f.tbfSent, dr = last.tbfDropped - f.tbfDropped;
        return round((100 * dr) / Math.max(1, se + dr), 2);
      })(),
      droppedBeforeSettle: allDropped - dropped,
      lostAtBrowserAfterNack: lost1 - lost0,
      packetsAtBrowser: recv1 - recv0,
      steadyMbps: round((rateAt(s, s.length - 1) ?? 0) / 1e6),
      steadyTargetMbps: round(tail.reduce((a, x) => a + x.target, 0) / tail.length / 1e6),
      rateTrace: s.filter((_, i) => i % 4 === 0).map((_, k) => round((rateAt(s, k * 4) ?? 0) / 1e6, 1)).join(" "),
      targetTrace: s.filter((_, i) => i % 4 === 0).map((x) => round(x.target / 1e6, 1)).join(" "),
      agentRateTrace: s.filter((_, i) => i % 4 === 0).map((_, k) => round(agentRateAt(s, k * 4) / 1e6, 1)).join(" "),
      capacityTrace: s.filter((_, i) => i % 4 === 0).map((x) => round(x.cap / 1e6, 1)).join(" "),
      queueMsTrace: s.filter((_, i) => i % 4 === 0).map((x) => Math.round(x.qd)).join(" "),
      pushbackTrace: s.filter((_, i) => i % 4 === 0).map((x) => round(x.pushback)).join(" "),
      // The first 4 s at full resolution (250 ms): target/encoder target Mbit/s, queueing delay ms, tbf drops.
      headTrace: s.slice(1, 17).map((x, k) => `${round(x.target / 1e6, 1)}/${round(x.enc / 1e6, 1)}/${Math.round(x.qd)}/${x.tbfDropped - s[k]!.tbfDropped}`).join(" "),
      keyframes: s[s.length - 1]!.kf - s[0]!.kf,
      dropTrace: s.filter((_, i) => i % 4 === 0 && i > 0).map((x, k) => x.tbfDropped - s[k * 4]!.tbfDropped).join(" "),
      pacer: pacerStats(s),
    };
    results[name] = r;
    console.log(`${name}: ${JSON.stringify(r)}`);
  };

  await lowered("limit5", 5000, 15);
  await lowered("limit2", 2000, 15);

  const { s } = await phase(5000, 25);
  let reachIdx: number | undefined;
  for (let i = 0; i < s.length; i++) if ((rateAt(s, i) ?? 0) >= 0.9 * 5e6) { reachIdx = i; break; }
  const tgtIdx = s.findIndex((x) => x.target >= 0.9 * 5e6);
  const raised = {
    fromMbps: 2, toMbps: 5,
    climbS: reachIdx === undefined ? null : round((s[reachIdx]!.t - s[0]!.t) / 1000, 2),
    targetClimbS: tgtIdx < 0 ? null : round((s[tgtIdx]!.t - s[0]!.t) / 1000, 2),
    endMbps: round((rateAt(s, s.length - 1) ?? 0) / 1e6),
    rateTrace: s.filter((_, i) => i % 4 === 0).map((_, k) => round((rateAt(s, k * 4) ?? 0) / 1e6, 1)).join(" "),
    targetTrace: s.filter((_, i) => i % 4 === 0).map((x) => round(x.target / 1e6, 1)).join(" "),
    capacityTrace: s.filter((_, i) => i % 4 === 0).map((x) => round(x.cap / 1e6, 1)).join(" "),
    queueMsTrace: s.filter((_, i) => i % 4 === 0).map((x) => Math.round(x.qd)).join(" "),
    pushbackTrace: s.filter((_, i) => i % 4 === 0).map((x) => round(x.pushback)).join(" "),
    keyframes: s[s.length - 1]!.kf - s[0]!.kf,
    pacer: pacerStats(s),
    fineTrace: s.map((x) => `${round(x.target / 1e6, 1)}/${Math.round(x.qd)}/${x.kf - s[0]!.kf}`).join(" "),
  };
  results.raise2to5 = raised;
  console.log(`raise2to5: ${JSON.stringify(raised)}`);
  await page.close();
} finally {
  await browser.close();
  term.kill("SIGTERM");
  await t.close();
  await link.close();
}
type Held = { pacer: Record<string, number> };
const l5 = results.limit5 as { settleS: number | null; lossAfterSettlePercent: number } & Held;
const l2 = results.limit2 as { settleS: number | null; lossAfterSettlePercent: number } & Held;
const up = results.raise2to5 as { climbS: number | null } & Held;
results.resolution = `${width}x${height}@30`;
results.queueMs = queueMs;
/** The send window after settling (from 5 s into a phase): what it adds to every packet's latency. */
const hold = (r: Held | undefined, w = ""): { heldPercent: number; meanMs: number; p95Ms: number; maxMs: number } | undefined =>
  r && { heldPercent: r.pacer[`later${w}HeldPercent`]!, meanMs: r.pacer[`later${w}MeanHoldMs`]!, p95Ms: r.pacer[`later${w}P95HoldMs`]!, maxMs: r.pacer[`later${w}MaxHoldMs`]! };
/** The aim: mean <= 5 ms, p95 <= 20 ms over all packets after settling (all holds, burst limit included). */
const holdMet = (r: Held | undefined, w = ""): boolean => r !== undefined && r.pacer[`later${w}MeanHoldMs`]! <= 5 && r.pacer[`later${w}P95HoldMs`]! <= 20;
results.hold = { limit5: hold(l5), limit2: hold(l2), raise2to5: hold(up) };
results.windowHold = { limit5: hold(l5, "Window"), limit2: hold(l2, "Window"), raise2to5: hold(up, "Window") };
results.targets = {
  settleS: 3, lossPercent: 1, climbS: 5, holdMeanMs: 5, holdP95Ms: 20,
  met: {
    settle5: l5?.settleS !== null && l5.settleS <= 3, settle2: l2?.settleS !== null && l2.settleS <= 3,
    loss5: l5?.lossAfterSettlePercent < 1, loss2: l2?.lossAfterSettlePercent < 1, climb: up?.climbS !== null && up.climbS <= 5,
    hold5: holdMet(l5), hold2: holdMet(l2), holdRaised: holdMet(up),
    windowHold5: holdMet(l5, "Window"), windowHold2: holdMet(l2, "Window"), windowHoldRaised: holdMet(up, "Window"),
  },
};
const fmtHold = (h: ReturnType<typeof hold>): string => (h ? `${h.heldPercent} % held, mean ${h.meanMs} / p95 ${h.p95Ms} / max ${h.maxMs} ms` : "-");
console.log(`summary: settle 5 ${l5?.settleS} s, settle 2 ${l2?.settleS} s, loss after ${l5?.lossAfterSettlePercent} / ${l2?.lossAfterSettlePercent} %, climb ${up?.climbS} s; ` +
  `held after settling (all / 1 s window only): at 5 ${fmtHold(hold(l5))} / ${fmtHold(hold(l5, "Window"))}; ` +
  `at 2 ${fmtHold(hold(l2))} / ${fmtHold(hold(l2, "Window"))}; raised ${fmtHold(hold(up))} / ${fmtHold(hold(up, "Window"))}`);
results.loadAvg = readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
console.log(JSON.stringify(results));
