import { execFile, type ChildProcess } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import dbus from "dbus-next";
import type { Message, MessageBus } from "dbus-next";
import { silentLogger, type Logger } from "../log/logger.js";
import { errorMessage, InvalidStateError, UnsupportedError, WlError } from "../util/errors.js";
import { TypedEmitter } from "../util/events.js";
import { guardUsocketClose } from "../util/usocket-guard.js";
import { desktopPrograms, nativeHelpers, which, type DesktopPrograms, type NativeHelpers } from "./native.js";
import { Part } from "./part.js";
import { isAlive, processesWithEnv } from "./procs.js";

export interface HeadlessDesktopOptions {
  width: number;
  height: number;
  refreshHz: number;
  log?: Logger;
  /** parent dir for the private runtime dir; default os.tmpdir() */
  baseDir?: string;
  /** How long each part may take to become ready; default 15000 ms (bring-up takes ~1.5 s). */
  readyTimeoutMs?: number;
  /**
   * Restart parts that die (see RestartPolicy). Default: off, a dead part only emits `part-exited`
   * (the agent turns it on).
   */
  restart?: RestartPolicy;
}

/**
 * How the desktop restarts its parts: a dead part is restarted together with the parts that depend on
 * it (PipeWire: WirePlumber and xdpw; sway: xdpw; the bus: everything), the first time at once (after
 * 150 ms for a cascade to show), each further one within the window after a backoff that doubles.
 * After `maxRestarts` restarts within `windowMs` the next death gives up: every part is stopped and the
 * state stays `failed` until close(). A crash loop thus ends in a clear state instead of spinning.
 */
export interface RestartPolicy {
  /** Restarts allowed within windowMs (0: give up at the first death). */
  maxRestarts: number;
  windowMs: number;
  /** Wait before the 2nd restart within the window; doubles for each further one. Default 1000. */
  backoffMs?: number;
  /** Largest wait. Default 8000. */
  maxBackoffMs?: number;
}

/** running: every part is up; restarting: a part died and is being restarted; failed: gave up; closed: close() ran. */
export type DesktopState = "running" | "restarting" | "failed" | "closed";

export interface DesktopStatus {
  state: DesktopState;
  /** Why the desktop is not running (empty while running), written for a user. */
  reason: string;
  /**
   * Whether what died took any screen cast with it (the bus, PipeWire, sway, xdpw or the portal: a
   * portal session and its PipeWire node do not survive them). False while running.
   */
  captureLost: boolean;
}

export interface SpawnClientOptions {
  /** Added to (and overriding) the desktop's environment. */
  env?: Record<string, string>;
  cwd?: string;
  /** Name for the log file and log records; default the command's basename. */
  name?: string;
}

export type HeadlessDesktopEvents = {
  /** A part died while the desktop was running (restarted only with a restart policy). */
  "part-exited": [{ part: string; code: number | null; signal: string | null }];
  /** The desktop's state changed (a part died and is being restarted, it is back, or restarting gave up). */
  state: [DesktopStatus];
  close: [];
};

/** Start failed: which part, why, and the end of its output. */
export class DesktopStartError extends WlError {
  readonly part: string;
  readonly outputTail: string;
  constructor(part: string, reason: string, outputTail: string, options?: { cause?: unknown }) {
    super("desktop-start", `headless desktop: ${part} ${reason}${outputTail ? `\n--- last output of ${part} ---\n${outputTail}` : ""}`, options);
    this.part = part;
    this.outputTail = outputTail;
  }
}

const OUTPUT_NAME = "HEADLESS-1";

/** The desktop's own processes, in bring-up order. */
type PartName = "dbus" | "pipewire" | "wireplumber" | "sway" | "xdpw" | "portal";
const PART_ORDER: readonly PartName[] = ["dbus", "pipewire", "wireplumber", "sway", "xdpw", "portal"];
/**
 * What must restart with a dead part. Measured (Debian 12): a killed PipeWire takes WirePlumber with it
 * but leaves xdpw running with a dead PipeWire connection (it never casts again); a killed sway takes
 * xdpw with it; xdpw, WirePlumber and the portal die alone. Everything talks over the bus.
 */
const DEPENDENTS: Record<PartName, readonly PartName[]> = {
  dbus: ["pipewire", "wireplumber", "sway", "xdpw", "portal"],
  pipewire: ["wireplumber", "xdpw"],
  wireplumber: [],
  sway: ["xdpw"],
  xdpw: [],
  portal: [],
};
/** Parts whose death ends a running screen cast (its portal session or its PipeWire node). */
const CAST_PARTS: ReadonlySet<PartName> = new Set(["dbus", "pipewire", "sway", "xdpw", "portal"]);
/** Time for a cascade of deaths to show before a restart (sway's xdpw follows within a few ms). */
const SETTLE_MS = 150;
/** Time for a cascade to show before the state (and its reason) is announced; shorter: viewers wait for it. */
const ANNOUNCE_MS = 40;
/** ...and at most this long for the exit of a part /proc already shows dead (a busy event loop). */
const ANNOUNCE_MAX_MS = 500;

