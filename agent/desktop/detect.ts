import { readdirSync, statSync } from "node:fs";
import { connect } from "node:net";
import { isAbsolute, join } from "node:path";
import dbus from "dbus-next";
import { guardUsocketClose } from "../util/usocket-guard.js";
import { errorMessage } from "../util/errors.js";

/** Whether the current user already has a desktop session the agent can capture. */
export interface SessionStatus {
  usable: boolean;
  /** Why not (or what was found), for a log line. */
  reason: string;
  /** The Wayland display found: WAYLAND_DISPLAY, or a live wayland-N socket in XDG_RUNTIME_DIR. */
  waylandDisplay?: string;
  busAddress?: string;
}

/**
 * Tells whether a usable Wayland session exists for this user: a Wayland socket that accepts a
 * connection (a stale socket file left by a crashed compositor does not count) and a session bus that
 * answers. `serve` uses it to fall back to the headless desktop.
 *
 * Without WAYLAND_DISPLAY (an agent started by systemd --user often lacks it) the runtime dir is
 * searched for a live wayland-N socket.
 */
export async function detectSession(env: NodeJS.ProcessEnv = process.env, timeoutMs = 2000): Promise<SessionStatus> {
  const runtime = env.XDG_RUNTIME_DIR;
  if (!runtime) return { usable: false, reason: "XDG_RUNTIME_DIR is not set" };

  let display: string | undefined;
  const given = env.WAYLAND_DISPLAY;
  if (given) {
    const path = isAbsolute(given) ? given : join(runtime, given);
    if (!(await socketAnswers(path, timeoutMs))) {
      return { usable: false, reason: `WAYLAND_DISPLAY=${given}: no compositor answers on ${path}` };
    }
    display = given;
  } else {
    let names: string[];
    try {
      names = readdirSync(runtime).filter((f) => /^wayland-\d+$/.test(f)).sort();
    } catch (err) {
      return { usable: false, reason: `cannot read XDG_RUNTIME_DIR ${runtime}: ${errorMessage(err)}` };
    }
    for (const n of names) {
      if (await socketAnswers(join(runtime, n), timeoutMs)) {
        display = n;
        break;
      }
    }
    if (!display) return { usable: false, reason: `no WAYLAND_DISPLAY and no live wayland-N socket in ${runtime}` };
  }

  const busAddress = env.DBUS_SESSION_BUS_ADDRESS || `unix:path=${join(runtime, "bus")}`;
  const busError = await busAnswers(busAddress, timeoutMs);
  if (busError) return { usable: false, reason: `session bus ${busAddress} does not answer: ${busError}`, waylandDisplay: display };
  return { usable: true, reason: `Wayland display ${display} and session bus answer`, waylandDisplay: display, busAddress };
}

function socketAnswers(path: string, timeoutMs: number): Promise<boolean> {
  try {
    if (!statSync(path).isSocket()) return Promise.resolve(false);
  } catch {
    return Promise.resolve(false);
  }
  return new Promise((resolve) => {
    const s = connect(path);
    const done = (ok: boolean): void => {
      clearTimeout(t);
      s.destroy();
      resolve(ok);
    };
    const t = setTimeout(() => done(false), timeoutMs);
    s.once("connect", () => done(true));
    s.once("error", () => done(false));
  });
}

/** undefined when the bus answered a Ping, else the error. */
async function busAnswers(address: string, timeoutMs: number): Promise<string | undefined> {
  let bus: dbus.MessageBus | undefined;
  let timer: NodeJS.Timeout | undefined;
  try {
    guardUsocketClose(); // usocket frees a closing socket's libuv handle too early (util/usocket-guard.ts)
    bus = dbus.sessionBus({ busAddress: address });
    const b = bus;
    const failed = new Promise<never>((_, reject) => {
      b.on("error", (err: unknown) => reject(err instanceof Error ? err : new Error(String(err))));
      timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
    });
    await Promise.race([
      b.call(new dbus.Message({ destination: "org.freedesktop.DBus", path: "/org/freedesktop/DBus", interface: "org.freedesktop.DBus.Peer", member: "Ping" })),
      failed,
    ]);
    return undefined;
  } catch (err) {
    return errorMessage(err);
  } finally {
    clearTimeout(timer);
    try {
      bus?.disconnect();
    } catch {
      // never connected
    }
  }
}
