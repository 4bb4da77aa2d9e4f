// Test helpers (not a test file): a private PipeWire + WirePlumber + session bus, and the native
// test producer (native/build/Release/pw_video_producer). Everything is started and stopped by pid.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";

/** Repository root, from dist/test/capture/ (compiled) or test/capture/ (source). */
export const REPO_ROOT = fileURLToPath(new URL(existsSync(fileURLToPath(new URL("../../../package.json", import.meta.url))) ? "../../../" : "../../", import.meta.url));
/** The native test programs: build/Release, or build/Asan with WL_NATIVE_BUILD=Asan (the sanitizer build,
 *  scripts/build-native.mjs with WL_WEBRTC_ASAN=1; docs/architecture.md "Memory checks"). */
export const NATIVE_RELEASE = join(REPO_ROOT, "native", "build", process.env.WL_NATIVE_BUILD === "Asan" ? "Asan" : "Release");

export function requireBinary(path: string, hint: string): string {
  if (!existsSync(path)) throw new Error(`${path} is missing: ${hint}`);
  return path;
}

function which(cmd: string, pkg: string): string {
  const r = spawnSync("sh", ["-c", `command -v ${cmd}`], { encoding: "utf8" });
  const p = r.stdout.trim();
  if (r.status !== 0 || p === "") throw new Error(`${cmd} not found: apt-get install ${pkg} (scripts/setup.sh installs it)`);
  return p;
}

async function waitUntil(what: string, timeoutMs: number, check: () => boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

async function stopPid(child: ChildProcess, name: string): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  process.kill(child.pid, "SIGTERM");
  const t = setTimeout(() => {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      process.stderr.write(`pw-env: ${name} (pid ${child.pid}) ignored SIGTERM, killing\n`);
      process.kill(child.pid, "SIGKILL");
    }
  }, 3000);
  await exited;
  clearTimeout(t);
}

export interface PipeWireEnv {
  dir: string;
  env: NodeJS.ProcessEnv;
  pids: number[];
  /** Last lines of the daemons' logs, for failure messages. */
  logs(): string;
  stop(): Promise<void>;
}

/**
 * dbus-daemon (session) -> pipewire -> wireplumber in a private XDG_RUNTIME_DIR (mode 0700); ready
 * once WirePlumber published the `default` metadata (notes: bring-up order).
 */
export async function startPipeWire(): Promise<PipeWireEnv> {
  const dbus = which("dbus-daemon", "dbus-daemon");
  const pipewire = which("pipewire", "pipewire");
  const wireplumber = which("wireplumber", "wireplumber");
  const pwCli = which("pw-cli", "pipewire-bin");
  const dir = mkdtempSync("/tmp/wl-capture-test-");
  for (const d of ["config", "data", "state"]) mkdirSync(join(dir, d), { mode: 0o700 });
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: dir,
    XDG_RUNTIME_DIR: dir,
    PIPEWIRE_RUNTIME_DIR: dir,
    XDG_CONFIG_HOME: join(dir, "config"),
    XDG_DATA_HOME: join(dir, "data"),
    XDG_STATE_HOME: join(dir, "state"),
    DBUS_SESSION_BUS_ADDRESS: `unix:path=${join(dir, "bus")}`,
    // No ALSA/v4l2/bluetooth devices here; keep WirePlumber from probing hardware we do not have.
    PIPEWIRE_LOG_SYSTEMD: "false",
  };
  const children: { child: ChildProcess; name: string }[] = [];
  const logFiles: string[] = [];
  const start = (name: string, cmd: string, args: string[]): ChildProcess => {
    const log = join(dir, `${name}.log`);
    logFiles.push(log);
    const fd = openSync(log, "a");
    const child = spawn(cmd, args, { env, stdio: ["ignore", fd, fd] });
    closeSync(fd);
    children.push({ child, name });
    return child;
  };
  const logs = (): string =>
    logFiles
      .filter((f) => existsSync(f))
      .map((f) => `--- ${f}\n${readFileSync(f, "utf8").split("\n").slice(-15).join("\n")}`)
      .join("\n");
  const stop = async (): Promise<void> => {
    for (const { child, name } of [...children].reverse()) await stopPid(child, name);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    start("dbus", dbus, ["--session", `--address=unix:path=${join(dir, "bus")}`, "--nofork", "--nopidfile"]);
    await waitUntil("the session bus socket", 5000, () => existsSync(join(dir, "bus")));
    start("pipewire", pipewire, []);
    await waitUntil("the pipewire socket", 5000, () => existsSync(join(dir, "pipewire-0")));
    start("wireplumber", wireplumber, []);
    await waitUntil("WirePlumber's default metadata", 10000, () => {
      const r = spawnSync(pwCli, ["ls", "Metadata"], { env, encoding: "utf8", timeout: 2000 });
      return r.stdout.includes('"default"');
    });
  } catch (err) {
    const text = logs();
    await stop();
    throw new Error(`${(err as Error).message}\n${text}`, { cause: err });
  }
  return { dir, env, pids: children.map((c) => c.child.pid ?? -1), logs, stop };
}