/** The dead part that none of the other dead ones brought down: the cause to report. */
function rootCause(dead: ReadonlyMap<PartName, string>): string {
  const names = [...dead.keys()];
  const root = PART_ORDER.find((n) => dead.has(n) && !names.some((o) => o !== n && DEPENDENTS[o].includes(n))) ?? names[0]!;
  return dead.get(root)!;
}

const LOG_MAX_BYTES = 1 << 20;
const STOP_GRACE_MS = 3000;
const POLL_MS = 40;
// Unix socket paths are limited to 107 bytes; sway's IPC socket is the longest one we create.
const MAX_SOCKET_PATH = 107;

/** Variables of the outer session that must not leak into the private one. */
const SCRUB_ENV = [
  "WAYLAND_DISPLAY",
  "WAYLAND_SOCKET",
  "DISPLAY",
  "DBUS_SESSION_BUS_ADDRESS",
  "SWAYSOCK",
  "I3SOCK",
  "XDG_RUNTIME_DIR",
  "XDG_CURRENT_DESKTOP",
  "XDG_SESSION_TYPE",
  "XDG_SESSION_DESKTOP",
  "XDG_SESSION_ID",
  "XDG_SEAT",
  "XDG_VTNR",
  "DESKTOP_SESSION",
  "LD_PRELOAD",
  "PIPEWIRE_REMOTE",
  "PIPEWIRE_RUNTIME_DIR",
  "PIPEWIRE_CONFIG_DIR",
  "WIREPLUMBER_CONFIG_DIR",
  // A systemd service's notify socket and socket-activation fds belong to the agent, not its children.
  "NOTIFY_SOCKET",
  "LISTEN_FDS",
  "LISTEN_PID",
  "LISTEN_FDNAMES",
  "WATCHDOG_PID",
  "WATCHDOG_USEC",
];

const live = new Set<HeadlessDesktop>();
function onProcessExit(): void {
  for (const d of live) d._killNow();
}

/*
 * Facts this module relies on (Debian 12, measured Nov 2026 on 2 vCPU, root, no GPU):
 * - Bring-up takes ~250-420 ms in all (ready at: bus ~6 ms, pipewire ~50, wireplumber ~110, sway ~160,
 *   xdpw ~200, portal ~250); close() ~40-90 ms.
 * - sway uses $XDG_RUNTIME_DIR/sway-ipc.<uid>.<pid>.sock, unless given a SWAYSOCK that does not exist yet
 *   (then it takes that one: a restarted sway must not get its predecessor's); it takes wayland-1 in a fresh
 *   runtime dir, and again after a killed one once its socket and lock file are removed.
 * - dbus-daemon 1.14 double-forks bus-activated services (their parent is pid 1 at once), so a pdeathsig
 *   wrapper in a service file would kill them immediately; they exit when the bus goes away instead.
 * - xdg-desktop-portal 1.16 activates xdg-document-portal at startup (a FUSE mount on run/doc); we
 *   disable it. The portal then logs one GLib-CRITICAL about a NULL documents proxy and works on.
 * - A running cast renegotiates on setMode (the consumer sees the new size; param_changed may repeat).
 * - Works unchanged as an unprivileged user (no preload for sway then).
 */

/**
 * The agent's own Wayland desktop: a private session bus, PipeWire + WirePlumber, sway on the headless
 * wlroots backend (pixman, no GPU), xdg-desktop-portal-wlr and xdg-desktop-portal, all in a private
 * runtime directory, so that `org.freedesktop.portal.ScreenCast` works exactly as on a real desktop.
 *
 * Works as root and without a GPU (Debian 12: sway 1.7, xdpw 0.7.0) thanks to two preloads from
 * native/preload: setuid/setgid -> EPERM for sway, and synthetic screencopy `linux_dmabuf` events for
 * xdpw. Every part runs under wl-pdeathsig-exec, so it dies with the agent even on SIGKILL.
 */
export class HeadlessDesktop extends TypedEmitter<HeadlessDesktopEvents> {
  /** Environment for clients and for the agent's portal/PipeWire code. */
  readonly env: Record<string, string>;
  readonly outputName = OUTPUT_NAME;
  readonly #pids = new Map<string, number>();
  /** The current process of each part, in bring-up order (a restart replaces the value in place). */
  readonly #parts = new Map<PartName, Part>();
  /** Parts stopped on purpose (restart of dependents, give-up): their exit is not a death. */
  readonly #stopping = new WeakSet<Part>();
  readonly #policy: Required<RestartPolicy> | undefined;
  #status: DesktopStatus = { state: "restarting", reason: "the headless desktop is starting", captureLost: false };
  /** Dead parts awaiting a restart, with why. */
  readonly #dead = new Map<PartName, string>();
  /** When each restart within the window began (performance.now()). */
  readonly #restarts: number[] = [];
  #supervising: Promise<void> | undefined;
  #announce: NodeJS.Timeout | undefined;
  readonly #wakers = new Set<() => void>();
  readonly #clients = new Set<Part>();
  readonly #log: Logger;
  readonly #root: string;
  readonly #run: string;
  readonly #logDir: string;
  readonly #helpers: NativeHelpers;
  readonly #programs: DesktopPrograms;
  readonly #readyTimeoutMs: number;
  #clientSeq = 0;
  #closing: Promise<void> | undefined;
  #closed = false;
  #started = false;

