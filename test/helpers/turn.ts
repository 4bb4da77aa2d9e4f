import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const TURNSERVER = process.env.WL_TEST_TURNSERVER ?? "/usr/bin/turnserver";

export interface TurnServerOptions {
  /** Address to listen and relay on (not loopback: coturn refuses loopback peers by default). */
  ip: string;
  /** Long-term credential "user:password" (coturn --user). */
  user?: string;
  /** Shared secret for REST-style credentials (coturn --use-auth-secret --static-auth-secret). */
  secret?: string;
  /** Relay ports (coturn --min-port/--max-port). */
  relayPorts?: [number, number];
}

/** A port nothing listens on (TCP, and in practice UDP) on that address. */
export async function freePort(ip: string): Promise<number> {
  // A free TCP port on that address is, in practice, free for UDP too (the test sweeps nothing else here).
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, ip, () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/**
 * A real coturn `turnserver`, started as our child: no config file from /etc (-n), everything on the
 * command line, its own port, pid file and user database in a temp dir, no CLI, no TLS/DTLS listeners,
 * log to stdout (kept for the test's failure message). Stopped by its pid. The Debian package's own
 * service is never involved.
 */
export class TurnServer {
  readonly port: number;
  readonly ip: string;
  readonly #proc: ChildProcess;
  readonly #dir: string;
  readonly #exited: Promise<void>;
  #log = "";
  #closed = false;

  private constructor(ip: string, port: number, proc: ChildProcess, dir: string) {
    this.ip = ip;
    this.port = port;
    this.#proc = proc;
    this.#dir = dir;
    this.#exited = new Promise((r) => proc.once("exit", () => r()));
    proc.stdout!.on("data", (d: Buffer) => {
      this.#log += d.toString();
      if (this.#log.length > 200_000) this.#log = this.#log.slice(-100_000);
    });
  }

  get pid(): number {
    return this.#proc.pid!;
  }

  get url(): string {
    return `turn:${this.ip}:${this.port}?transport=udp`;
  }

  /** Everything turnserver printed so far. */
  get log(): string {
    return this.#log;
  }

  static async start(o: TurnServerOptions): Promise<TurnServer> {
    const dir = mkdtempSync(join(tmpdir(), "wl-turn-"));
    const port = await freePort(o.ip);
    const [minPort, maxPort] = o.relayPorts ?? [49_152, 49_252];
    const args = [
      "-n", "--no-cli", "--no-tls", "--no-dtls", "--log-file=stdout", "--simple-log", "--verbose",
      `--listening-ip=${o.ip}`, `--relay-ip=${o.ip}`, `--listening-port=${port}`,
      `--min-port=${minPort}`, `--max-port=${maxPort}`, "--realm=wl-webrtc.test", "--fingerprint",
      `--pidfile=${join(dir, "turnserver.pid")}`, `--userdb=${join(dir, "turndb")}`,
    ];
    if (o.secret !== undefined) args.push("--use-auth-secret", `--static-auth-secret=${o.secret}`);
    if (o.user !== undefined) args.push("--lt-cred-mech", `--user=${o.user}`);
    const proc = spawn(TURNSERVER, args, { stdio: ["ignore", "pipe", "pipe"] });
    const t = new TurnServer(o.ip, port, proc, dir);
    proc.stderr!.on("data", (d: Buffer) => {
      t.#log += d.toString();
    });
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`turnserver did not listen within 10 s:\n${t.#log.slice(-2000)}`)), 10_000);
        proc.once("error", (e) => {
          clearTimeout(timer);
          reject(e);
        });
        proc.once("exit", (code) => {
          clearTimeout(timer);
          reject(new Error(`turnserver exited (${code}):\n${t.#log.slice(-2000)}`));
        });
        const check = (): void => {
          // coturn 4.6 prints this once its listener and relay threads exist.
          if (/Total General servers: \d+/.test(t.#log)) {
            clearTimeout(timer);
            proc.stdout!.off("data", check);
            resolve();
          }
        };
        proc.stdout!.on("data", check);
        check();
      });
    } catch (err) {
      await t.close();
      throw err;
    }
    return t;
  }

  /** Idempotent: SIGTERM by pid (SIGKILL after 3 s), waits for the exit, removes the temp dir. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#proc.exitCode === null && this.#proc.signalCode === null) {
      try {
        process.kill(this.#proc.pid!, "SIGTERM");
      } catch {
        // gone
      }
      const k = setTimeout(() => {
        try {
          process.kill(this.#proc.pid!, "SIGKILL");
        } catch {
          // gone
        }
      }, 3000);
      await this.#exited;
      clearTimeout(k);
    }
    rmSync(this.#dir, { recursive: true, force: true });
  }
}
