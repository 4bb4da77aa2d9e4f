/**
 * What streaming costs the agent (issue 5), on real parts.
 *   node dist/bench/cost.js [--seconds 10] [--viewers 1,5,10,20] [--first-frame-trials 8] [--bitrate-kbps 6000]
 *
 * Three processes, so that nothing else is counted as the agent's:
 * - the agent (this file, role `agent`): its own headless 1080p60 desktop, capture, x264, werift. Its CPU
 *   is read from /proc/<pid>/stat (utime + stime of all its threads: JS, encoder, capture); its RSS from
 *   /proc/<pid>/status. The desktop's processes (sway, PipeWire, xdpw, the scene client) are its children
 *   and are reported apart, as "desktop".
 * - the viewers (role `viewers`): werift peer connections (H.264, NACK/PLI/FIR, transport-cc) that
 *   receive and decrypt every packet but do not decode. Their CPU is their own process's.
 * - this process: drives both over IPC, and a headless Chromium (web client) for the first-frame time.
 *
 * Scenes (a foot terminal, the only window, fills the 1920x1080 output): `small` = one line of digits
 * changing every ~16 ms; `full` = 40 new lines every ~16 ms, the whole screen scrolls.
 * Steps: agent CPU/RSS with 1 viewer for each scene; then, with the full scene, 1/5/10/20 viewers and the
 * CPU per extra viewer (target <= 3 % of a core); then WebSocket connect -> first decoded frame in Chromium
 * with a warm agent (the source already open for the werift viewer; target <= 500 ms).
 * Last line: one JSON object.
 */
import { fork, type ChildProcess } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { loadavg } from "node:os";

const role = process.argv[2];
const SELF = fileURLToPath(import.meta.url);

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : def;
}

type Msg = { type: string; id?: number; [k: string]: unknown };