  private constructor(opts: HeadlessDesktopOptions, root: string, helpers: NativeHelpers, programs: DesktopPrograms) {
    super();
    this.#log = (opts.log ?? silentLogger()).child({ component: "desktop" });
    this.#root = root;
    this.#run = join(root, "run");
    this.#logDir = join(root, "log");
    this.#helpers = helpers;
    this.#programs = programs;
    this.#readyTimeoutMs = opts.readyTimeoutMs ?? 15000;
    if (opts.restart) this.#policy = { backoffMs: 1000, maxBackoffMs: 8000, ...opts.restart };
    this.env = {
      XDG_RUNTIME_DIR: this.#run,
      XDG_CONFIG_HOME: join(root, "config"),
      XDG_DATA_HOME: join(root, "data"),
      XDG_STATE_HOME: join(root, "state"),
      XDG_CACHE_HOME: join(root, "cache"),
      // xdg-desktop-portal 1.16 picks the wlr backend because "sway" is in wlr.portal's UseIn.
      XDG_CURRENT_DESKTOP: "sway",
      XDG_SESSION_DESKTOP: "sway",
      XDG_SESSION_TYPE: "wayland",
    };
  }

  /**
   * Starts every part in order and resolves once the portal answers on the bus (ScreenCast's
   * AvailableSourceTypes can be read). On failure everything started so far is stopped and removed,
   * and the error names the part and shows the end of its output.
   */
  static async start(opts: HeadlessDesktopOptions): Promise<HeadlessDesktop> {
    validateMode(opts.width, opts.height, opts.refreshHz);
    if (opts.readyTimeoutMs !== undefined && !(Number.isFinite(opts.readyTimeoutMs) && opts.readyTimeoutMs > 0)) {
      throw new TypeError(`readyTimeoutMs must be a positive number, got ${opts.readyTimeoutMs}`);
    }
    if (opts.restart) {
      const r = opts.restart;
      const ok = (v: number | undefined, min: number): boolean => v === undefined || (Number.isFinite(v) && v >= min);
      if (!Number.isInteger(r.maxRestarts) || r.maxRestarts < 0 || !ok(r.windowMs, 1) || !ok(r.backoffMs, 0) || !ok(r.maxBackoffMs, 0)) {
        throw new TypeError(`restart: maxRestarts must be an integer >= 0, windowMs > 0, backoffMs and maxBackoffMs >= 0; got ${JSON.stringify(r)}`);
      }
    }
    const helpers = nativeHelpers();
    const programs = desktopPrograms();
    const baseDir = opts.baseDir ?? tmpdir();
    const root = mkdtempSync(join(baseDir, "wl-webrtc-desktop-"));
    const longest = join(root, "run", `sway-ipc.${4294967295}.${4194304}.sock`);
    if (Buffer.byteLength(longest) > MAX_SOCKET_PATH) {
      rmSync(root, { recursive: true, force: true });
      throw new TypeError(`baseDir ${baseDir} is too long for Unix socket paths (max ${MAX_SOCKET_PATH} bytes): use a shorter one`);
    }
    const d = new HeadlessDesktop(opts, root, helpers, programs);
    live.add(d);
    if (live.size === 1) process.on("exit", onProcessExit);
    try {
      await d.#bringUp(opts);
      d.#started = true;
      d.#status = { state: "running", reason: "", captureLost: false };
    } catch (err) {
      await d.close();
      throw err;
    }
    return d;
  }

