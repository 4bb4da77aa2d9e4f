import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import type { Logger } from "../log/logger.js";
import type { Metrics } from "./metrics.js";
import { HostCheck } from "../signaling/host-check.js";

export type ReadinessCheck = () => { ok: boolean; detail: string };

/**
 * The metrics listener, separate from the signaling port and on loopback by default:
 * `/metrics` (Prometheus text), `/healthz` (the process answers), `/readyz` (every readiness check
 * passes; 503 names the ones that do not). Like the signaling port it answers only requests whose Host
 * names it (localhost, an IP literal, `metrics.host`, `server.allowed_hosts`): the counters say who is
 * watching and the readiness details name the desktop's parts, nothing for a DNS-rebinding page to read.
 */
export class MetricsServer {
  readonly #server: Server;
  readonly #checks = new Map<string, ReadinessCheck>();
  #closed = false;

  private constructor(server: Server) {
    this.#server = server;
  }

  static async open(opts: { host: string; port: number; metrics: Metrics; log: Logger; allowedHosts?: readonly string[] }): Promise<MetricsServer> {
    // The request handler is made before the object it reports on; it reads the object through this box.
    const box: { self?: MetricsServer } = {};
    const hosts = new HostCheck(opts.allowedHosts ?? [], opts.host);
    const server = createServer((req, res) => {
      const url = req.url ?? "/";
      const wrongHost = hosts.refusal(req.headers.host);
      if (wrongHost !== undefined) {
        res.writeHead(421, { "content-type": "text/plain; charset=utf-8", "x-content-type-options": "nosniff", connection: "close" }).end(`${wrongHost}\n`);
        return;
      }
      if (req.method !== "GET" && req.method !== "HEAD") {
        res.writeHead(405, { allow: "GET, HEAD" }).end();
        return;
      }
      if (url === "/metrics") {
        opts.metrics.registry.metrics().then(
          (text) => res.writeHead(200, { "content-type": opts.metrics.registry.contentType }).end(text),
          (err: unknown) => {
            opts.log.error({ err }, "metrics collection failed");
            res.writeHead(500).end();
          },
        );
      } else if (url === "/healthz") {
        res.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
      } else if (url === "/readyz") {
        const failing = box.self ? box.self.#failing() : ["starting"];
        if (failing.length === 0) res.writeHead(200, { "content-type": "text/plain" }).end("ready\n");
        else res.writeHead(503, { "content-type": "text/plain" }).end(`not ready: ${failing.join("; ")}\n`);
      } else {
        res.writeHead(404).end();
      }
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(opts.port, opts.host, () => {
        server.off("error", reject);
        resolve();
      });
    });
    const self = new MetricsServer(server);
    box.self = self;
    opts.log.info({ address: self.url }, "metrics listening");
    return self;
  }

  get address(): AddressInfo {
    return this.#server.address() as AddressInfo;
  }

  get url(): string {
    const a = this.address;
    return `http://${a.family === "IPv6" ? `[${a.address}]` : a.address}:${a.port}`;
  }

  addReadinessCheck(name: string, check: ReadinessCheck): void {
    this.#checks.set(name, check);
  }

  #failing(): string[] {
    const out: string[] = [];
    for (const [name, check] of this.#checks) {
      try {
        const r = check();
        if (!r.ok) out.push(`${name}: ${r.detail}`);
      } catch (err) {
        out.push(`${name}: ${String(err)}`);
      }
    }
    return out;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