/** Request/answer over a forked child's IPC channel. */
class Rpc {
  #next = 1;
  readonly #waiting = new Map<number, (m: Msg) => void>();
  readonly ready: Promise<Msg>;
  constructor(readonly child: ChildProcess) {
    this.ready = new Promise((resolve, reject) => {
      child.on("message", (m: Msg) => {
        if (m.type === "ready") resolve(m);
        else if (m.id !== undefined) this.#waiting.get(m.id)?.(m);
      });
      child.once("exit", (code) => reject(new Error(`child exited (${code}) before it was ready`)));
    });
  }
  call(type: string, args: Record<string, unknown> = {}, timeoutMs = 60_000): Promise<Msg> {
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no answer to ${type} within ${timeoutMs} ms`)), timeoutMs);
      this.#waiting.set(id, (m) => {
        clearTimeout(t);
        this.#waiting.delete(id);
        if (m.type === "error") reject(new Error(String(m.message)));
        else resolve(m);
      });
      this.child.send({ type, id, ...args });
    });
  }
  async close(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((r) => this.child.once("exit", r));
    this.child.send({ type: "close" });
    const t = setTimeout(() => this.child.kill("SIGKILL"), 15_000);
    await exited;
    clearTimeout(t);
  }
}

/** Answers the parent's requests with `handlers`; closes everything when asked or when the parent goes. */
function serve(handlers: Record<string, (m: Msg) => Promise<Record<string, unknown>>>, close: () => Promise<void>, ready: Record<string, unknown>): void {
  let closing = false;
  const shutdown = async (): Promise<void> => {
    if (closing) return;
    closing = true;
    await close().catch((e: unknown) => console.error(e));
    process.exit(0);
  };
  process.on("message", (m: Msg) => {
    if (m.type === "close") {
      void shutdown();
      return;
    }
    const h = handlers[m.type];
    if (!h) return;
    h(m).then(
      (r) => process.send!({ type: "ok", id: m.id, ...r }),
      (e: unknown) => process.send!({ type: "error", id: m.id, message: String(e) }),
    );
  });
  process.on("disconnect", () => void shutdown());
  process.send!({ type: "ready", ...ready });
}

async function agentRole(): Promise<void> {
  const bitrateKbps = Number(arg("bitrate-kbps", "6000"));
  const { startTestAgent } = await import("../test/helpers/agent.js");
  const t = await startTestAgent({
    desktop: { mode: "headless", width: 1920, height: 1080, refresh_hz: 60 },
    encode: { backends: ["x264"], max_fps: 60, bitrate_kbps: bitrateKbps },
    // Every viewer at one fixed rate: the per-viewer ABR would otherwise start new viewers low and
    // throttle them (fewer frames, a cost per viewer that looks smaller than it is).
    rtc: { min_bitrate_bps: bitrateKbps * 1000, start_bitrate_bps: bitrateKbps * 1000, max_bitrate_bps: bitrateKbps * 1000 },
    metrics: { enabled: false },
  });
  const desktop = t.agent.desktop!.headless!;
  let scene: ChildProcess | undefined;
  const scripts: Record<string, string> = {
    small: "i=0; while :; do i=$((i+1)); printf '\\r%012d' $i; sleep 0.016; done",
    still: "seq -f '%g a still screen: nothing changes' 1 40; exec sleep 100000",
    // Random text, 200 columns, a screenful every ~16 ms: nothing for motion search to reuse, so x264
    // needs far more than 6 Mbit/s for it and sits at its target (scrolling repeated text came to ~1.7).
    full: "while :; do head -c 8000 /dev/urandom | base64 -w 200; sleep 0.016; done",
  };
  const stopScene = async (): Promise<void> => {
    const s = scene;
    scene = undefined;
    if (s && s.exitCode === null && s.signalCode === null) {
      const exited = new Promise((r) => s.once("exit", r));
      s.kill("SIGTERM");
      await exited;
    }
  };
  // Milestones of each signaling session on the agent's side (wall clock ms), for the first-frame breakdown.
  const wall = (): number => performance.timeOrigin + performance.now();
  type Trace = Record<string, number>;
  const traces: { subject: string; marks: Trace }[] = [];
  const rtc = t.agent.rtc!;
  t.agent.signaling.on("session", (s) => {
    const tr = { subject: s.info.subject, marks: { session: wall() } as Trace };
    traces.push(tr);
    if (traces.length > 64) traces.shift();
    const once = (k: string): void => {
      tr.marks[k] ??= wall();
    };
    s.on("message", (m) => once(m.type === "offer" ? "offer" : m.type === "candidate" ? "firstRemoteCandidate" : m.type));
    const send = s.send.bind(s);
    s.send = ((msg: Parameters<typeof s.send>[0]) => {
      once(msg.type === "answer" ? "answerSent" : msg.type === "candidate" ? "firstLocalCandidate" : `sent-${msg.type}`);
      return send(msg);
    }) as typeof s.send;
  });
  let current: Trace | undefined;
  rtc.on("viewer", (p) => {
    const tr = traces.find((x) => x.subject === "cost-browser" && x.marks.peer === undefined);
    if (!tr) return;
    tr.marks.peer = wall();
    current = tr.marks;
    const marks = tr.marks;
    p.on("connected", () => (marks.connected ??= wall()));
    p.peerConnection.iceConnectionStateChange.subscribe((st) => (marks[`agentIce-${st}`] ??= wall()));
    p.peerConnection.connectionStateChange.subscribe((st) => (marks[`agentPc-${st}`] ??= wall()));
    p.on("keyframe", (reason) => (marks[`wish-${reason}`] ??= wall()));
  });
  let wrapped: unknown;
  let producedBytes = 0, producedFrames = 0;
  rtc.on("frameSent", (f) => {
    producedBytes += f.bytes;
    producedFrames++;
    const src = rtc.source;
    if (src && wrapped !== src) {
      wrapped = src;
      const orig = src.requestKeyframe.bind(src);
      src.requestKeyframe = (reason) => {
        if (current && current.connected !== undefined) current.encoderRequest ??= wall();
        orig(reason);
      };
    }
    if (!current || current.connected === undefined || !f.keyframe || current.keyframeSent !== undefined) return;
    current.keyframeCaptured = f.captureTimeMs;
    current.keyframeEncoded = f.readyTimeMs;
    current.keyframeSent = f.sentTimeMs;
    current.keyframeBytes = f.bytes;
  });
  serve(
    {
      trace: async () => ({ marks: traces.filter((x) => x.subject === "cost-browser").at(-1)?.marks ?? {} }),
      scene: async (m) => {
        await stopScene();
        scene = await desktop.spawnClient("foot", ["sh", "-c", scripts[String(m.which)]!], { name: `scene-${String(m.which)}` });
        return {};
      },
      browserToken: async () => ({ token: (await t.agent.tokens.mint({ role: "view", ttlS: 3600, subject: "cost-browser" })).token }),
      tokens: async (m) => {
        const out: string[] = [];
        for (let i = 0; i < Number(m.n); i++) out.push((await t.agent.tokens.mint({ role: "view", ttlS: 3600, subject: `cost-${i}` })).token);
        return { tokens: out };
      },
      counters: async () => {
        const rtc = t.agent.rtc!;
        const v = rtc.viewers;
        return {
          viewers: rtc.viewerCount,
          packetsSent: v.reduce((s, p) => s + p.counters.packetsSent, 0),
          framesSent: v.map((p) => p.counters.framesSent),
          framesDropped: v.map((p) => p.counters.framesDropped),
          bytesSent: v.reduce((s, p) => s + p.counters.bytesSent, 0),
          encoderTargetBps: rtc.source?.targetBitrate ?? 0,
          producedBytes,
          producedFrames,
        };
      },
    },
    async () => {
      await stopScene();
      await t.close();
    },
    { pid: process.pid, httpUrl: t.httpUrl, wsUrl: t.wsUrl },
  );
}

async function viewersRole(): Promise<void> {
  const { RTCPeerConnection, useH264, useNACK, usePLI, useFIR, useTWCC, useSdesMid, useTransportWideCC } = await import("werift");
  const { hello } = await import("../test/helpers/ws-client.js");
  const wsUrl = process.argv[3]!;
  interface V {
    close(): Promise<void>;
    packets: number;
  }
  const viewers: V[] = [];
  const connect = async (token: string): Promise<V> => {
    const { client, welcome } = await hello(wsUrl, token);
    if (!welcome) throw new Error("no welcome from the agent");
    const pc = new RTCPeerConnection({
      codecs: { video: [useH264({ rtcpFeedback: [useNACK(), usePLI(), useFIR(), useTWCC()] })], audio: [] },
      headerExtensions: { video: [useSdesMid(), useTransportWideCC()], audio: [] },
      iceUseIpv6: false,
      bundlePolicy: "max-bundle",
      iceTcpPassive: false,
    });
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.createDataChannel("control");
    pc.onIceCandidate.subscribe((c) => {
      if (c) client.send({ type: "candidate", candidate: { candidate: c.toJSON().candidate ?? "", sdpMid: c.toJSON().sdpMid ?? null, sdpMLineIndex: c.toJSON().sdpMLineIndex ?? null } });
    });
    await pc.setLocalDescription(await pc.createOffer());
    client.send({ type: "offer", sdp: pc.localDescription!.sdp });
    const answer = await client.next("answer", 15_000);
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp as string });
    client.ws.on("message", (data) => {
      const m = JSON.parse(String(data)) as { type: string; candidate?: { candidate: string; sdpMid?: string; sdpMLineIndex?: number } | null };
      if (m.type === "candidate" && m.candidate) void pc.addIceCandidate(m.candidate).catch(() => undefined);
    });
    await pc.connectionStateChange.watch((s) => s === "connected", 15_000);
    const v: V = {
      packets: 0,
      close: async () => {
        client.close();
        await pc.close();
      },
    };
    pc.dtlsTransports[0]!.onRtp.subscribe(() => v.packets++);
    return v;
  };
  serve(
    {
      set: async (m) => {
        const tokens = m.tokens as string[];
        const n = Number(m.n);
        while (viewers.length > n) await viewers.pop()!.close();
        while (viewers.length < n) viewers.push(await connect(tokens[viewers.length]!));
        return { n: viewers.length };
      },
      packets: async () => ({ packets: viewers.map((v) => v.packets) }),
    },
    async () => {
      for (const v of viewers.splice(0)) await v.close();
    },
    { pid: process.pid },
  );
}

const TICK = 100; // USER_HZ on Linux
function cpuTicks(pid: number, tid?: number): number {
  const stat = readFileSync(tid === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${tid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(f[11]) + Number(f[12]); // utime, stime (fields 14 and 15)
}
function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Math.round(Number(m[1]) / 102.4) / 10 : NaN;
}
/** Every live descendant of `root` (not root itself). */
function descendants(root: number): number[] {
  const parent = new Map<number, number>();
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const s = readFileSync(`/proc/${d}/stat`, "utf8");
      parent.set(Number(d), Number(s.slice(s.lastIndexOf(")") + 2).split(" ")[1]));
    } catch {
      // exited meanwhile
    }
  }
  const out: number[] = [];
  for (const pid of parent.keys()) {
    let p = parent.get(pid);
    for (let hops = 0; p !== undefined && p > 1 && hops < 50; hops++) {
      if (p === root) {
        out.push(pid);
        break;
      }
      p = parent.get(p);
    }
  }
  return out;
}
function ticksOf(pids: number[]): Map<number, number> {
  const m = new Map<number, number>();
  for (const p of pids) {
    try {
      m.set(p, cpuTicks(p));
    } catch {
      // exited
    }
  }
  return m;
}

interface Window {
  agentCpuPct: number;
  /** The agent's main (JS) thread only: signaling, werift, SRTP, socket sends. The encoder has its own threads. */
  agentJsThreadCpuPct: number;
  desktopCpuPct: number;
  viewersProcCpuPct: number;
  agentRssMb: number;
  packetsPerSecond: number;
  mbitPerSecondPerViewer: number;
  framesPerSecondPerViewer: number;
  framesDroppedForViewers: number;
  encoderTargetMbps: number;
  producedMbps: number;
  producedFps: number;
  loadavg: number;
}

async function measure(agentPid: number, viewersPid: number, agent: Rpc, seconds: number): Promise<Window> {
  const desk = descendants(agentPid);
  const c0 = await agent.call("counters");
  const a0 = cpuTicks(agentPid);
  const j0 = cpuTicks(agentPid, agentPid);
  const v0 = cpuTicks(viewersPid);
  const d0 = ticksOf(desk);
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const a1 = cpuTicks(agentPid);
  const j1 = cpuTicks(agentPid, agentPid);
  const v1 = cpuTicks(viewersPid);
  const d1 = ticksOf(desk);
  const dt = (performance.now() - t0) / 1000;
  const c1 = await agent.call("counters");
  let dTicks = 0;
  for (const [p, t] of d1) dTicks += t - (d0.get(p) ?? t);
  const pct = (ticks: number): number => Math.round((ticks / TICK / dt) * 1000) / 10;
  const n = Math.max(1, Number(c1.viewers));
  const f0 = c0.framesSent as number[];
  const f1 = c1.framesSent as number[];
  const dropped = (c1.framesDropped as number[]).reduce((s, x) => s + x, 0) - (c0.framesDropped as number[]).reduce((s, x) => s + x, 0);
  return {
    agentCpuPct: pct(a1 - a0),
    agentJsThreadCpuPct: pct(j1 - j0),
    desktopCpuPct: pct(dTicks),
    viewersProcCpuPct: pct(v1 - v0),
    agentRssMb: rssMb(agentPid),
    packetsPerSecond: Math.round((Number(c1.packetsSent) - Number(c0.packetsSent)) / dt),
    mbitPerSecondPerViewer: Math.round(((Number(c1.bytesSent) - Number(c0.bytesSent)) * 8) / dt / n / 1e4) / 100,
    framesPerSecondPerViewer: Math.round(((f1.reduce((s, x) => s + x, 0) - f0.reduce((s, x) => s + x, 0)) / dt / n) * 10) / 10,
    framesDroppedForViewers: dropped,
    encoderTargetMbps: Number(c1.encoderTargetBps) / 1e6,
    // What the encoder really produced (the scene decides: a still screen makes almost nothing).
    producedMbps: Math.round(((Number(c1.producedBytes) - Number(c0.producedBytes)) * 8) / dt / 1e4) / 100,
    producedFps: Math.round(((Number(c1.producedFrames) - Number(c0.producedFrames)) / dt) * 10) / 10,
    loadavg: Number(loadavg()[0]!.toFixed(2)),
  };
}

async function main(): Promise<void> {
  const seconds = Number(arg("seconds", "10"));
  const steps = arg("viewers", "1,5,10,20").split(",").map(Number);
  const trials = Number(arg("first-frame-trials", "8"));
  const ffScenes = arg("first-frame-scenes", "full,still").split(",").filter((x) => x !== "");
  /** Pause between a trial's disconnect and the next connect (ms). */
  const gapMs = Number(arg("first-frame-gap-ms", "500"));
  /** Which parts: cpu (scenes and fan-out), first-frame, or both. */
  const only = arg("only", "");
  const fanScenes = arg("fanout-scenes", "small,full").split(",").filter((x) => x !== "");
  const agent = new Rpc(fork(SELF, ["agent", "--bitrate-kbps", arg("bitrate-kbps", "6000")], { stdio: ["ignore", "inherit", "inherit", "ipc"] }));
  let viewers: Rpc | undefined;
  let browser: import("../test/helpers/browser.js").TestBrowser | undefined;
  try {
    const ready = await agent.ready;
    const agentPid = Number(ready.pid);
    viewers = new Rpc(fork(SELF, ["viewers", String(ready.wsUrl)], { stdio: ["ignore", "inherit", "inherit", "ipc"] }));
    const viewersPid = Number((await viewers.ready).pid);
    const tokens = (await agent.call("tokens", { n: Math.max(...steps, 1) })).tokens as string[];
    const idleRss = rssMb(agentPid);

    const scenes: Record<string, Window> = {};
    await viewers.call("set", { n: 1, tokens });
    for (const which of only === "first-frame" ? [] : ["small", "full"]) {
      await agent.call("scene", { which });
      await new Promise((r) => setTimeout(r, 4000));
      scenes[which] = await measure(agentPid, viewersPid, agent, seconds);
      console.log(`# scene ${which}, 1 viewer: ${JSON.stringify(scenes[which])}`);
    }

