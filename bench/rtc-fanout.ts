/**
 * Fan-out cost and time to first frame, with real parts: the agent (in this process) streaming a real
 * x264 stream (ffmpeg testsrc2) to N headless Chromium pages of the web client.
 *   node dist/bench/rtc-fanout.js [viewers list, default 1,2,4] [seconds per step, default 8]
 * Reports, per step: the agent process's CPU (this process: signaling, werift, SRTP, sockets; ffmpeg and
 * Chromium are other processes), packets/s sent, and each page's offer->first decoded frame time.
 */
import { TestBrowser } from "../test/helpers/browser.js";
import { startRtcAgent } from "../test/rtc/fixture.js";

declare const window: { wl: { pc?: { getStats(): Promise<{ forEach(cb: (s: Record<string, unknown>) => void): void }> } } };

const steps = (process.argv[2] ?? "1,2,4").split(",").map(Number);
const seconds = Number(process.argv[3] ?? 8);
const browser = await TestBrowser.launch();
const lk = browser.agentOverrides();
const fx = await startRtcAgent({ server: lk.server, rtc: { ...lk.rtc, start_bitrate_bps: 4_000_000 } }, { width: 1280, height: 720, fps: 30, gop: 30, bitrateKbps: 4000 });
try {
  for (const n of steps) {
    const pages = [];
    const firstFrameMs: number[] = [];
    for (let i = 0; i < n; i++) {
      const page = await browser.context.newPage();
      const t0 = performance.now();
      await page.goto(`${fx.httpUrl}/#token=${await fx.token("view")}`);
      for (;;) {
        const decoded = await page.evaluate(async () => {
          const pc = window.wl.pc;
          if (!pc) return 0;
          let f = 0;
          (await pc.getStats()).forEach((s) => {
            if (s.type === "inbound-rtp" && s.kind === "video") f = Number(s.framesDecoded ?? 0);
          });
          return f;
        });
        if (decoded > 0) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      firstFrameMs.push(Math.round(performance.now() - t0));
      pages.push(page);
    }
    const pkt0 = fx.agent.rtc!.viewers.reduce((s, p) => s + p.counters.packetsSent, 0);
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, seconds * 1000));
    const c1 = process.cpuUsage(c0);
    const dt = (performance.now() - t0) / 1000;
    const pkts = fx.agent.rtc!.viewers.reduce((s, p) => s + p.counters.packetsSent, 0) - pkt0;
    const cpu = ((c1.user + c1.system) / 1e6 / dt) * 100;
    console.log(JSON.stringify({ viewers: n, agentCpuPercentOfOneCore: Math.round(cpu * 10) / 10, packetsPerSecond: Math.round(pkts / dt), usPerPacket: Math.round(((c1.user + c1.system) / pkts) * 10) / 10, firstFrameMs }));
    for (const p of pages) await p.close();
    while (fx.agent.rtc!.viewerCount > 0) await new Promise((r) => setTimeout(r, 100));
  }
} finally {
  await browser.close();
  await fx.close();
}
