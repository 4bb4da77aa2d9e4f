/**
 * Broken or partial desktops for the portal tests, in a private runtime dir: the cases the shared
 * HeadlessDesktop (agent/desktop/headless.ts, which the working-path tests use) deliberately does not
 * offer:
 *  - "bare-bus": a dbus-daemon with no portal and nothing activatable;
 *  - "portal-no-backend": xdg-desktop-portal with no backend (so no ScreenCast interface);
 *  - "xdpw-without-shim": sway + PipeWire + xdpw 0.7 WITHOUT the screencopy preload (notes, trap 2),
 *    so ScreenCast.Start really answers 2;
 *  - "test-backend": the real xdg-desktop-portal and PipeWire with a scripted backend behind them
 *    (test-backend.ts), for RemoteDesktop and Session.Closed, which xdpw 0.7 cannot produce.
 * sway still needs the setuid shim to run as root (trap 1): compiled from the C below into the
 * fixture's temporary dir. Every process it starts, and every process the bus daemon activates, is
 * stopped by pid in close().
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";

const execFileP = promisify(execFile);

/** sway 1.7 refuses to run as root unless setuid(0) fails after dropping privileges (trap 1). */
const NOROOT_C = `
#include <errno.h>
#include <sys/types.h>
int setuid(uid_t u) { (void)u; errno = EPERM; return -1; }
int setgid(gid_t g) { (void)g; errno = EPERM; return -1; }
`;

export type FixtureKind = "bare-bus" | "portal-no-backend" | "xdpw-without-shim" | "test-backend";

export interface FixtureHooks {
  /** "test-backend": start the backend on the bus (it must own its name before the portal starts). */
  beforePortal?: (d: TestDesktop) => Promise<void>;
}

interface Proc {
  name: string;
  child: ChildProcess;
  log: string[];
}

export class TestDesktop {
  readonly dir: string;
  readonly runtimeDir: string;
  readonly busAddress: string;
  readonly env: NodeJS.ProcessEnv;
  readonly #procs: Proc[] = [];
  #closed = false;

  private constructor(dir: string) {
    this.dir = dir;
    this.runtimeDir = join(dir, "run");
    this.busAddress = `unix:path=${join(this.runtimeDir, "bus")}`;
    this.env = {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      HOME: join(dir, "home"),
      XDG_RUNTIME_DIR: this.runtimeDir,
      XDG_CONFIG_HOME: join(dir, "config"),
      XDG_DATA_HOME: join(dir, "data"),
      XDG_STATE_HOME: join(dir, "state"),
      XDG_CACHE_HOME: join(dir, "cache"),
      XDG_CURRENT_DESKTOP: "sway",
      XDG_SESSION_TYPE: "wayland",
      DBUS_SESSION_BUS_ADDRESS: this.busAddress,
    };
  }

  static async start(kind: FixtureKind, hooks: FixtureHooks = {}): Promise<TestDesktop> {
    const d = new TestDesktop(await mkdtemp("/tmp/wl-portal-test-"));
    try {
      await d.#start(kind, hooks);
      return d;
    } catch (err) {
      await d.close();
      throw err;
    }
  }

  /** Pid of a process started here ("sway", "pipewire", "portal", ...), if it still runs. */
  pidOf(name: string): number | undefined {
    const p = this.#procs.find((x) => x.name === name && x.child.exitCode === null && x.child.signalCode === null);
    return p?.child.pid;
  }

  /** The log lines of one of the processes started here (for failure messages). */
  logOf(name: string): string {
    return this.#procs.find((p) => p.name === name)?.log.join("") ?? "";
  }