    // Fan-out for both scenes: the small changing region and the whole screen moving.
    const fanout: Record<string, (Window & { viewers: number })[]> = {};
    const perExtra: Record<string, { viewers: number; cpuPctPerExtraViewer: number; jsThreadCpuPctPerExtraViewer: number; jsThreadUsPerPacket: number; rssMbPerExtraViewer: number }[]> = {};
    for (const which of only === "first-frame" ? [] : fanScenes) {
      await viewers.call("set", { n: 1, tokens });
      await agent.call("scene", { which });
      const rows: (Window & { viewers: number })[] = (fanout[which] = []);
      for (const n of steps) {
        await viewers.call("set", { n, tokens }, 120_000);
        await new Promise((r) => setTimeout(r, 3000));
        const w = { viewers: n, ...(await measure(agentPid, viewersPid, agent, seconds)) };
        rows.push(w);
        console.log(`# ${which} scene, ${n} viewers: ${JSON.stringify(w)}`);
      }
      const one = rows.find((w) => w.viewers === 1);
      perExtra[which] = one
        ? rows.filter((w) => w.viewers > 1).map((w) => ({
            viewers: w.viewers,
            cpuPctPerExtraViewer: Math.round(((w.agentCpuPct - one.agentCpuPct) / (w.viewers - 1)) * 100) / 100,
            // The encoder's share moves with the desktop's frame rate (load-dependent); the JS thread carries the per-viewer work.
            jsThreadCpuPctPerExtraViewer: Math.round(((w.agentJsThreadCpuPct - one.agentJsThreadCpuPct) / (w.viewers - 1)) * 100) / 100,
            jsThreadUsPerPacket: Math.round(((w.agentJsThreadCpuPct / 100) * 1e6) / Math.max(1, w.packetsPerSecond)),
            rssMbPerExtraViewer: Math.round(((w.agentRssMb - one.agentRssMb) / (w.viewers - 1)) * 100) / 100,
          }))
        : [];
      console.log(`# ${which} scene: agent CPU per extra viewer (% of one core): ${JSON.stringify(perExtra[which])}`);
    }


