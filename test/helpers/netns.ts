import { execFile, spawn } from "node:child_process";
import { promisify } from "node:util";
import type { Page } from "playwright-core";

const run = promisify(execFile);

/**
 * A second "host" for network tests: a network namespace joined to the root namespace by one veth pair,
 * with private /30 addresses, and the link's shaping (tbf) and loss (nftables random drop) settable per
 * direction at run time. The kernel here has no netem (docs: /work/shared/notes/headless-desktop.md).
 *
 * Naming: namespace `wlt-<pid>-<id>`, veth ends `wlt<id>h` (root side) and `wlt<id>n` (namespace side).
 * Deleting the namespace deletes the veth pair, its qdiscs and the namespace's nftables table, so
 * `close()` is one command, and `sweepStaleLinks()` removes what a crashed run (dead pid) left behind.
 *
 * Directions: "down" = root namespace -> namespace (agent -> browser when the browser is inside),
 * "up" = namespace -> root namespace.
 */
export type Direction = "down" | "up";

export interface Shape {
  /** Link rate, kbit/s. */
  rateKbit: number;
  /** Token bucket depth, bytes (default 4000: a few packets). */
  burstBytes?: number;
  /** Longest wait in the queue before packets are dropped, ms (default 100): the queue is bounded. */
  latencyMs?: number;
}

export interface QdiscStats {
  sentBytes: number;
  sentPackets: number;
  dropped: number;
  backlogBytes: number;
}

/** A desktop client command: a terminal printing random text, so the whole screen changes every frame and the encoder can fill any bitrate. */
export const BUSY_TERMINAL = ["sh", "-c", "while :; do head -c 2400 /dev/urandom | base64; sleep 0.03; done"];

const PREFIX = "wlt-";
/** Where test links live (subnets of 10.200.0.0 - 10.249.255.255, see create()); scripts/traffic-watch.sh allows the same. */
const TEST_NETS = "{ 10.200.0.0/13, 10.208.0.0/12, 10.224.0.0/12, 10.240.0.0/13, 10.248.0.0/15 }";
const SEAL_TABLE = "wlseal";
let counter = 0;

