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
}

export interface SpawnClientOptions {
  /** Added to (and overriding) the desktop's environment. */
  env?: Record<string, string>;
  cwd?: string;
  /** Name for the log file and log records; default the command's basename. */
  name?: string;
}

export type HeadlessDesktopEvents = {
  /** A part died while the desktop was running. The owner decides what to do; nothing is restarted. */
  "part-exited": [{ part: string; code: number | null; signal: string | null }];
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
 * - sway ignores a SWAYSOCK it is given (always $XDG_RUNTIME_DIR/sway-ipc.<uid>.<pid>.sock) and takes
 *   wayland-1 in a fresh runtime dir.
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
  readonly #parts: Part[] = [];
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

  /** The private directory that holds run/, config/, data/, state/ and log/ (removed on close). */
  get rootDir(): string {
    return this.#root;
  }

  async #bringUp(opts: HeadlessDesktopOptions): Promise<void> {
    const t0 = performance.now();
    const root = this.#root;
    // mkdtemp makes root 0700; XDG_RUNTIME_DIR must be 0700 as well (the spec, and pipewire checks).
    for (const d of ["run", "config", "data", "state", "cache", "log"]) mkdirSync(join(root, d), { mode: 0o700 });
    chmodSync(root, 0o700);
    this.#writeConfigs(opts);
    const mark: Record<string, number> = {};
    const lap = (name: string): void => {
      mark[name] = Math.round(performance.now() - t0);
    };

    // 1. Session bus. It prints its address once it listens.
    let addressLine = "";
    let gotAddress: () => void = () => {};
    const addressSeen = new Promise<void>((r) => (gotAddress = r));
    const dbusPart = await this.#spawnPart(
      "dbus",
      this.#programs.dbusDaemon,
      ["--session", "--nofork", "--nopidfile", `--address=unix:path=${join(this.#run, "bus")}`, "--print-address=1"],
      {},
      (chunk) => {
        addressLine += chunk.toString("utf8");
        if (addressLine.includes("\n")) gotAddress();
      },
    );
    await this.#waitReady(dbusPart, "printing its bus address", async () => {
      await Promise.race([addressSeen, sleep(POLL_MS)]);
      return addressLine.includes("\n");
    });
    this.env.DBUS_SESSION_BUS_ADDRESS = addressLine.split("\n")[0]!.trim();
    lap("dbus");

    guardUsocketClose(); // usocket frees a closing socket's libuv handle too early (util/usocket-guard.ts)
    const bus = dbus.sessionBus({ busAddress: this.env.DBUS_SESSION_BUS_ADDRESS });
    bus.on("error", (err: unknown) => this.#log.debug({ err: errorMessage(err) }, "bring-up bus connection error"));
    try {
      // 2. PipeWire: ready when its socket exists. 3. WirePlumber: ready once it has created the
      // "default" metadata (the session manager has loaded its policy).
      const pw = await this.#spawnPart("pipewire", this.#programs.pipewire, [], {});
      await this.#waitReady(pw, "creating its socket pipewire-0", async () => isSocket(join(this.#run, "pipewire-0")));
      lap("pipewire");
      const wp = await this.#spawnPart("wireplumber", this.#programs.wireplumber, [], {});
      await this.#waitReady(wp, 'publishing the "default" metadata (pw-cli ls Metadata)', async () => {
        const out = await run(this.#programs.pwCli, ["ls", "Metadata"], this.#childEnv(), 3000);
        return /metadata\.name = "default"/.test(out);
      });
      lap("wireplumber");

      // 4. sway, headless, software rendering.
      const swayEnv: Record<string, string> = {
        WLR_BACKENDS: "headless",
        WLR_HEADLESS_OUTPUTS: "1",
        WLR_LIBINPUT_NO_DEVICES: "1",
        WLR_RENDERER: "pixman",
      };
      // sway 1.7 refuses to run as root unless setuid/setgid fail (see native/preload/no-setuid.c).
      if (process.getuid?.() === 0) swayEnv.LD_PRELOAD = this.#helpers.noSetuid;
      const sway = await this.#spawnPart("sway", this.#programs.sway, ["-c", join(root, "config", "sway", "config")], swayEnv);
      // sway ignores a SWAYSOCK it is given and always uses $XDG_RUNTIME_DIR/sway-ipc.<uid>.<pid>.sock;
      // the exec wrapper keeps the pid, so we know it in advance.
      const swaysock = join(this.#run, `sway-ipc.${process.getuid?.() ?? 0}.${sway.pid}.sock`);
      this.env.SWAYSOCK = swaysock;
      await this.#waitReady(sway, `answering on its IPC socket with output ${OUTPUT_NAME}`, async () => {
        if (!isSocket(swaysock)) return false;
        const outputs = JSON.parse(await this.swaymsg("-t", "get_outputs", "-r")) as SwayOutput[];
        return outputs.some((o) => o.name === OUTPUT_NAME && o.active);
      });
      // Its Wayland socket: the only wayland-N in our private runtime dir.
      const display = readdirSync(this.#run).find((f) => /^wayland-\d+$/.test(f) && isSocket(join(this.#run, f)));
      if (!display) throw new DesktopStartError("sway", "answers on IPC but has no wayland-N socket", sway.tail());
      this.env.WAYLAND_DISPLAY = display;
      lap("sway");

      // Services the bus starts on demand must see the compositor too.
      await bus.call(
        new dbus.Message({
          destination: "org.freedesktop.DBus",
          path: "/org/freedesktop/DBus",
          interface: "org.freedesktop.DBus",
          member: "UpdateActivationEnvironment",
          signature: "a{ss}",
          body: [{ ...this.env }],
        }),
      );

      // 5. xdpw, started by us (with its preload) before xdg-desktop-portal can ask the bus to activate
      // one; the service-file override in $XDG_DATA_HOME covers a later re-activation.
      const xdpw = await this.#spawnPart("xdpw", this.#programs.xdpw, ["-l", "INFO"], { LD_PRELOAD: this.#helpers.xdpwShm });
      await this.#waitReady(xdpw, "owning org.freedesktop.impl.portal.desktop.wlr on the bus", () =>
        nameHasOwner(bus, "org.freedesktop.impl.portal.desktop.wlr"),
      );
      lap("xdpw");

      // 6. xdg-desktop-portal. Only ask it for a property once it owns its name: a call to an unowned
      // name would make the bus activate a second portal.
      const portal = await this.#spawnPart("portal", this.#programs.portal, [], {});
      await this.#waitReady(portal, "owning org.freedesktop.portal.Desktop and answering ScreenCast.AvailableSourceTypes", async () => {
        if (!(await nameHasOwner(bus, "org.freedesktop.portal.Desktop"))) return false;
        const types = await getProperty(bus, "org.freedesktop.portal.Desktop", "/org/freedesktop/portal/desktop", "org.freedesktop.portal.ScreenCast", "AvailableSourceTypes");
        return typeof types === "number" && types > 0;
      });
      lap("portal");
    } finally {
      bus.disconnect();
    }
    this.#log.info({ root, display: this.env.WAYLAND_DISPLAY, readyAtMs: mark, pids: Object.fromEntries(this.#pids) }, "headless desktop ready");
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
    writeFileSync(
      join(services, "org.freedesktop.impl.portal.desktop.wlr.service"),
      ["[D-BUS Service]", "Name=org.freedesktop.impl.portal.desktop.wlr", `Exec=${env} LD_PRELOAD=${this.#helpers.xdpwShm} ${this.#programs.xdpw} -l INFO`, ""].join("\n"),
    );
    // xdg-desktop-portal activates the document portal at startup, which FUSE-mounts $XDG_RUNTIME_DIR/doc
    // (plus a fusermount3 helper). Screen casting does not use it; without it there is no mount that
    // could outlive a crash or block removing the runtime dir. The portal carries on without it.
    const falseBin = which("false") ?? "/bin/false";
    writeFileSync(join(services, "org.freedesktop.portal.Documents.service"), ["[D-BUS Service]", "Name=org.freedesktop.portal.Documents", `Exec=${falseBin}`, ""].join("\n"));
  }

  /** Environment for processes inside the desktop: the agent's, minus the outer session, plus ours. */
  #childEnv(extra: Record<string, string> = {}): Record<string, string> {
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !SCRUB_ENV.includes(k) && !k.startsWith("WLR_")) env[k] = v;
    return { ...env, ...this.env, ...extra };
  }

  async #spawnPart(name: string, command: string, args: string[], extraEnv: Record<string, string>, onStdout?: (c: Buffer) => void): Promise<Part> {
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
    this.#parts.push(part);
    this.#pids.set(name, part.pid);
    void part.exited.then((info) => {
      if (this.#closing) return;
      this.#log.warn({ part: name, pid: part.pid, ...info, output: part.tail(10) }, "desktop part exited");
      // During start() the failure surfaces as start()'s rejection instead.
      if (this.#started) this.safeEmit("part-exited", { part: name, code: info.code, signal: info.signal });
    });
    return part;
  }

  /** Polls `probe` until it returns true, the part exits, or the deadline passes. */
  async #waitReady(part: Part, what: string, probe: () => Promise<boolean>): Promise<void> {
    const deadline = performance.now() + this.#readyTimeoutMs;
    let lastError = "";
    for (;;) {
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
    return run(this.#programs.swaymsg, args, this.#childEnv(), 5000);
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
   * anything in its process group) first.
   */
  async spawnClient(cmd: string, args: string[], opts: SpawnClientOptions = {}): Promise<ChildProcess> {
    this.#assertOpen();
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
    await Promise.all([...this.#clients].map((c) => c.stop(STOP_GRACE_MS)));
    for (const part of [...this.#parts].reverse()) {
      const info = await part.stop(STOP_GRACE_MS);
      this.#log.debug({ part: part.name, ...info }, "desktop part stopped");
    }
    // Services the bus started on demand (permission store, document portal) exit when the bus goes
    // away; make sure of it.
    await this.#sweep();
    for (const p of [...this.#parts, ...this.#clients]) p.closeLog();
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
    for (const p of [...this.#clients, ...[...this.#parts].reverse()]) p.killNow();
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
function run(cmd: string, args: string[], env: Record<string, string>, timeoutMs: number): Promise<string> {
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
