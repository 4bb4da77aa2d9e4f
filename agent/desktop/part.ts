import { spawn, type ChildProcess, type StdioOptions } from "node:child_process";
import { closeSync, openSync, renameSync, writeSync } from "node:fs";
import type { Logger } from "../log/logger.js";

/** How a process ended: exit code, or the signal that killed it. */
export interface ExitInfo {
  code: number | null;
  signal: string | null;
}

/**
 * A log file with a size cap: past `maxBytes` it is renamed to `<file>.1` (replacing an older one) and
 * a new file starts, so a chatty part costs at most twice the cap on disk and the newest lines are kept.
 * Writes are synchronous: the parts write little (a few lines per second at most), and an error message
 * built right after a failure must see everything that was written.
 */
export class BoundedLog {
  readonly path: string;
  readonly #maxBytes: number;
  #fd: number | undefined;
  #size = 0;

  constructor(path: string, maxBytes: number) {
    this.path = path;
    this.#maxBytes = maxBytes;
    this.#fd = openSync(path, "a", 0o600);
  }

  write(chunk: Buffer): void {
    if (this.#fd === undefined) return;
    try {
      if (this.#size + chunk.length > this.#maxBytes && this.#size > 0) {
        closeSync(this.#fd);
        renameSync(this.path, `${this.path}.1`);
        this.#fd = openSync(this.path, "w", 0o600);
        this.#size = 0;
      }
      writeSync(this.#fd, chunk);
      this.#size += chunk.length;
    } catch {
      // The runtime dir is being removed (close) or the disk is full: logging must never take the
      // desktop down.
      this.close();
    }
  }

  close(): void {
    if (this.#fd === undefined) return;
    try {
      closeSync(this.#fd);
    } catch {
      // already gone
    }
    this.#fd = undefined;
  }
}

/** Keeps the last `maxChars` characters of a text stream, for error messages. */
class Tail {
  #text = "";
  constructor(readonly maxChars: number) {}
  push(s: string): void {
    this.#text += s;
    if (this.#text.length > this.maxChars * 2) this.#text = this.#text.slice(-this.maxChars);
  }
  lines(n: number): string {
    const all = this.#text.slice(-this.maxChars).split("\n");
    if (all.at(-1) === "") all.pop();
    return all.slice(-n).join("\n");
  }
}

export interface PartSpawnOptions {
  /** Name used in logs, errors and the `part-exited` event. */
  name: string;
  /** wl-pdeathsig-exec: makes the process die when this Node process dies (even on SIGKILL). */
  execWrapper: string;
  command: string;
  args: string[];
  env: Record<string, string>;
  /** stdout and stderr of the process go here (bounded). */
  logFile: string;
  logMaxBytes: number;
  log: Logger;
  cwd?: string;
  /** Also called with each stdout chunk (dbus-daemon prints its address there). */
  onStdout?: (chunk: Buffer) => void;
}

/**
 * One child process of the desktop. It runs in its own process group (so a Ctrl-C aimed at the agent's
 * terminal does not hit it, and stop() reaches whatever it forked), under the pdeathsig exec wrapper
 * (so it dies with the agent), with its output captured into a bounded log file and a tail kept in
 * memory for error messages.
 */
export class Part {
  readonly name: string;
  readonly pid: number;
  readonly logFile: string;
  readonly child: ChildProcess;
  /** Resolves when the process has exited (never rejects). */
  readonly exited: Promise<ExitInfo>;
  #exit: ExitInfo | undefined;
  readonly #tail = new Tail(8192);
  readonly #logFileWriter: BoundedLog;

  private constructor(opts: PartSpawnOptions, child: ChildProcess, pid: number, writer: BoundedLog) {
    this.name = opts.name;
    this.child = child;
    this.pid = pid;
    this.logFile = opts.logFile;
    this.#logFileWriter = writer;
    const log = opts.log.child({ part: opts.name, pid });
    let partial = "";
    const onData = (chunk: Buffer): void => {
      writer.write(chunk);
      const text = chunk.toString("utf8");
      this.#tail.push(text);
      // One log record per line, at debug: the file has everything, the logger gets it structured.
      const lines = (partial + text).split("\n");
      partial = lines.pop() ?? "";
      if (partial.length > 4096) {
        lines.push(partial);
        partial = "";
      }
      for (const line of lines) if (line !== "") log.debug(line);
    };
    child.stdout?.on("data", (c: Buffer) => {
      onData(c);
      opts.onStdout?.(c);
    });
    child.stderr?.on("data", onData);
    this.exited = new Promise<ExitInfo>((resolve) => {
      // Prefer 'close' (all output read, so the tail is complete), but do not wait for it long: a
      // process the part started can inherit its stdout/stderr and keep the pipes open (dbus-daemon's
      // activated services do).
      child.once("exit", (code: number | null, signal: NodeJS.Signals | null) => {
        const done = (): void => {
          if (this.#exit) return;
          this.#exit = { code, signal };
          resolve(this.#exit);
        };
        const t = setTimeout(done, 200);
        child.once("close", () => {
          clearTimeout(t);
          done();
        });
      });
    });
  }

  /** Starts the process; rejects if it cannot be spawned at all. */
  static async spawn(opts: PartSpawnOptions): Promise<Part> {
    const writer = new BoundedLog(opts.logFile, opts.logMaxBytes);
    const stdio: StdioOptions = ["ignore", "pipe", "pipe"];
    // -p: the wrapper checks that we are still its parent after setting PR_SET_PDEATHSIG.
    const child = spawn(opts.execWrapper, ["-p", String(process.pid), "--", opts.command, ...opts.args], {
      env: opts.env,
      stdio,
      detached: true,
      cwd: opts.cwd,
    });
    try {
      await new Promise<void>((resolve, reject) => {
        child.once("spawn", resolve);
        child.once("error", reject);
      });
    } catch (err) {
      writer.close();
      throw new Error(`cannot start ${opts.name} (${opts.command}): ${(err as Error).message}`, { cause: err });
    }
    // Spawn errors after this point (kill on a gone process) are not interesting.
    child.on("error", () => {});
    return new Part(opts, child, child.pid!, writer);
  }

  /** Exit status once the process has exited, else undefined. */
  get exitInfo(): ExitInfo | undefined {
    return this.#exit;
  }

  get running(): boolean {
    return this.#exit === undefined;
  }

  /** The last `n` lines of the process's output. */
  tail(n = 25): string {
    return this.#tail.lines(n);
  }

  /** Sends a signal to the part's whole process group. */
  signal(sig: NodeJS.Signals): void {
    if (!this.running) return;
    try {
      process.kill(-this.pid, sig);
    } catch {
      // The group is already gone: fall back to the process itself (it may have left its group).
      try {
        process.kill(this.pid, sig);
      } catch {
        // gone
      }
    }
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the process has exited. */
  async stop(graceMs: number): Promise<ExitInfo> {
    if (!this.running) return this.#exit!;
    this.signal("SIGTERM");
    let timer: NodeJS.Timeout | undefined;
    const killed = await Promise.race([
      this.exited.then(() => false),
      new Promise<boolean>((r) => (timer = setTimeout(() => r(true), graceMs))),
    ]);
    clearTimeout(timer);
    if (killed) this.signal("SIGKILL");
    const info = await this.exited;
    // Whatever else was left in its group (it exited, its children may not have).
    try {
      process.kill(-this.pid, "SIGKILL");
    } catch {
      // no such group: nothing left
    }
    return info;
  }

  /** Stops writing the log file (before the runtime dir is removed). */
  closeLog(): void {
    this.#logFileWriter.close();
  }

  /** Synchronous last resort for process exit: no waiting possible. */
  killNow(): void {
    this.signal("SIGKILL");
    this.#logFileWriter.close();
  }
}
