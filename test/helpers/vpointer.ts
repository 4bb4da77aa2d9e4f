import { execFile, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface, type Interface } from "node:readline";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);
const SOURCE = fileURLToPath(new URL("../../../test/helpers/c/vpointer.c", import.meta.url));

/**
 * A persistent wlroots virtual pointer on a Wayland desktop (test/helpers/c/vpointer.c, compiled here
 * with the system's cc and libwayland-client). It gives a headless seat a pointer, so sway shows a cursor,
 * and moves it to absolute output pixels. Stopped by its pid.
 */
export class VirtualPointer {
  readonly #proc: ChildProcess;
  readonly #lines: Interface;
  readonly #dir: string;
  readonly #exited: Promise<void>;
  #waiters: ((line: string) => void)[] = [];
  #stderr = "";
  #closed = false;

  private constructor(proc: ChildProcess, dir: string) {
    this.#proc = proc;
    this.#dir = dir;
    this.#exited = new Promise((r) => proc.once("exit", () => r()));
    proc.stderr!.on("data", (d: Buffer) => (this.#stderr += d.toString()));
    this.#lines = createInterface({ input: proc.stdout! });
    this.#lines.on("line", (l) => this.#waiters.shift()?.(l));
    proc.once("exit", () => {
      for (const w of this.#waiters.splice(0)) w(`exited: ${this.#stderr.trim()}`);
    });
  }

  static async start(env: NodeJS.ProcessEnv, width: number, height: number): Promise<VirtualPointer> {
    const dir = mkdtempSync(join(tmpdir(), "wl-vpointer-"));
    const bin = join(dir, "vpointer");
    try {
      const flags = (await run("pkg-config", ["--cflags", "--libs", "wayland-client"])).stdout.trim().split(/\s+/);
      await run("cc", ["-O1", "-o", bin, SOURCE, ...flags]);
    } catch (err) {
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`cannot build the virtual pointer helper (needs cc and libwayland-dev): ${String(err)}`, { cause: err });
    }
    const proc = spawn(bin, [String(width), String(height)], { env: { ...process.env, ...env }, stdio: ["pipe", "pipe", "pipe"] });
    const vp = new VirtualPointer(proc, dir);
    const first = await vp.#next();
    if (first !== "ready") {
      await vp.close();
      throw new Error(`virtual pointer did not start: ${first}`);
    }
    return vp;
  }

  #next(): Promise<string> {
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** Absolute move to output pixels; resolves once the compositor has processed it. */
  async move(x: number, y: number): Promise<void> {
    const answer = this.#next();
    this.#proc.stdin!.write(`move ${Math.round(x)} ${Math.round(y)}\n`);
    const a = await answer;
    if (a !== "ok") throw new Error(`virtual pointer: ${a}`);
  }

  /** Idempotent: closes stdin (the helper destroys its pointer and exits), SIGKILL by pid after 2 s. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#proc.exitCode === null && this.#proc.signalCode === null) {
      this.#proc.stdin!.end();
      const k = setTimeout(() => {
        try {
          process.kill(this.#proc.pid!, "SIGKILL");
        } catch {
          // gone
        }
      }, 2000);
      await this.#exited;
      clearTimeout(k);
    }
    this.#lines.close();
    rmSync(this.#dir, { recursive: true, force: true });
  }
}