  async #start(kind: FixtureKind, hooks: FixtureHooks): Promise<void> {
    const e = this.env;
    for (const k of ["XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "HOME"] as const) {
      await mkdir(e[k]!, { recursive: true });
    }
    await mkdir(this.runtimeDir, { mode: 0o700 });
    await chmod(this.runtimeDir, 0o700);

    if (kind === "bare-bus") {
      // A bare bus: the PortalUnavailableError test. No service dirs at all, so nothing can be activated.
      const conf = join(this.dir, "bare-bus.conf");
      await writeFile(
        conf,
        `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>session</type><listen>${this.busAddress}</listen>
<policy context="default"><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/><allow own="*"/></policy>
</busconfig>`,
      );
      await this.#startBus(["--config-file", conf]);
      return;
    }

    if (kind === "portal-no-backend") {
      await this.#startBus(["--session"]);
      // xdg-desktop-portal 1.16 reads its backend list from XDG_DESKTOP_PORTAL_DIR when set.
      const empty = join(this.dir, "no-portals");
      await mkdir(empty);
      this.#spawn("portal", "/usr/libexec/xdg-desktop-portal", [], { ...e, XDG_DESKTOP_PORTAL_DIR: empty });
      await this.#waitName("org.freedesktop.portal.Desktop");
      return;
    }

    if (kind === "test-backend") {
      // No compositor: the scripted backend (test-backend.ts) stands behind the real portal, and the
      // real PipeWire answers OpenPipeWireRemote.
      await this.#startBus(["--session"]);
      await this.#startPipeWire();
      await hooks.beforePortal?.(this);
      const dir = join(this.dir, "portals");
      await mkdir(dir);
      await writeFile(
        join(dir, "wltest.portal"),
        "[portal]\nDBusName=org.freedesktop.impl.portal.desktop.wltest\nInterfaces=org.freedesktop.impl.portal.ScreenCast;org.freedesktop.impl.portal.RemoteDesktop;\nUseIn=sway;\n",
      );
      this.#spawn("portal", "/usr/libexec/xdg-desktop-portal", [], { ...e, XDG_DESKTOP_PORTAL_DIR: dir });
      await this.#waitName("org.freedesktop.portal.Desktop");
      return;
    }

    const noroot = join(this.dir, "noroot.so");
    await writeFile(join(this.dir, "noroot.c"), NOROOT_C);
    await run("gcc", ["-shared", "-fPIC", "-O2", "-o", noroot, join(this.dir, "noroot.c")]);

    // sway first: the bus daemon then gets WAYLAND_DISPLAY/SWAYSOCK in its activation environment.
    const swayConf = join(e.XDG_CONFIG_HOME!, "sway", "config");
    await mkdir(join(e.XDG_CONFIG_HOME!, "sway"), { recursive: true });
    await writeFile(swayConf, `output HEADLESS-1 mode 1280x720@30Hz\nxwayland disable\n`);
    const sway = this.#spawn("sway", "sway", ["-c", swayConf], {
      ...e,
      LD_PRELOAD: noroot,
      WLR_BACKENDS: "headless",
      WLR_LIBINPUT_NO_DEVICES: "1",
      WLR_RENDERER: "pixman",
    });
    const wl = await waitFor("the sway Wayland socket", 10_000, () =>
      readdirSync(this.runtimeDir).find((f) => /^wayland-\d+$/.test(f)),
    );
    const swaysock = await waitFor("the sway IPC socket", 10_000, () =>
      readdirSync(this.runtimeDir)
        .filter((f) => f.startsWith("sway-ipc.") && f.includes(`.${sway.pid}.`))
        .map((f) => join(this.runtimeDir, f))[0],
    );
    e.WAYLAND_DISPLAY = wl;
    e.SWAYSOCK = swaysock;

    // If xdg-desktop-portal activates xdpw again, it must come up the same way (no preload): an
    // explicit service file in XDG_DATA_HOME, which the session bus searches before /usr/share.
    const svcDir = join(e.XDG_DATA_HOME!, "dbus-1", "services");
    await mkdir(svcDir, { recursive: true });
    await writeFile(
      join(svcDir, "org.freedesktop.impl.portal.desktop.wlr.service"),
      "[D-BUS Service]\nName=org.freedesktop.impl.portal.desktop.wlr\nExec=/usr/libexec/xdg-desktop-portal-wlr\n",
    );
    const xdpwConf = join(e.XDG_CONFIG_HOME!, "xdg-desktop-portal-wlr");
    await mkdir(xdpwConf, { recursive: true });
    await writeFile(join(xdpwConf, "config"), "[screencast]\noutput_name=HEADLESS-1\nchooser_type=none\nmax_fps=30\n");

    await this.#startBus(["--session"]);

    await this.#startPipeWire();

    this.#spawn("xdpw", "/usr/libexec/xdg-desktop-portal-wlr", [], e);
    await this.#waitName("org.freedesktop.impl.portal.desktop.wlr");
    this.#spawn("portal", "/usr/libexec/xdg-desktop-portal", [], e);
    await this.#waitName("org.freedesktop.portal.Desktop");
  }

  async #startPipeWire(): Promise<void> {
    const e = this.env;
    this.#spawn("pipewire", "pipewire", [], e);
    await waitFor("the PipeWire socket", 10_000, () => existsSync(join(this.runtimeDir, "pipewire-0")) || undefined);
    this.#spawn("wireplumber", "wireplumber", [], e);
    await waitForAsync("WirePlumber's default metadata", 15_000, async () => {
      const r = await execFileP("pw-cli", ["ls", "Metadata"], { env: e }).catch(() => ({ stdout: "" }));
      return r.stdout.includes('"default"') || undefined;
    });
  }

  async #startBus(args: string[]): Promise<void> {
    this.#spawn("dbus", "dbus-daemon", [...args, "--nofork", "--nopidfile", `--address=${this.busAddress}`], this.env);
    await waitFor("the session bus socket", 10_000, () => existsSync(join(this.runtimeDir, "bus")) || undefined);
  }

  async #waitName(name: string): Promise<void> {
    await waitForAsync(`${name} on the test bus`, 15_000, async () => {
      const r = await execFileP(
        "dbus-send",
        [`--bus=${this.busAddress}`, "--print-reply", "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus.NameHasOwner", `string:${name}`],
        { env: this.env },
      ).catch(() => ({ stdout: "" }));
      return r.stdout.includes("boolean true") || undefined;
    });
  }

  #spawn(name: string, cmd: string, args: string[], env: NodeJS.ProcessEnv): ChildProcess {
    const child = spawn(cmd, args, { env, stdio: ["ignore", "pipe", "pipe"] });
    const p: Proc = { name, child, log: [] };
    const keep = (b: Buffer) => {
      p.log.push(b.toString());
      if (p.log.length > 400) p.log.splice(0, 100);
    };
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
    child.on("error", (err) => p.log.push(`spawn error: ${err.message}\n`));
    this.#procs.push(p);
    return child;
  }

  /**
   * Processes the bus activated for this desktop (xdg-permission-store, xdg-document-portal and its
   * fusermount3, a re-activated xdpw). dbus-daemon 1.14 daemonizes them (their parent is init), so
   * they are found by their environment: XDG_RUNTIME_DIR is this desktop's private runtime dir.
   */
  #activated(): number[] {
    const own = new Set(this.#procs.map((p) => p.child.pid));
    const needle = `XDG_RUNTIME_DIR=${this.runtimeDir}`;
    const out: number[] = [];
    for (const ent of readdirSync("/proc")) {
      if (!/^\d+$/.test(ent) || own.has(Number(ent)) || Number(ent) === process.pid) continue;
      try {
        if (readFileSync(`/proc/${ent}/environ`, "utf8").split("\0").includes(needle)) out.push(Number(ent));
      } catch {
        // Gone, or not ours to read.
      }
    }
    return out;
  }

  /** Stops every process by pid (portal side first, the bus last) and removes the temporary dir. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const order = ["portal", "xdpw", "wireplumber", "pipewire", "sway"];
    for (const name of order) {
      for (const p of this.#procs.filter((x) => x.name === name)) await stop(p.child.pid, p.child);
    }
    for (const pid of this.#activated()) await stop(pid);
    for (const p of this.#procs.filter((x) => x.name === "dbus")) await stop(p.child.pid, p.child);
    await rm(this.dir, { recursive: true, force: true });
  }
}

async function stop(pid: number | undefined, child?: ChildProcess): Promise<void> {
  if (pid === undefined) return;
  const alive = () => (child ? child.exitCode === null && child.signalCode === null : runningNotZombie(pid));
  if (!alive()) return;
  try {
    process.kill(pid, "SIGTERM");
  } catch {
    return;
  }
  const until = Date.now() + 3000;
  while (alive() && Date.now() < until) await sleep(20);
  if (alive()) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // Already gone.
    }
    while (alive() && Date.now() < until + 2000) await sleep(20);
  }
}

/** A process we did not spawn is reaped by its parent (init, for bus-activated ones), not us: a zombie counts as gone. */
function runningNotZombie(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

async function run(cmd: string, args: string[]): Promise<void> {
  try {
    await execFileP(cmd, args);
  } catch (err) {
    throw new Error(`test fixture: ${cmd} ${args.join(" ")} failed: ${(err as { stderr?: string }).stderr ?? String(err)}`, { cause: err });
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function waitFor<T>(what: string, ms: number, probe: () => T | undefined): Promise<T> {
  return waitForAsync(what, ms, async () => probe());
}

async function waitForAsync<T>(what: string, ms: number, probe: () => Promise<T | undefined>): Promise<T> {
  const until = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > until) throw new Error(`test fixture: timed out after ${ms} ms waiting for ${what}`);
    await sleep(25);
  }
}
