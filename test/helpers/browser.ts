import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium, type Browser, type BrowserContext } from "playwright-core";

export const CHROMIUM = process.env.WL_TEST_CHROMIUM ?? "/usr/lib/chromium/chromium";

/**
 * A real headless Chromium, started by us (so its pid is ours to kill) and driven over CDP by
 * playwright-core. Flags from docs/notes: headless=new without GPU or sandbox (root), no mDNS host
 * candidates (the agent cannot resolve .local names), autoplay allowed.
 */
export class TestBrowser {
  readonly browser: Browser;
  readonly context: BrowserContext;
  readonly #proc: ChildProcess;
  readonly #dir: string;
  readonly #exited: Promise<void>;
  #closed = false;

  private constructor(browser: Browser, context: BrowserContext, proc: ChildProcess, dir: string, exited: Promise<void>) {
    this.browser = browser;
    this.context = context;
    this.#proc = proc;
    this.#dir = dir;
    this.#exited = exited;
  }

  get pid(): number {
    return this.#proc.pid!;
  }

  static async launch(extraArgs: string[] = []): Promise<TestBrowser> {
    const dir = mkdtempSync(join(tmpdir(), "wl-chromium-"));
    const args = [
      "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--autoplay-policy=no-user-gesture-required", "--disable-features=WebRtcHideLocalIpsWithMdns",
      "--remote-debugging-port=0", `--user-data-dir=${dir}`, ...extraArgs, "about:blank",
    ];
    // Its own process group, so that close() can also reach the zygote and renderers by the group id.
    const proc = spawn(CHROMIUM, args, { stdio: ["ignore", "ignore", "pipe"], detached: true });
    const exited = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
    const kill = (): void => {
      try {
        if (proc.pid !== undefined) process.kill(proc.pid, "SIGKILL");
      } catch {
        // gone
      }
    };
    try {
      const ws = await new Promise<string>((resolve, reject) => {
        let text = "";
        const t = setTimeout(() => reject(new Error(`chromium did not start within 20 s: ${text.slice(-500)}`)), 20_000);
        proc.once("error", (e) => {
          clearTimeout(t);
          reject(e);
        });
        proc.once("exit", (code) => {
          clearTimeout(t);
          reject(new Error(`chromium exited (${code}): ${text.slice(-500)}`));
        });
        proc.stderr!.on("data", (d: Buffer) => {
          text += d.toString();
          const m = /DevTools listening on (ws:\/\/\S+)/.exec(text);
          if (m) {
            clearTimeout(t);
            resolve(m[1]!);
          }
        });
      });
      const browser = await chromium.connectOverCDP(ws);
      const context = browser.contexts()[0] ?? (await browser.newContext());
      return new TestBrowser(browser, context, proc, dir, exited);
    } catch (err) {
      kill();
      await exited;
      rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
      throw err;
    }
  }

  /** Idempotent: disconnects, kills Chromium by its pid (all its children die with it) and waits for it. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.browser.close().catch(() => undefined);
    if (this.#proc.exitCode === null && this.#proc.signalCode === null) {
      try {
        process.kill(this.#proc.pid!, "SIGTERM");
      } catch {
        // gone
      }
      const t = setTimeout(() => {
        try {
          process.kill(this.#proc.pid!, "SIGKILL");
        } catch {
          // gone
        }
      }, 3000);
      await this.#exited;
      clearTimeout(t);
    }
    try {
      process.kill(-this.#proc.pid!, "SIGKILL"); // anything of that group still alive
    } catch {
      // the group is gone
    }
    rmSync(this.#dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  }
}
