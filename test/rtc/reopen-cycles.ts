import { readFileSync, readdirSync } from "node:fs";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import type { Page } from "playwright-core";
import type { Agent } from "../../agent/agent.js";
import type { EncodedVideoSource } from "../../agent/encode/types.js";

/**
 * Viewer cycles that close and reopen the desktop's capture between them (issue 11, item 1: a viewer
 * coming back after the source linger got no picture on a still screen). Shared by
 * test/rtc/reopen.test.ts and bench/reopen.ts. Each cycle, on one web-client page: connect
 * (window.wlReconnect, a new signaling session and peer connection, as a reload), wait for the first
 * frame shown, disconnect, and wait until the rtc stage has closed the source (portal session, PipeWire
 * capture, encoder), so that the next cycle opens them anew.
 */

declare const window: {
  wl: { marks: Record<string, number>; state: string; pc?: { getStats(): Promise<{ forEach(cb: (s: Record<string, unknown>) => void): void }> } };
  wlReconnect(): void;
  wlDisconnect(): void;
};

export interface ProcessFigures {
  fds: number;
  threads: number;
  rssMb: number;
}

/** This process's open fds, threads and resident memory (the agent runs in it). */
export function processFigures(): ProcessFigures {
  const status = readFileSync("/proc/self/status", "utf8");
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+)`, "m").exec(status)?.[1] ?? NaN);
  return { fds: readdirSync("/proc/self/fd").length, threads: field("Threads"), rssMb: Math.round(field("VmRSS") / 1024) };
}

/** Full garbage collections, so that RSS and fds reflect what is still referenced. */
export async function settleGc(): Promise<void> {
  setFlagsFromString("--expose-gc");
  const gc = runInNewContext("gc") as () => void;
  for (let i = 0; i < 3; i++) {
    gc();
    await sleep(100);
  }
}

export interface CycleResult {
  /** connect -> first frame shown (the web client's marks), ms; undefined: none within the timeout. */
  firstFrameMs: number | undefined;
  /** The source this cycle streamed from (each cycle must have its own). */
  source: EncodedVideoSource | undefined;
  /** When no frame came: what each stage had done by then (capture, encoder, the browser's receiver). */
  diagnosis?: string;
}

export interface ReopenOptions {
  agent: Agent;
  /** A web-client page already signed in (its token in sessionStorage). */
  page: Page;
  /** How long to wait for the first frame before calling the cycle failed. */
  firstFrameTimeoutMs: number;
  /** How long the stage may take to close the source after the viewer left (its linger + closing). */
  closeTimeoutMs: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(what: string, fn: () => Promise<boolean> | boolean, timeoutMs: number, stepMs = 20): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(stepMs);
  }
}

/** Waits until the stage has no viewer and no source: the next viewer opens capture anew. */
export async function sourceClosed(agent: Agent, timeoutMs: number): Promise<void> {
  const rtc = agent.rtc!;
  await until("the video source to close after the last viewer left", () => rtc.viewerCount === 0 && rtc.source === undefined, timeoutMs);
}

/** One viewer cycle (see the file comment). The page is disconnected at the end, the source closed. */
export async function reopenCycle(o: ReopenOptions): Promise<CycleResult> {
  const { agent, page } = o;
  await sourceClosed(agent, o.closeTimeoutMs);
  await page.evaluate(() => window.wlReconnect());
  let firstFrameMs: number | undefined;
  let error = "";
  try {
    await until("the first frame shown", () => page.evaluate(() => window.wl.marks.firstFrameShown !== undefined), o.firstFrameTimeoutMs, 25);
    const m = await page.evaluate(() => window.wl.marks);
    firstFrameMs = m.firstFrameShown! - m.connect!;
  } catch (err) {
    firstFrameMs = undefined;
    error = err instanceof Error ? err.message : String(err);
  }
  const source = agent.rtc?.source;
  const diagnosis = firstFrameMs === undefined ? `${error}; ${await diagnose(agent, page)}` : undefined;
  await page.evaluate(() => window.wlDisconnect());
  await sourceClosed(agent, o.closeTimeoutMs);
  return { firstFrameMs, source, ...(diagnosis !== undefined ? { diagnosis } : {}) };
}

async function diagnose(agent: Agent, page: Page): Promise<string> {
  const src = agent.rtc?.source as (EncodedVideoSource & { capture?: { stream: { stats(): { counters: Record<string, number>; state: string } } }; encoder?: { stats(): Record<string, unknown> } }) | undefined;
  let agentSide = "no source";
  if (src && !src.closed && src.capture && src.encoder) {
    const c = src.capture.stream.stats();
    const e = src.encoder.stats();
    const nonZero = Object.entries(c.counters).filter(([, v]) => typeof v === "number" && v !== 0).map(([k, v]) => `${k} ${v}`).join(", ");
    agentSide = `capture ${c.state} (${nonZero || "no buffer at all"}); encoder in ${String(e.framesIn)} encoded ${String(e.framesEncoded)} keyframes ${String(e.keyframes)}`;
  }
  const viewers = agent.rtc?.viewers.map((v) => `${v.id} connected=${String(v.connected)}`).join(" ") ?? "";
  const browser = await page.evaluate(async () => {
    const out: Record<string, unknown> = { state: window.wl.state, marks: Object.keys(window.wl.marks).join(",") };
    const r = await window.wl.pc?.getStats();
    r?.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") for (const k of ["packetsReceived", "framesReceived", "framesDecoded", "keyFramesDecoded", "pliCount"]) out[k] = s[k];
    });
    return JSON.stringify(out);
  });
  return `agent: ${agentSide}; viewers: ${viewers}; browser: ${browser}`;
}

/** p-th percentile (0..100) of the defined values, nearest rank. */
export function percentile(values: number[], p: number): number {
  const v = [...values].sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  return v[Math.min(v.length - 1, Math.max(0, Math.ceil((p / 100) * v.length) - 1))]!;
}

/** A foot terminal that prints a line every 50 ms: a screen that keeps changing. */
export const CHANGING_SCREEN = ["sh", "-c", 'i=0; while :; do i=$((i+1)); echo "line $i"; sleep 0.05; done'];