export interface ProducerOptions {
  width: number;
  height: number;
  fps?: number;
  damage?: boolean;
  /** The producer allocates memfd buffers itself, as xdg-desktop-portal-wlr does (else PipeWire's MemPtr ones). */
  memfd?: boolean;
}

/** The native test producer: a real `Video/Source` node whose content changes only on command. */
export class Producer {
  readonly child: ChildProcess;
  nodeId = -1;
  readonly lines: string[] = [];
  #buf = "";
  #waiters: { re: RegExp; from: number; resolve: (m: RegExpExecArray) => void }[] = [];

  private constructor(child: ChildProcess) {
    this.child = child;
    child.stdout!.setEncoding("utf8");
    child.stdout!.on("data", (d: string) => {
      this.#buf += d;
      let nl: number;
      while ((nl = this.#buf.indexOf("\n")) >= 0) {
        this.lines.push(this.#buf.slice(0, nl));
        this.#buf = this.#buf.slice(nl + 1);
      }
      this.#wake();
    });
  }

  static async start(pw: PipeWireEnv, o: ProducerOptions): Promise<Producer> {
    const bin = requireBinary(join(NATIVE_RELEASE, "pw_video_producer"), "build the addon: source scripts/env.sh && npx node-gyp rebuild --directory native");
    const args = ["--width", String(o.width), "--height", String(o.height), "--fps", String(o.fps ?? 30)];
    if (o.damage) args.push("--damage");
    if (o.memfd) args.push("--memfd");
    const p = new Producer(spawn(bin, args, { env: pw.env, stdio: ["pipe", "pipe", "inherit"] }));
    const m = await p.waitLine(/^node (\d+)$/, 5000);
    p.nodeId = Number(m[1]);
    return p;
  }

  #wake(): void {
    for (const w of [...this.#waiters]) {
      for (let i = w.from; i < this.lines.length; i++) {
        const m = w.re.exec(this.lines[i]!);
        if (m) {
          this.#waiters.splice(this.#waiters.indexOf(w), 1);
          w.resolve(m);
          break;
        }
      }
    }
  }

  /** Resolves with the first line (from `from`, default: all so far) matching `re`. */
  waitLine(re: RegExp, timeoutMs: number, from = 0): Promise<RegExpExecArray> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`producer: no line matching ${re} in ${timeoutMs} ms; got ${JSON.stringify(this.lines)}`)), timeoutMs);
      this.#waiters.push({ re, from, resolve: (m) => (clearTimeout(t), resolve(m)) });
      this.#wake();
    });
  }

  /** Sends a command and waits until the producer applied it (its next frame carries it). */
  async send(cmd: string): Promise<void> {
    const from = this.lines.length;
    this.child.stdin!.write(`${cmd}\n`);
    await this.waitLine(new RegExp(`^ok ${cmd.split(" ")[0]}$`), 3000, from);
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => this.child.once("exit", () => resolve()));
    this.child.stdin!.end();  // EOF: the producer quits by itself
    const t = setTimeout(() => this.child.pid !== undefined && process.kill(this.child.pid, "SIGKILL"), 3000);
    await exited;
    clearTimeout(t);
  }
}

/** Open fds of this process (the listing's own directory fd is counted every time, so it cancels out). */
export function countFds(): number {
  return readdirSync("/proc/self/fd").length;
}

export function countThreads(): number {
  return readdirSync("/proc/self/task").length;
}
