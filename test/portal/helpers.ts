import { execFile } from "node:child_process";
import { readdirSync, readlinkSync } from "node:fs";
import { promisify } from "node:util";
import { silentLogger } from "../../agent/log/logger.js";
import type { PortalSessionOptions } from "../../agent/portal/index.js";
import { HeadlessDesktop } from "../../agent/desktop/index.js";
import { sleep } from "./desktop-fixture.js";

const execFileP = promisify(execFile);

/** Options for a session on the desktop whose bus is at `busAddress`, token kept in `stateDir`. */
export function sessionOptions(busAddress: string, stateDir: string, over: Partial<PortalSessionOptions> = {}): PortalSessionOptions {
  return {
    busAddress,
    sourceTypes: ["monitor"],
    cursorMode: "embedded",
    persist: true,
    stateDir,
    log: silentLogger(),
    timeoutMs: 10_000,
    ...over,
  };
}

/** The shared headless desktop (agent/desktop), small and at 30 Hz: the portal tests need no pixels. */
export async function startDesktop(): Promise<HeadlessDesktop> {
  return HeadlessDesktop.start({ width: 1280, height: 720, refreshHz: 30 });
}

export function busOf(d: HeadlessDesktop): string {
  const a = d.env.DBUS_SESSION_BUS_ADDRESS;
  if (a === undefined) throw new Error("HeadlessDesktop.env has no DBUS_SESSION_BUS_ADDRESS");
  return a;
}

/** The socket inode behind one of this process's fds, from readlink /proc/self/fd/N = socket:[inode]. */
export function socketInode(fd: number): number | undefined {
  try {
    const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/self/fd/${fd}`));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

export function openFdCount(): number {
  return readdirSync("/proc/self/fd").length;
}

/**
 * The process at the other end of a connected UNIX socket, from `ss -xpn`: our line gives the peer's
 * inode, the peer's line gives its owner ("pipewire", pid).
 */
export async function unixPeer(inode: number): Promise<{ peerInode: number; processes: { name: string; pid: number }[] } | undefined> {
  const { stdout } = await execFileP("ss", ["-xpn"]);
  const rows = stdout
    .split("\n")
    .slice(1)
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f.length >= 8);
  // Columns: Netid State Recv-Q Send-Q Local-Address Local-Port(inode) Peer-Address Peer-Port(inode) [Process]
  const ours = rows.find((f) => Number(f[5]) === inode);
  if (!ours) return undefined;
  const peerInode = Number(ours[7]);
  const peer = rows.find((f) => Number(f[5]) === peerInode);
  const users = peer?.slice(8).join(" ") ?? "";
  const processes = [...users.matchAll(/\("([^"]+)",pid=(\d+),fd=\d+\)/g)].map((m) => ({ name: m[1]!, pid: Number(m[2]) }));
  return { peerInode, processes };
}

/** Waits until the fd count drops to at most `limit` (sockets close a tick after disconnect). */
export async function settleFds(limit: number, ms = 3000): Promise<number> {
  const until = Date.now() + ms;
  let n = openFdCount();
  while (n > limit && Date.now() < until) {
    await sleep(20);
    n = openFdCount();
  }
  return n;
}