async function ip(...args: string[]): Promise<string> {
  return (await run("ip", args)).stdout;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Deletes namespaces of earlier runs whose process is gone (and kills what still runs inside them). */
export async function sweepStaleLinks(): Promise<string[]> {
  const removed: string[] = [];
  const list = await ip("netns", "list");
  for (const line of list.split("\n")) {
    const name = line.split(" ")[0] ?? "";
    const m = /^wlt-(\d+)-[0-9a-f]+$/.exec(name);
    if (!m || pidAlive(Number(m[1]))) continue;
    await killInside(name);
    await ip("netns", "del", name).catch(() => undefined);
    removed.push(name);
  }
  return removed;
}

async function killInside(ns: string): Promise<void> {
  const pids = (await ip("netns", "pids", ns).catch(() => "")).split("\n").map(Number).filter((p) => p > 0);
  for (const p of pids) {
    try {
      process.kill(p, "SIGKILL");
    } catch {
      // gone
    }
  }
}

async function usedSubnets(): Promise<Set<string>> {
  const out = await ip("-4", "-o", "addr", "show");
  const used = new Set<string>();
  for (const m of out.matchAll(/inet (\d+\.\d+\.\d+)\.\d+/g)) used.add(m[1]!);
  return used;
}

export class NetLink {
  readonly ns: string;
  readonly hostIf: string;
  readonly nsIf: string;
  /** Root-namespace end of the link. */
  readonly hostAddr: string;
  /** Namespace end of the link. */
  readonly nsAddr: string;
  #closed = false;
  #nftReady = false;

  private constructor(ns: string, hostIf: string, nsIf: string, hostAddr: string, nsAddr: string) {
    this.ns = ns;
    this.hostIf = hostIf;
    this.nsIf = nsIf;
    this.hostAddr = hostAddr;
    this.nsAddr = nsAddr;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Creates the namespace and the link, both ends up. Sweeps stale links of dead runs first. */
  static async create(): Promise<NetLink> {
    await sweepStaleLinks();
    const id = `${(process.pid % 0x1000).toString(16)}${(counter++ % 0x100).toString(16).padStart(2, "0")}${Math.floor(Math.random() * 0x10).toString(16)}`;
    const ns = `${PREFIX}${process.pid}-${id}`;
    const hostIf = `wlt${id}h`, nsIf = `wlt${id}n`;
    const used = await usedSubnets();
    let net: string | undefined;
    for (let i = 0; i < 200 && !net; i++) {
      const c = `10.${200 + Math.floor(Math.random() * 50)}.${Math.floor(Math.random() * 256)}`;
      if (!used.has(c)) net = c;
    }
    if (!net) throw new Error("no free 10.200-249.x.0/30 subnet");
    const link = new NetLink(ns, hostIf, nsIf, `${net}.1`, `${net}.2`);
    try {
      await ip("netns", "add", ns);
      await ip("link", "add", hostIf, "type", "veth", "peer", "name", nsIf);
      await ip("link", "set", nsIf, "netns", ns);
      await ip("addr", "add", `${link.hostAddr}/30`, "dev", hostIf);
      await ip("link", "set", hostIf, "up");
      await link.exec("ip", "addr", "add", `${link.nsAddr}/30`, "dev", nsIf);
      await link.exec("ip", "link", "set", nsIf, "up");
      await link.exec("ip", "link", "set", "lo", "up");
      await link.#seal();
    } catch (err) {
      await link.close();
      throw err;
    }
    return link;
  }

  /**
   * A default route over the link, with everything outside loopback and the test links dropped as it
   * leaves the namespace. Chromium offers a host candidate only for the address of its default route
   * (without one it offers none, and ICE lives on peer-reflexive candidates only); the drop keeps its
   * background requests (DNS, autofill) and any candidate a test names from going anywhere else.
   */
  async #seal(): Promise<void> {
    await this.exec("ip", "route", "add", "default", "via", this.hostAddr);
    await this.exec("nft", `add table inet ${SEAL_TABLE}; add chain inet ${SEAL_TABLE} out { type filter hook output priority -10; policy drop; }; ` +
      `add rule inet ${SEAL_TABLE} out oifname "lo" accept; add rule inet ${SEAL_TABLE} out ip daddr ${TEST_NETS} accept; ` +
      `add rule inet ${SEAL_TABLE} out meta l4proto icmpv6 accept`);
  }

  /** Runs a command inside the namespace; resolves with its stdout. */
  async exec(cmd: string, ...args: string[]): Promise<string> {
    return (await run("ip", ["netns", "exec", this.ns, cmd, ...args])).stdout;
  }

  /**
   * Makes a TCP port that a program inside the namespace serves on the namespace's own loopback (a headful
   * Chromium's CDP: it ignores --remote-debugging-address) reachable at `nsAddr:port`, through a small
   * forwarder running inside the namespace. The forwarder ends with the namespace (close()).
   */
  async forwardLoopback(port: number): Promise<void> {
    const script = `const net = require("node:net");
net.createServer((c) => {
  const u = net.connect(${port}, "127.0.0.1");
  c.pipe(u).pipe(c);
  c.on("error", () => u.destroy());
  u.on("error", () => c.destroy());
}).listen(${port}, "${this.nsAddr}", () => process.stdout.write("ready\\n"));`;
    const child = spawn("ip", ["netns", "exec", this.ns, process.execPath, "-e", script], { stdio: ["ignore", "pipe", "pipe"] });
    await new Promise<void>((resolve, reject) => {
      let err = "";
      child.stderr!.on("data", (d: Buffer) => (err += d.toString()));
      child.stdout!.once("data", () => resolve());
      child.once("exit", (code) => reject(new Error(`the forwarder in ${this.ns} exited (${code}): ${err.slice(-300)}`)));
    });
    child.stdout!.resume();
    child.unref();
  }

  /** Lets the namespace reach another root-namespace address (e.g. another link's host end) over this link. */
  async routeTo(addr: string): Promise<void> {
    await this.exec("ip", "route", "replace", `${addr}/32`, "via", this.hostAddr);
  }

  #dev(dir: Direction): { inNs: boolean; dev: string } {
    // tbf shapes egress: "down" leaves the root namespace through hostIf, "up" leaves the namespace through nsIf.
    return dir === "down" ? { inNs: false, dev: this.hostIf } : { inNs: true, dev: this.nsIf };
  }

  async #tc(inNs: boolean, ...args: string[]): Promise<string> {
    return inNs ? this.exec("tc", ...args) : (await run("tc", args)).stdout;
  }

  /** Sets (or with null removes) a tbf rate limit with a bounded queue in one direction. */
  async shape(dir: Direction, s: Shape | null): Promise<void> {
    const { inNs, dev } = this.#dev(dir);
    if (s === null) {
      await this.#tc(inNs, "qdisc", "del", "dev", dev, "root").catch(() => undefined);
      return;
    }
    const burst = s.burstBytes ?? 4000;
    await this.#tc(inNs, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", `${s.rateKbit}kbit`, "burst", String(burst), "latency", `${s.latencyMs ?? 100}ms`);
  }

  /** Counters of the tbf in one direction (zeros without one). */
  async qdiscStats(dir: Direction): Promise<QdiscStats> {
    const { inNs, dev } = this.#dev(dir);
    const out = await this.#tc(inNs, "-s", "qdisc", "show", "dev", dev);
    const m = /Sent (\d+) bytes (\d+) pkt \(dropped (\d+)/.exec(out);
    const b = /backlog (\d+)b/.exec(out);
    return { sentBytes: Number(m?.[1] ?? 0), sentPackets: Number(m?.[2] ?? 0), dropped: Number(m?.[3] ?? 0), backlogBytes: Number(b?.[1] ?? 0) };
  }

  async #nft(script: string): Promise<void> {
    await this.exec("nft", script);
  }

  async #ensureNft(): Promise<void> {
    if (this.#nftReady) return;
    // Inside the namespace: "down" traffic is its input, "up" traffic its output.
    await this.#nft("add table inet wlt");
    await this.#nft("add chain inet wlt down { type filter hook input priority 0; policy accept; }");
    await this.#nft("add chain inet wlt up { type filter hook output priority 0; policy accept; }");
    this.#nftReady = true;
  }

  /**
   * Drops about `percent` % of the UDP packets in one direction (nftables `numgen random`); 0 removes the
   * rule. Only UDP: signaling (TCP) and the CDP pipe are left alone, the media path (ICE/DTLS/SRTP) is hit.
   */
  async loss(dir: Direction, percent: number): Promise<void> {
    await this.#ensureNft();
    await this.#nft(`flush chain inet wlt ${dir}`);
    if (percent >= 100) await this.#nft(`add rule inet wlt ${dir} meta l4proto udp counter drop`);
    else if (percent > 0) await this.#nft(`add rule inet wlt ${dir} meta l4proto udp numgen random mod 1000 < ${Math.round(percent * 10)} counter drop`);
  }

  /** Packets dropped by the loss rule of one direction since it was last set. */
  async lossDropped(dir: Direction): Promise<number> {
    if (!this.#nftReady) return 0;
    const out = await this.exec("nft", "list", "chain", "inet", "wlt", dir);
    return Number(/counter packets (\d+)/.exec(out)?.[1] ?? 0);
  }

  /** Idempotent: kills what still runs inside, deletes the namespace (with it the veth pair, qdiscs, nft table). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await killInside(this.ns);
    await ip("netns", "del", this.ns).catch(() => undefined);
    await ip("link", "del", this.hostIf).catch(() => undefined); // only if the namespace was never made
  }
}

// Browser-side globals, typed just enough for page.evaluate callbacks (the test tsconfig has no DOM lib).
declare const window: { wl: { pc?: { getStats(): Promise<{ forEach(cb: (s: Record<string, unknown>) => void): void }> } } };

export interface ViewerSample {
  /** inbound-rtp of the video, numbers only. */
  video: Record<string, number>;
  /** Addresses of the nominated candidate pair. */
  local: string;
  remote: string;
}

/** One getStats() of the web client's peer connection: video inbound-rtp and the nominated pair's addresses. */
export async function viewerSample(page: Page): Promise<ViewerSample> {
  return page.evaluate(async () => {
    const pc = window.wl.pc;
    const out = { video: {} as Record<string, number>, local: "", remote: "" };
    if (!pc) return out;
    const r = await pc.getStats();
    const byId = new Map<string, Record<string, unknown>>();
    let pairId = "";
    r.forEach((s) => {
      byId.set(String(s.id), s);
      if (s.type === "inbound-rtp" && s.kind === "video") {
        for (const [k, v] of Object.entries(s)) if (typeof v === "number") out.video[k] = v;
      }
      if (s.type === "transport" && typeof s.selectedCandidatePairId === "string") pairId = s.selectedCandidatePairId;
    });
    const pair = byId.get(pairId);
    if (pair) {
      out.local = String(byId.get(String(pair.localCandidateId))?.address ?? "");
      out.remote = String(byId.get(String(pair.remoteCandidateId))?.address ?? "");
    }
    return out;
  });
}
