import type { DesktopConfig } from "../config/schema.js";
import type { Logger } from "../log/logger.js";
import { UnsupportedError } from "../util/errors.js";
import { detectSession } from "./detect.js";
import { HeadlessDesktop } from "./headless.js";

/** The desktop the agent shares: the user's Wayland session, or a headless one of its own. */
export interface SharedDesktop {
  kind: "session" | "headless";
  /**
   * Environment for talking to it: its session bus, Wayland display, runtime dir. Read it when
   * connecting: a restarted headless desktop has a new bus address and compositor socket.
   */
  readonly env: NodeJS.ProcessEnv;
  /** Set when the agent runs the desktop itself. */
  headless: HeadlessDesktop | undefined;
  /** Stops the headless desktop (nothing to do for the user's session). */
  close(): Promise<void>;
}

/**
 * Picks the desktop per `desktop.mode`: "auto" shares the user's session when one answers, else
 * starts a headless desktop; "session" requires one; "headless" always starts our own; "none"
 * returns undefined.
 */
export async function openSharedDesktop(config: DesktopConfig, env: NodeJS.ProcessEnv, log: Logger): Promise<SharedDesktop | undefined> {
  const mode = config.mode;
  if (mode === "none") {
    log.info("desktop.mode is none: no desktop is shared");
    return undefined;
  }
  if (mode !== "headless") {
    const status = await detectSession(env);
    if (status.usable) {
      log.info({ display: status.waylandDisplay, reason: status.reason }, "sharing the user's Wayland session");
      return {
        kind: "session",
        env: {
          ...env,
          ...(status.waylandDisplay ? { WAYLAND_DISPLAY: status.waylandDisplay } : {}),
          ...(status.busAddress ? { DBUS_SESSION_BUS_ADDRESS: status.busAddress } : {}),
        },
        headless: undefined,
        close: async () => undefined,
      };
    }
    if (mode === "session") throw new UnsupportedError(`desktop.mode is "session" but no usable Wayland session was found: ${status.reason}`);
    log.info({ reason: status.reason }, "no Wayland session found: starting a headless desktop");
  }
  const desktop = await HeadlessDesktop.start({
    width: config.width,
    height: config.height,
    refreshHz: config.refresh_hz,
    log: log.child({ stage: "desktop" }),
    restart: { maxRestarts: config.restart_limit, windowMs: config.restart_window_s * 1000 },
  });
  desktop.on("part-exited", ({ part, code, signal }) => log.error({ part, code, signal }, "a part of the headless desktop exited"));
  desktop.on("state", (s) => {
    if (s.state === "running") log.info("headless desktop running again");
    else if (s.state === "failed") log.error({ reason: s.reason }, "headless desktop down");
  });
  log.info({ width: config.width, height: config.height, refreshHz: config.refresh_hz, runtimeDir: desktop.env.XDG_RUNTIME_DIR }, "headless desktop running");
  return {
    kind: "headless",
    get env() {
      return { ...env, ...desktop.env };
    },
    headless: desktop,
    close: () => desktop.close(),
  };
}