    // WebSocket connect -> first decoded frame, warm agent (one werift viewer keeps the source open), on
    // the moving full scene and on a still screen (nothing changes: the encoder has no next frame to make
    // the new viewer's keyframe from). Each trial is broken down from the page's milestones (wl.marks) and
    // the agent's (trace), on one wall clock.
    await viewers.call("set", { n: 1, tokens });
    const { TestBrowser } = await import("../test/helpers/browser.js");
    browser = await TestBrowser.launch();
    const page = await browser.context.newPage();
    const browserToken = String((await agent.call("browserToken")).token);
    await page.goto(`${String(ready.httpUrl)}/#token=${browserToken}`);
    await page.waitForFunction("window.wl && window.wl.state === 'streaming' || (window.wl && window.wl.stats && window.wl.stats.framesDecoded > 0)", undefined, { timeout: 20_000 }).catch(() => undefined);
    const firstFrame: Record<string, { trialsMs: number[]; p50: number; max: number; breakdownMedianMs: Record<string, number>; loadavg: number[] }> = {};
    for (const sceneName of only === "cpu" ? [] : ffScenes) {
      await agent.call("scene", { which: sceneName });
      await new Promise((r) => setTimeout(r, 2000));
      const trialsMs: number[] = [];
      const bd: Record<string, number>[] = [];
      const load0 = loadavg()[0]!;
      for (let i = 0; i < trials; i++) {
        await page.evaluate("window.wlDisconnect()");
        // Spaced like a user's reload, and past the keyframe gate's interval since the previous trial's keyframe.
        await new Promise((r) => setTimeout(r, gapMs));
        // Timed inside the page: from the reconnect (which opens the WebSocket) to the first frame counted by getStats.
        const r = (await page.evaluate(`new Promise((resolve, reject) => {
          window.wl.pc = undefined;
          const wall = () => performance.timeOrigin + performance.now();
          const t0 = performance.now();
          const seen = {};
          window.wlReconnect();
          const iv = setInterval(async () => {
            const pc = window.wl.pc;
            if (!pc) return;
            let f = 0, pk = 0, fr = 0, r;
            try { r = await pc.getStats(); } catch { return; }
            r.forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "video") { f = Number(s.framesDecoded || 0); pk = Number(s.packetsReceived || 0); fr = Number(s.framesReceived || 0); } });
            if (pk > 0) seen.firstRtp ??= wall();
            if (fr > 0) seen.firstFrameReceived ??= wall();
            if (f > 0) { clearInterval(iv); seen.firstDecoded = wall(); resolve({ ms: performance.now() - t0, seen, marks: window.wl.marks }); }
            if (performance.now() - t0 > 15000) { clearInterval(iv); reject(new Error("no frame in 15 s")); }
          }, 5);
        })`)) as { ms: number; seen: Record<string, number>; marks: Record<string, number> };
        const ag = (await agent.call("trace")).marks as Record<string, number>;
        trialsMs.push(Math.round(r.ms));
        const m = { ...r.marks, ...r.seen };
        const t0 = m.connect!;
        // Each step: from the previous milestone to this one (ms); milestones in pipeline order.
        const order: [string, number | undefined][] = [
          ["wsOpen", m.wsOpen], ["welcome", m.welcome], ["offerSent(browser)", m.offerSent], ["offerAtAgent", ag.offer],
          ["peerCreated", ag.peer], ["answerSent", ag.answerSent], ["answerAtBrowser", m.answer],
          ["iceChecking(agent)", ag["agentIce-checking"]], ["iceConnected(agent)", ag["agentIce-connected"]], ["iceConnected(browser)", m["ice-connected"]],
          ["dtlsConnected(agent)", ag.connected], ["connected(browser)", m.connected],
          ["encoderRequest", ag.encoderRequest], ["keyframeCaptured", ag.keyframeCaptured], ["keyframeEncoded", ag.keyframeEncoded], ["keyframeSent", ag.keyframeSent],
          ["firstRtp(browser)", m.firstRtp], ["firstFrameReceived", m.firstFrameReceived], ["firstDecoded", m.firstDecoded],
        ];
        const step: Record<string, number> = {};
        for (const [k, v] of order) if (v !== undefined) step[k] = Math.round((v - t0) * 10) / 10;
        step.keyframeBytes = ag.keyframeBytes ?? 0;
        bd.push(step);
        console.log(`# first frame, ${sceneName} screen, trial ${i + 1}: ${Math.round(r.ms)} ms; milestones (ms after connect): ${JSON.stringify(step)}`);
      }
      const med = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
      const breakdownMedianMs: Record<string, number> = {};
      for (const k of Object.keys(bd[0] ?? {})) {
        const xs = bd.map((x) => x[k]).filter((x): x is number => x !== undefined);
        if (xs.length > 0) breakdownMedianMs[k] = med(xs);
      }
      firstFrame[sceneName] = { trialsMs, p50: med(trialsMs), max: Math.max(...trialsMs), breakdownMedianMs, loadavg: [Number(load0.toFixed(2)), Number(loadavg()[0]!.toFixed(2))] };
      console.log(`# WebSocket connect -> first decoded frame, ${sceneName} screen (warm agent, ms): ${trialsMs.join(" ")}; median milestones ${JSON.stringify(breakdownMedianMs)}; load ${firstFrame[sceneName].loadavg.join(" -> ")}`);
    }
    await page.close();

