import { readdirSync, readFileSync } from "node:fs";

/**
 * Pids of live processes whose environment holds `key=value` exactly (zombies have an empty environ
 * and are not listed). Processes we may not read (other users', when not root) are skipped.
 *
 * Why: the session bus starts services on demand (xdg-permission-store, xdg-document-portal). They are
 * not our children and dbus-daemon double-forks them, so neither pids nor pdeathsig reach them; they
 * carry the desktop's unique XDG_RUNTIME_DIR in their environment, which identifies them exactly.
 */
export function processesWithEnv(key: string, value: string): number[] {
  const needle = Buffer.from(`${key}=${value}\0`);
  const out: number[] = [];
  let entries: string[];
  try {
    entries = readdirSync("/proc");
  } catch {
    return out;
  }
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    const pid = Number(e);
    if (pid === process.pid) continue;
    let env: Buffer;
    try {
      env = readFileSync(`/proc/${e}/environ`);
    } catch {
      continue;
    }
    // environ entries are NUL-separated: match at the start or right after a NUL.
    if (env.subarray(0, needle.length).equals(needle) || env.includes(Buffer.concat([Buffer.from([0]), needle]))) {
      out.push(pid);
    }
  }
  return out;
}

/** True while `pid` names a process that has not exited (a zombie counts as exited). */
export function isAlive(pid: number): boolean {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return false;
  }
  // "pid (comm) S ...": comm may contain spaces and parentheses, the state follows the last ')'.
  const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
  return state !== "Z" && state !== "X" && state !== "";
}