  /** Part name -> pid ("dbus", "pipewire", "wireplumber", "sway", "xdpw", "portal"). */
  get pids(): ReadonlyMap<string, number> {
    return this.#pids;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** running, restarting (a part died), failed (restarting gave up) or closed, and why. */
  get status(): DesktopStatus {
    return this.#status;
  }

  /**
   * Resolves once every part is running: at once when it is, after a restart when one is under way.
   * Rejects with a `desktop-down` WlError carrying the reason when restarting gave up, the desktop
   * closed, or it is still restarting after `timeoutMs`.
   */
  async whenRunning(timeoutMs: number): Promise<void> {
    // A death not announced yet (the cascade settles for a few ms) counts as restarting.
    if (this.#status.state === "running" && this.#announce === undefined) return;
    if (this.#status.state === "restarting" || this.#status.state === "running") {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          clearTimeout(timer);
          this.off("state", onState);
          resolve();
        };
        const onState = (s: DesktopStatus): void => {
          if (s.state !== "restarting") done();
        };
        const timer = setTimeout(done, timeoutMs);
        this.on("state", onState);
      });
    }
    const s = this.#status;
    if (s.state !== "running") throw new WlError("desktop-down", s.state === "restarting" ? `${s.reason} (still restarting after ${timeoutMs} ms)` : s.reason);
  }

  /** The private directory that holds run/, config/, data/, state/ and log/ (removed on close). */
  get rootDir(): string {
    return this.#root;
  }

  async #bringUp(opts: HeadlessDesktopOptions): Promise<void> {
    const root = this.#root;
    // mkdtemp makes root 0700; XDG_RUNTIME_DIR must be 0700 as well (the spec, and pipewire checks).
    for (const d of ["run", "config", "data", "state", "cache", "log"]) mkdirSync(join(root, d), { mode: 0o700 });
    chmodSync(root, 0o700);
    this.#writeConfigs(opts);
    const mark = await this.#startParts(new Set(PART_ORDER));
    this.#log.info({ root, display: this.env.WAYLAND_DISPLAY, readyAtMs: mark, pids: Object.fromEntries(this.#pids) }, "headless desktop ready");
  }

  /**
   * Starts the named parts in bring-up order, each once the one before is ready; resolves with the
   * time (ms from the call) at which each was ready. Used for the first bring-up (all of them) and by
   * the supervisor to restart some of them (the others are running).
   */
  async #startParts(names: ReadonlySet<PartName>): Promise<Record<string, number>> {
    const t0 = performance.now();
    const mark: Record<string, number> = {};
    let bus: MessageBus | undefined;
    const sessionBus = (): MessageBus => {
      if (bus) return bus;
      guardUsocketClose(); // usocket frees a closing socket's libuv handle too early (util/usocket-guard.ts)
      bus = dbus.sessionBus({ busAddress: this.env.DBUS_SESSION_BUS_ADDRESS });
      bus.on("error", (err: unknown) => this.#log.debug({ err: errorMessage(err) }, "bring-up bus connection error"));
      return bus;
    };
    try {
      for (const name of PART_ORDER) {
        if (!names.has(name)) continue;
        // close() during a restart: stop here; close() stops what was started.
        if (this.#closing) throw new InvalidStateError("the headless desktop is closing");
        await this.#startPart(name, name === "dbus" ? undefined : sessionBus());
        mark[name] = Math.round(performance.now() - t0);
      }
    } finally {
      bus?.disconnect();
    }
    return mark;
  }

  async #startPart(name: PartName, bus: MessageBus | undefined): Promise<void> {
    const run = this.#run;
    switch (name) {
      case "dbus": {
        // Session bus. It prints its address once it listens. A killed one leaves its socket behind,
        // which would make the next one fail to bind.
        rmSync(join(run, "bus"), { force: true });
        let addressLine = "";
        let gotAddress: () => void = () => {};
        const addressSeen = new Promise<void>((r) => (gotAddress = r));
        const part = await this.#spawnPart(
          "dbus",
          this.#programs.dbusDaemon,
          ["--session", "--nofork", "--nopidfile", `--address=unix:path=${join(run, "bus")}`, "--print-address=1"],
          {},
          (chunk) => {
            addressLine += chunk.toString("utf8");
            if (addressLine.includes("\n")) gotAddress();
          },
        );
        await this.#waitReady(part, "printing its bus address", async () => {
          await Promise.race([addressSeen, sleep(POLL_MS)]);
          return addressLine.includes("\n");
        });
        this.env.DBUS_SESSION_BUS_ADDRESS = addressLine.split("\n")[0]!.trim();
        return;
      }
      case "pipewire": {
        // Ready when its socket exists; a killed one leaves its socket file behind: remove it first.
        rmSync(join(run, "pipewire-0"), { force: true });
        const part = await this.#spawnPart("pipewire", this.#programs.pipewire, [], {});
        await this.#waitReady(part, "creating its socket pipewire-0", async () => isSocket(join(run, "pipewire-0")));
        return;
      }
      case "wireplumber": {
        // Ready once it has created the "default" metadata (the session manager has loaded its policy).
        const part = await this.#spawnPart("wireplumber", this.#programs.wireplumber, [], {});
        await this.#waitReady(part, 'publishing the "default" metadata (pw-cli ls Metadata)', async () => {
          const out = await runCommand(this.#programs.pwCli, ["ls", "Metadata"], this.#childEnv(), 3000);
          return /metadata\.name = "default"/.test(out);
        });
        return;
      }
      case "sway": {
        // Headless, software rendering. A killed sway leaves its sockets: remove them, so that the new
        // one's Wayland socket is the only wayland-N here.
        for (const f of readdirSync(run)) if (/^(wayland-\d+(\.lock)?|sway-ipc\..*\.sock)$/.test(f)) rmSync(join(run, f), { force: true });
        // Not the old sway's: sway 1.7 takes a SWAYSOCK it is given when no such file exists.
        delete this.env.SWAYSOCK;
        delete this.env.WAYLAND_DISPLAY;
        const swayEnv: Record<string, string> = {
          WLR_BACKENDS: "headless",
          WLR_HEADLESS_OUTPUTS: "1",
          WLR_LIBINPUT_NO_DEVICES: "1",
          WLR_RENDERER: "pixman",
        };
        // sway 1.7 refuses to run as root unless setuid/setgid fail (see native/preload/no-setuid.c).
        if (process.getuid?.() === 0) swayEnv.LD_PRELOAD = this.#helpers.noSetuid;
        const sway = await this.#spawnPart("sway", this.#programs.sway, ["-c", join(this.#root, "config", "sway", "config")], swayEnv);
        // Given no SWAYSOCK, sway uses $XDG_RUNTIME_DIR/sway-ipc.<uid>.<pid>.sock;
        // the exec wrapper keeps the pid, so we know it in advance.
        const swaysock = join(run, `sway-ipc.${process.getuid?.() ?? 0}.${sway.pid}.sock`);
        this.env.SWAYSOCK = swaysock;
        await this.#waitReady(sway, `answering on its IPC socket with output ${OUTPUT_NAME}`, async () => {
          if (!isSocket(swaysock)) return false;
          const outputs = JSON.parse(await runCommand(this.#programs.swaymsg, ["-t", "get_outputs", "-r"], this.#childEnv(), 5000)) as SwayOutput[];
          return outputs.some((o) => o.name === OUTPUT_NAME && o.active);
        });
        // Its Wayland socket: the only wayland-N in our private runtime dir.
        const display = readdirSync(run).find((f) => /^wayland-\d+$/.test(f) && isSocket(join(run, f)));
        if (!display) throw new DesktopStartError("sway", "answers on IPC but has no wayland-N socket", sway.tail());
        this.env.WAYLAND_DISPLAY = display;
        // Services the bus starts on demand must see the compositor too.
        await bus!.call(
          new dbus.Message({
            destination: "org.freedesktop.DBus",
            path: "/org/freedesktop/DBus",
            interface: "org.freedesktop.DBus",
            member: "UpdateActivationEnvironment",
            signature: "a{ss}",
            body: [{ ...this.env }],
          }),
        );
        return;
      }
      case "xdpw": {
        // Started by us (with its preload) before xdg-desktop-portal can ask the bus to activate one;
        // the service-file override in $XDG_DATA_HOME covers a later re-activation.
        const part = await this.#spawnPart("xdpw", this.#programs.xdpw, ["-l", "INFO"], { LD_PRELOAD: this.#helpers.xdpwShm });
        await this.#waitReady(part, "owning org.freedesktop.impl.portal.desktop.wlr on the bus", () => nameHasOwner(bus!, "org.freedesktop.impl.portal.desktop.wlr"));
        return;
      }
      case "portal": {
        // Only ask it for a property once it owns its name: a call to an unowned name would make the
        // bus activate a second portal (unless supervised: then activation is disabled).
        const part = await this.#spawnPart("portal", this.#programs.portal, [], {});
        await this.#waitReady(part, "owning org.freedesktop.portal.Desktop and answering ScreenCast.AvailableSourceTypes", async () => {
          if (!(await nameHasOwner(bus!, "org.freedesktop.portal.Desktop"))) return false;
          const types = await getProperty(bus!, "org.freedesktop.portal.Desktop", "/org/freedesktop/portal/desktop", "org.freedesktop.portal.ScreenCast", "AvailableSourceTypes");
          return typeof types === "number" && types > 0;
        });
        return;
      }
    }
  }

  #writeConfigs(opts: HeadlessDesktopOptions): void {
    const cfg = this.env.XDG_CONFIG_HOME!;
    mkdirSync(join(cfg, "sway"), { recursive: true });
    writeFileSync(
      join(cfg, "sway", "config"),
      [
        "# Written by wl-webrtc's headless desktop.",
        `output ${OUTPUT_NAME} mode ${opts.width}x${opts.height}@${opts.refreshHz}Hz`,
        "xwayland disable",
        "",
      ].join("\n"),
    );
    mkdirSync(join(cfg, "xdg-desktop-portal-wlr"), { recursive: true });
    writeFileSync(
      join(cfg, "xdg-desktop-portal-wlr", "config"),
      // chooser_type=none + output_name: no dialog, always the one headless output.
      ["[screencast]", `output_name=${OUTPUT_NAME}`, "chooser_type=none", "max_fps=60", ""].join("\n"),
    );
    // If xdpw dies and the portal calls it again, the bus activates it from this file (it wins over
    // /usr/share because $XDG_DATA_HOME comes first): with the preload, never without. No pdeathsig
    // wrapper here: dbus-daemon double-forks activated services, so their parent dies at once; they
    // exit when the bus goes away instead.
    const services = join(this.env.XDG_DATA_HOME!, "dbus-1", "services");
    mkdirSync(services, { recursive: true });
    const env = which("env") ?? "/usr/bin/env";
    const falseBin = which("false") ?? "/bin/false";
    // With a restart policy the supervisor alone starts xdpw and the portal: one the bus activated in
    // between would hold the name, make ours exit, and run unwatched. A call while one is down fails
    // at once instead (and the caller waits for the restart: whenRunning).
    const supervised = this.#policy !== undefined;
    writeFileSync(
      join(services, "org.freedesktop.impl.portal.desktop.wlr.service"),
      ["[D-BUS Service]", "Name=org.freedesktop.impl.portal.desktop.wlr", `Exec=${supervised ? falseBin : `${env} LD_PRELOAD=${this.#helpers.xdpwShm} ${this.#programs.xdpw} -l INFO`}`, ""].join("\n"),
    );
    if (supervised) writeFileSync(join(services, "org.freedesktop.portal.Desktop.service"), ["[D-BUS Service]", "Name=org.freedesktop.portal.Desktop", `Exec=${falseBin}`, ""].join("\n"));
    // xdg-desktop-portal activates the document portal at startup, which FUSE-mounts $XDG_RUNTIME_DIR/doc
    // (plus a fusermount3 helper). Screen casting does not use it; without it there is no mount that
    // could outlive a crash or block removing the runtime dir. The portal carries on without it.
    writeFileSync(join(services, "org.freedesktop.portal.Documents.service"), ["[D-BUS Service]", "Name=org.freedesktop.portal.Documents", `Exec=${falseBin}`, ""].join("\n"));
  }

  /** Environment for processes inside the desktop: the agent's, minus the outer session, plus ours. */
  #childEnv(extra: Record<string, string> = {}): Record<string, string> {
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !SCRUB_ENV.includes(k) && !k.startsWith("WLR_")) env[k] = v;
    return { ...env, ...this.env, ...extra };
  }

  async #spawnPart(name: PartName, command: string, args: string[], extraEnv: Record<string, string>, onStdout?: (c: Buffer) => void): Promise<Part> {
    const part = await Part.spawn({
      name,
      execWrapper: this.#helpers.execWrapper,
      command,
      args,
      env: this.#childEnv(extraEnv),
      logFile: join(this.#logDir, `${name}.log`),
      logMaxBytes: LOG_MAX_BYTES,
      log: this.#log,
      cwd: this.#root,
      onStdout,
    });
    // A restarted part takes its predecessor's place (and its place in the close order).
    this.#parts.get(name)?.closeLog();
    this.#parts.set(name, part);
    this.#pids.set(name, part.pid);
    // The supervisor reacts on 'exit' (at once); the log and event wait for the output's end (exited).
    part.child.once("exit", (code: number | null, signal: NodeJS.Signals | null) => this.#onPartDied(name, part, code, signal));
    void part.exited.then((info) => {
      if (this.#closing || this.#stopping.has(part)) return;
      this.#log.warn({ part: name, pid: part.pid, ...info, output: part.tail(10) }, "desktop part exited");
      // During start() the failure surfaces as start()'s rejection instead.
      if (this.#started) this.safeEmit("part-exited", { part: name, code: info.code, signal: info.signal });
    });
    return part;
  }

  #setStatus(status: DesktopStatus): void {
    this.#status = status;
    this.safeEmit("state", status);
  }

  /** A part's process exited. With a restart policy, a death that was not ours starts the supervisor. */
  #onPartDied(name: PartName, part: Part, code: number | null, signal: string | null): void {
    if (this.#closing || !this.#started || !this.#policy || this.#stopping.has(part) || this.#parts.get(name) !== part) return;
    if (this.#status.state === "failed") return;
    const why = `${name} exited (${signal ? `killed by ${signal}` : `code ${code}`})`;
    if (!this.#dead.has(name)) this.#dead.set(name, why);
    if (this.#status.state === "running") {
      // The parts that die with it exit within a few ms, sometimes before it (a dead bus: xdpw first):
      // wait that long, and for the exit of any part already dead in /proc, then name the one the
      // others depend on.
      const firstAt = performance.now();
      const announce = (): void => {
        this.#announce = undefined;
        if (this.#closing || this.#status.state !== "running") return;
        const unreported = [...this.#parts].some(([n, p]) => !this.#dead.has(n) && !isAlive(p.pid));
        if (unreported && performance.now() - firstAt < ANNOUNCE_MAX_MS) {
          this.#announce = setTimeout(announce, 10);
          return;
        }
        const captureLost = [...this.#dead.keys()].some((p) => CAST_PARTS.has(p));
        this.#setStatus({ state: "restarting", reason: `the headless desktop's ${rootCause(this.#dead)}; the agent is restarting it`, captureLost });
        this.#supervising ??= this.#supervise().finally(() => (this.#supervising = undefined));
      };
      this.#announce ??= setTimeout(announce, ANNOUNCE_MS);
      return;
    }
    // A death during a restart: the loop running now picks it up (or a new one starts).
    if (CAST_PARTS.has(name) && !this.#status.captureLost) this.#setStatus({ ...this.#status, captureLost: true });
    this.#supervising ??= this.#supervise().finally(() => (this.#supervising = undefined));
  }

  /**
   * Restarts dead parts with their dependents, in bring-up order, until none is dead; gives up when
   * the policy's budget is spent. One loop at a time (#supervising); close() ends it.
   */
  async #supervise(): Promise<void> {
    const policy = this.#policy!;
    while (this.#dead.size > 0 && !this.#closing) {
      await this.#sleep(SETTLE_MS);
      const now = performance.now();
      while (this.#restarts.length > 0 && now - this.#restarts[0]! > policy.windowMs) this.#restarts.shift();
      const causes = [...this.#dead.values()];
      if (this.#restarts.length >= policy.maxRestarts) {
        await this.#giveUp(causes);
        return;
      }
      const n = this.#restarts.length;
      const delay = n === 0 ? 0 : Math.min(policy.maxBackoffMs, policy.backoffMs * 2 ** (n - 1));
      if (delay > 0) {
        this.#log.info({ delayMs: delay, restartsInWindow: n }, "headless desktop: waiting before the next restart");
        await this.#sleep(delay);
      }
      if (this.#closing) return;
      this.#restarts.push(performance.now());
      const set = new Set<PartName>();
      for (const d of this.#dead.keys()) for (const p of [d, ...DEPENDENTS[d]]) set.add(p);
      this.#dead.clear();
      const parts = PART_ORDER.filter((p) => set.has(p));
      const t0 = performance.now();
      this.#log.warn({ causes, restart: parts, attempt: n + 1, of: policy.maxRestarts }, "headless desktop: restarting parts");
      let starting: PartName | undefined;
      try {
        for (const name of [...parts].reverse()) await this.#stopPart(name);
        for (const name of parts) {
          starting = name;
          await this.#startParts(new Set([name]));
        }
      } catch (err) {
        if (this.#closing) return;
        const part = err instanceof DesktopStartError ? (err.part as PartName) : (starting ?? "dbus");
        const first = errorMessage(err).split("\n")[0]!;
        this.#log.warn({ part, err: errorMessage(err) }, "headless desktop: a part did not come back");
        if (!this.#dead.has(part)) this.#dead.set(part, `${part} did not come back after a restart: ${first}`);
        continue;
      }
      if (this.#dead.size === 0) this.#log.info({ parts, ms: Math.round(performance.now() - t0), pids: Object.fromEntries(this.#pids) }, "headless desktop: restarted");
    }
    if (!this.#closing && this.#dead.size === 0 && this.#status.state === "restarting") this.#setStatus({ state: "running", reason: "", captureLost: false });
  }

  async #stopPart(name: PartName): Promise<void> {
    const p = this.#parts.get(name);
    if (!p) return;
    this.#stopping.add(p);
    await p.stop(STOP_GRACE_MS);
  }

  /** The budget is spent: stop every part and stay down with the reason (readiness and viewers show it). */
  async #giveUp(causes: string[]): Promise<void> {
    const p = this.#policy!;
    const reason =
      `the headless desktop is down: ${causes.join("; ")}, and the agent gave up restarting it ` +
      `(${this.#restarts.length} restart${this.#restarts.length === 1 ? "" : "s"} within ${Math.round(p.windowMs / 1000)} s, desktop.restart_limit = ${p.maxRestarts}); restart the agent`;
    this.#dead.clear();
    this.#setStatus({ state: "failed", reason, captureLost: true });
    this.#log.error({ causes, restarts: this.#restarts.length }, reason);
    for (const name of [...PART_ORDER].reverse()) await this.#stopPart(name);
  }

  /** setTimeout that close() cuts short. */
  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(t);
        this.#wakers.delete(done);
        resolve();
      };
      const t = setTimeout(done, ms);
      this.#wakers.add(done);
    });
  }

  /** Polls `probe` until it returns true, the part exits, or the deadline passes. */
  async #waitReady(part: Part, what: string, probe: () => Promise<boolean>): Promise<void> {
    const deadline = performance.now() + this.#readyTimeoutMs;
    let lastError = "";
    for (;;) {
      if (this.#closing) throw new InvalidStateError("the headless desktop is closing");
      if (!part.running) {
        const { code, signal } = part.exitInfo!;
        throw new DesktopStartError(part.name, `exited (${signal ?? `code ${code}`}) before ${what}`, part.tail());
      }
      try {
        if (await probe()) return;
      } catch (err) {
        lastError = errorMessage(err);
      }
      if (performance.now() > deadline) {
        throw new DesktopStartError(
          part.name,
          `was not ready within ${this.#readyTimeoutMs} ms (waiting for it ${what})${lastError ? `; last probe error: ${lastError}` : ""}`,
          part.tail(),
        );
      }
      await Promise.race([sleep(POLL_MS), part.exited]);
    }
  }

  /** Runs swaymsg against this desktop's sway; resolves with its stdout. */
  async swaymsg(...args: string[]): Promise<string> {
    this.#assertOpen();
    return runCommand(this.#programs.swaymsg, args, this.#childEnv(), 5000);
  }

  /** Changes the output's mode and resolves once sway reports it (a running cast renegotiates). */
  async setMode(width: number, height: number, refreshHz: number): Promise<void> {
    validateMode(width, height, refreshHz);
    this.#assertOpen();
    await this.swaymsg("output", OUTPUT_NAME, "mode", `${width}x${height}@${refreshHz}Hz`);
    const deadline = performance.now() + 5000;
    for (;;) {
      const outputs = JSON.parse(await this.swaymsg("-t", "get_outputs", "-r")) as SwayOutput[];
      const m = outputs.find((o) => o.name === OUTPUT_NAME)?.current_mode;
      // sway reports refresh in mHz.
      if (m && m.width === width && m.height === height && Math.abs(m.refresh - refreshHz * 1000) < 1000) return;
      if (performance.now() > deadline) {
        throw new WlError("desktop-mode", `sway did not switch ${OUTPUT_NAME} to ${width}x${height}@${refreshHz}Hz (now ${JSON.stringify(m)})`);
      }
      await sleep(POLL_MS);
    }
  }

  /**
   * Starts a Wayland client (foot, chromium, ...) inside the desktop. It gets the desktop's environment,
   * its output goes to log/client-<name>-<n>.log, it dies with the agent, and close() stops it (and
   * anything in its process group) first. Waits for a restart under way (the compositor may be new);
   * rejects with a `desktop-down` WlError when the desktop gave up.
   */
  async spawnClient(cmd: string, args: string[], opts: SpawnClientOptions = {}): Promise<ChildProcess> {
    this.#assertOpen();
    // During a restart the compositor's socket is not known yet: a client started now would find none.
    await this.whenRunning(this.#readyTimeoutMs);
    const env = this.#childEnv(opts.env);
    const exe = which(cmd, env.PATH);
    if (!exe) throw new UnsupportedError(`${cmd} not found on PATH`);
    const name = opts.name ?? basename(cmd);
    const part = await Part.spawn({
      name,
      execWrapper: this.#helpers.execWrapper,
      command: exe,
      args,
      env,
      logFile: join(this.#logDir, `client-${name.replace(/[^\w.-]/g, "_")}-${++this.#clientSeq}.log`),
      logMaxBytes: LOG_MAX_BYTES,
      log: this.#log,
      cwd: opts.cwd ?? this.#root,
    });
    this.#clients.add(part);
    void part.exited.then(() => this.#clients.delete(part));
    if (this.#closing) await part.stop(STOP_GRACE_MS);
    return part.child;
  }

  /**
   * Stops clients, then the parts in reverse start order (portal before xdpw before sway before
   * PipeWire, the bus last), then whatever the bus activated; waits for every exit and removes the
   * runtime dir. Idempotent; emits `close` once.
   */
  async close(): Promise<void> {
    this.#closing ??= this.#doClose();
    return this.#closing;
  }

  async #doClose(): Promise<void> {
    const t0 = performance.now();
    this.#setStatus({ state: "closed", reason: "the headless desktop is closed", captureLost: true });
    // A restart under way stops at its next step; then the parts it started are in #parts.
    clearTimeout(this.#announce);
    for (const wake of [...this.#wakers]) wake();
    await this.#supervising;
    await Promise.all([...this.#clients].map((c) => c.stop(STOP_GRACE_MS)));
    for (const part of [...this.#parts.values()].reverse()) {
      const info = await part.stop(STOP_GRACE_MS);
      this.#log.debug({ part: part.name, ...info }, "desktop part stopped");
    }
    // Services the bus started on demand (permission store, document portal) exit when the bus goes
    // away; make sure of it.
    await this.#sweep();
    for (const p of [...this.#parts.values(), ...this.#clients]) p.closeLog();
    await rm(this.#root, { recursive: true, force: true, maxRetries: 3 }).catch((err: unknown) =>
      this.#log.warn({ err: errorMessage(err), root: this.#root }, "could not remove the desktop's runtime dir"),
    );
    live.delete(this);
    if (live.size === 0) process.off("exit", onProcessExit);
    this.#closed = true;
    this.#log.info({ ms: Math.round(performance.now() - t0) }, "headless desktop closed");
    this.safeEmit("close");
  }

  async #sweep(): Promise<void> {
    const deadline = performance.now() + 1000;
    let pids = processesWithEnv("XDG_RUNTIME_DIR", this.#run);
    if (pids.length === 0) return;
    this.#log.debug({ pids }, "waiting for bus-activated services to exit");
    while (pids.length > 0 && performance.now() < deadline) {
      await sleep(POLL_MS);
      pids = pids.filter(isAlive);
    }
    for (const pid of pids) {
      this.#log.warn({ pid }, "process of the desktop session still running after the bus stopped: killing it");
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // gone
      }
    }
  }

  /** process 'exit' hook: no async work possible any more; kill everything and remove the dir. */
  _killNow(): void {
    for (const p of [...this.#clients, ...[...this.#parts.values()].reverse()]) p.killNow();
    try {
      rmSync(this.#root, { recursive: true, force: true });
    } catch {
      // best effort
    }
  }

  #assertOpen(): void {
    if (this.#closing) throw new InvalidStateError("the headless desktop is closed");
  }
}

interface SwayOutput {
  name: string;
  active: boolean;
  current_mode?: { width: number; height: number; refresh: number };
}

function validateMode(width: number, height: number, refreshHz: number): void {
  const int = (v: number, name: string, min: number, max: number): void => {
    if (!Number.isInteger(v) || v < min || v > max) throw new TypeError(`${name} must be an integer in ${min}..${max}, got ${v}`);
  };
  int(width, "width", 16, 16384);
  int(height, "height", 16, 16384);
  int(refreshHz, "refreshHz", 1, 1000);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function isSocket(path: string): boolean {
  try {
    return statSync(path).isSocket();
  } catch {
    return false;
  }
}

/** Runs a short command; rejects with its stderr on failure. */
function runCommand(cmd: string, args: string[], env: Record<string, string>, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { env, timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) {
        const detail = (String(stderr).trim() || String(stdout).trim()).slice(0, 2000);
        reject(new Error(`${basename(cmd)} ${args.join(" ")} failed: ${detail || err.message}`));
      } else {
        resolve(String(stdout));
      }
    });
  });
}

async function nameHasOwner(bus: MessageBus, name: string): Promise<boolean> {
  const reply = await bus.call(
    new dbus.Message({
      destination: "org.freedesktop.DBus",
      path: "/org/freedesktop/DBus",
      interface: "org.freedesktop.DBus",
      member: "NameHasOwner",
      signature: "s",
      body: [name],
    }),
  );
  return reply?.body[0] === true;
}

async function getProperty(bus: MessageBus, dest: string, path: string, iface: string, prop: string): Promise<unknown> {
  const reply: Message | null = await bus.call(
    new dbus.Message({ destination: dest, path, interface: "org.freedesktop.DBus.Properties", member: "Get", signature: "ss", body: [iface, prop] }),
  );
  return (reply?.body[0] as { value?: unknown } | undefined)?.value;
}