    console.log(
      JSON.stringify({
        bench: "cost",
        seconds,
        bitrateKbps: Number(arg("bitrate-kbps", "6000")),
        viewerKind: "werift peer connections in a separate process (receive + decrypt, no decode)",
        agentIdleRssMb: idleRss,
        scenes,
        fanout,
        cpuPerExtraViewer: perExtra,
        firstFrame: { ...firstFrame, target: 500 },
        targets: {
          cpuPerExtraViewerPct: { value: Object.fromEntries(Object.entries(perExtra).map(([k, v]) => [k, v.length ? Math.max(...v.map((p) => p.cpuPctPerExtraViewer)) : null])), target: 3 },
          jsThreadCpuPerExtraViewerPct: { value: Object.fromEntries(Object.entries(perExtra).map(([k, v]) => [k, v.length ? Math.max(...v.map((p) => p.jsThreadCpuPctPerExtraViewer)) : null])), target: 3 },
          firstFrameP50Ms: { value: Object.fromEntries(Object.entries(firstFrame).map(([k, v]) => [k, v.p50])), target: 500 },
        },
      }),
    );
  } finally {
    await browser?.close();
    await viewers?.close();
    await agent.close();
  }
}

if (role === "agent") await agentRole();
else if (role === "viewers") await viewersRole();
else await main();
