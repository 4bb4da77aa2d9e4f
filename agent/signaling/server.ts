import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { readFileSync } from "node:fs";
import type { AddressInfo } from "node:net";
import type { Duplex } from "node:stream";
import { fileURLToPath } from "node:url";
import { WebSocketServer, type WebSocket, type RawData } from "ws";
import type { Logger } from "../log/logger.js";
import type { Metrics } from "../metrics/metrics.js";
import type { ServerConfig, SignalingConfig } from "../config/schema.js";
import type { Role, TokenService } from "../auth/tokens.js";
import { AddressRateLimiter, TokenBucket } from "./limits.js";
import { PendingPool, addressGroup, type PendingEntry } from "./admission.js";
import { HostCheck } from "./host-check.js";
import {
  BEARER_PREFIX, CLIENT_TYPES, CloseCode, PROTOCOL_VERSION, SIGNALING_PATH, SUBPROTOCOL,
  clientMessageSchema, describeZodError, helloSchema, type ErrorCode, type ServerMessage,
} from "./protocol.js";
import { Session, closeSocket } from "./session.js";
import { SessionRegistry } from "./registry.js";
import { StaticFiles } from "./static.js";
import { TypedEmitter } from "../util/events.js";
import { WlError } from "../util/errors.js";

export interface SignalingServerOptions {
  server: ServerConfig;
  signaling: SignalingConfig;
  tokens: TokenService;
  metrics: Metrics;
  log: Logger;
}

export type SignalingServerEvents = {
  /** A client passed hello. Attach to `session.on("message")` to handle offers and candidates. */
  session: [Session];
};

const DEFAULT_WEB_ROOT = fileURLToPath(new URL("../../../web-client/dist/", import.meta.url));

/**
 * HTTP and WebSocket on one port: the web client's static files, and the signaling WebSocket at
 * `/signal`. Every refusal has a documented HTTP status or close code, and one log line (no token).
 */
export class SignalingServer extends TypedEmitter<SignalingServerEvents> {
  readonly registry: SessionRegistry;
  /** Set by the streaming stage: the ICE servers each new session's `welcome` carries. */
  iceServersFor: ((subject: string) => { urls: string; username?: string; credential?: string }[]) | undefined;
  readonly #opts: SignalingServerOptions;
  readonly #http: Server;
  readonly #wss: WebSocketServer;
  readonly #addressLimiter: AddressRateLimiter;
  readonly #static: StaticFiles;
  readonly #connections = new Set<WebSocket>();
  /** Connections not yet welcomed: a budget of their own (signaling.max_pending), apart from sessions. */
  readonly #pending: PendingPool;
  readonly #hosts: HostCheck;
  /** One per open session: checks it against the revocation list. */
  readonly #revocationChecks = new Set<() => void>();
  #revocationWatch: { close(): void } | undefined;
  readonly #tls: boolean;
  #closed = false;

  private constructor(opts: SignalingServerOptions, http: Server, tls: boolean) {
    super();
    this.#opts = opts;
    this.#http = http;
    this.#tls = tls;
    this.registry = new SessionRegistry(opts.metrics);
    this.#addressLimiter = new AddressRateLimiter(opts.signaling.connections_per_second_per_address, opts.signaling.connection_burst_per_address);
    this.#pending = new PendingPool(opts.signaling.max_pending, opts.signaling.max_pending_per_address);
    this.#hosts = new HostCheck(opts.server.allowed_hosts, opts.server.host);
    this.#static = new StaticFiles(opts.server.web_root === "" ? DEFAULT_WEB_ROOT : opts.server.web_root);
    this.#wss = new WebSocketServer({
      noServer: true,
      maxPayload: opts.signaling.max_message_bytes,
      perMessageDeflate: false, // compression bombs and CPU cost are not worth it for small JSON messages
      handleProtocols: (protocols) => (protocols.has(SUBPROTOCOL) ? SUBPROTOCOL : false),
    });
    http.on("request", (req, res) => this.#onRequest(req, res));
    http.on("upgrade", (req, socket, head) => this.#onUpgrade(req, socket, head));
    http.on("clientError", (_err, socket) => socket.destroy());
  }

  /** Starts listening; resolves once the port is bound. */
  static async open(opts: SignalingServerOptions): Promise<SignalingServer> {
    const { server: cfg, log } = opts;
    const tls = cfg.tls_cert !== "" && cfg.tls_key !== "";
    let http: Server;
    if (tls) {
      let cert: Buffer, key: Buffer;
      try {
        cert = readFileSync(cfg.tls_cert);
        key = readFileSync(cfg.tls_key);
      } catch (err) {
        throw new WlError("config", `server.tls_cert / server.tls_key: cannot read (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
      }
      http = createHttpsServer({ cert, key });
    } else {
      http = createHttpServer();
    }
    http.headersTimeout = 10_000;
    http.requestTimeout = 30_000;
    const self = new SignalingServer(opts, http, tls);
    await new Promise<void>((resolve, reject) => {
      http.once("error", reject);
      http.listen(cfg.port, cfg.host, () => {
        http.off("error", reject);
        resolve();
      });
    });
    // `wl-webrtc revoke` runs in another process: the file is how it reaches live sessions.
    self.#revocationWatch = opts.tokens.revocations.watch(() => {
      for (const check of [...self.#revocationChecks]) check();
    });
    if (!tls && !isLoopback(cfg.host))
      log.warn({ host: cfg.host }, "signaling listens on a non-loopback address without TLS: tokens and SDP travel in clear; set server.tls_cert and server.tls_key");
    log.info({ url: self.url, tls }, "signaling listening");
    return self;
  }

  get address(): AddressInfo {
    return this.#http.address() as AddressInfo;
  }

  get url(): string {
    const a = this.address;
    const host = a.family === "IPv6" ? `[${a.address}]` : a.address;
    return `${this.#tls ? "https" : "http"}://${host}:${a.port}`;
  }

  /** Open WebSocket connections, authenticated or not. */
  get connectionCount(): number {
    return this.#connections.size;
  }

  /** Open WebSocket connections not welcomed yet (at most signaling.max_pending). */
  get pendingCount(): number {
    return this.#pending.size;
  }

  get closed(): boolean {
    return this.#closed;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#revocationWatch?.close();
    this.registry.closeAll(CloseCode.goingAway, "agent shutting down");
    for (const ws of this.#connections) closeSocket(ws, CloseCode.goingAway, "agent shutting down");
    await new Promise<void>((resolve) => {
      this.#http.close(() => resolve());
      this.#http.closeAllConnections();
    });
    for (const ws of this.#connections) ws.terminate();
    this.#wss.close();
    this.removeAllListeners();
  }

  #onRequest(req: IncomingMessage, res: ServerResponse): void {
    const wrongHost = this.#hosts.refusal(req.headers.host);
    if (wrongHost !== undefined) {
      this.#opts.metrics.rejectedConnections.inc({ reason: "host" });
      this.#opts.log.info({ remote: req.socket.remoteAddress, status: 421, reason: "host", detail: req.headers.host?.slice(0, 100) }, "request refused");
      res.writeHead(421, { "content-type": "text/plain; charset=utf-8", "x-content-type-options": "nosniff", connection: "close" }).end(`${wrongHost}\n`);
      return;
    }
    if (req.url?.split("?")[0] === SIGNALING_PATH) {
      res.writeHead(426, { "content-type": "text/plain", upgrade: "websocket" }).end("use a WebSocket\n");
      return;
    }
    this.#static.serve(req, res);
  }

  /** Refuses an upgrade with an HTTP status; the body is `body` (default: the reason label) and a newline. */
  #reject(socket: Duplex, status: number, reason: string, remote: string, detail?: string, body = reason): void {
    this.#opts.metrics.rejectedConnections.inc({ reason });
    this.#opts.log.info({ remote, status, reason, detail }, "signaling connection refused");
    const text = `${status} ${STATUS_TEXT[status] ?? "Refused"}`;
    socket.end(`HTTP/1.1 ${text}\r\nconnection: close\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body) + 1}\r\n\r\n${body}\n`);
    socket.destroy();
  }

  #onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on("error", () => socket.destroy());
    const remote = req.socket.remoteAddress ?? "unknown";
    if (this.#closed) return this.#reject(socket, 503, "shutting-down", remote);
    const wrongHost = this.#hosts.refusal(req.headers.host);
    if (wrongHost !== undefined) return this.#reject(socket, 421, "host", remote, req.headers.host?.slice(0, 100), wrongHost);
    if (req.url?.split("?")[0] !== SIGNALING_PATH) return this.#reject(socket, 404, "wrong-path", remote);
    if (!this.#addressLimiter.take(remote)) return this.#reject(socket, 429, "address-rate", remote);
    const origin = req.headers.origin;
    if (origin !== undefined && !this.#originAllowed(origin, req.headers.host)) return this.#reject(socket, 403, "origin", remote, origin);
    const protocols = parseProtocols(req.headers["sec-websocket-protocol"]);
    const bearer = protocols.find((p) => p.startsWith(BEARER_PREFIX));
    if (protocols.length > 0 && !protocols.includes(SUBPROTOCOL)) return this.#reject(socket, 400, "subprotocol", remote);
    // Room among the connections that have not said hello (apart from the sessions' room), displacing
    // the oldest silent one of the biggest holder if need be (admission.ts).
    const group = addressGroup(remote);
    if (!this.#pending.admit(group).ok) return this.#reject(socket, 503, "pending-full", remote);
    // handleUpgrade completes synchronously (no verifyClient), so no other upgrade comes between the
    // admission above and #onConnection adding this one to the pool.
    this.#wss.handleUpgrade(req, socket, head, (ws) => this.#onConnection(ws, remote, group, bearer?.slice(BEARER_PREFIX.length)));
  }

  #originAllowed(origin: string, host: string | undefined): boolean {
    const allowed = this.#opts.server.allowed_origins;
    if (allowed.includes("*") || allowed.includes(origin)) return true;
    // Same origin: the page was served by this agent.
    try {
      const u = new URL(origin);
      // Host names are case-insensitive; URL has lowered the origin's already.
      return host !== undefined && u.host === host.toLowerCase() && u.protocol === (this.#tls ? "https:" : "http:");
    } catch {
      return false;
    }
  }

  #onConnection(ws: WebSocket, remote: string, group: string, headerToken: string | undefined): void {
    const { signaling: sig, metrics, log, tokens } = this.#opts;
    this.#connections.add(ws);
    const bucket = new TokenBucket(sig.messages_per_second, sig.message_burst);
    let state: "hello" | "auth" | "open" | "closed" = "hello";
    let session: Session | undefined;
    let strikes = 0;
    let alive = true;

    const sent = (type: ServerMessage["type"]): void => {
      metrics.signalingMessages.inc({ type, direction: "out" });
    };
    const send = (msg: ServerMessage): void => {
      if (session) {
        session.send(msg);
        return;
      }
      if (ws.readyState !== ws.OPEN) return;
      ws.send(JSON.stringify(msg));
      sent(msg.type);
    };
    const refuse = (code: number, reason: string, label: string, detail?: string): void => {
      if (state === "closed") return;
      state = "closed";
      metrics.rejectedConnections.inc({ reason: label });
      log.info({ remote, session: session?.id, code, reason: label, detail }, "signaling connection closed by the agent");
      if (session) session.close(code, reason);
      else closeSocket(ws, code, reason);
    };
    const answerError = (code: ErrorCode, message: string, ref?: string, id?: string | number): void => {
      send({ type: "error", code, message, ...(ref !== undefined ? { ref } : {}), ...(id !== undefined ? { id } : {}) });
    };
    const strike = (code: ErrorCode, message: string, ref?: string, id?: string | number): void => {
      answerError(code, message, ref, id);
      if (++strikes > sig.max_bad_messages) refuse(CloseCode.badMessage, "too many bad messages", "bad-messages");
    };

    // Until its welcome the connection lives in the pending pool; a newcomer may displace it while it is
    // silent (no message yet).
    const pending: PendingEntry = {
      group,
      silent: true,
      displace: () => {
        answerError("unexpected", "too many connections are waiting for hello: say hello at once after connecting");
        refuse(CloseCode.helloTimeout, "hello timeout: too many connections waiting for hello", "pending-evicted");
      },
    };
    this.#pending.add(pending);

    // The session lives as long as its tokens: it ends when the newest expires (with the same clock
    // tolerance hello gives), or at once when any of them is revoked.
    let expiryTimer: NodeJS.Timeout | undefined;
    const armExpiry = (): void => {
      if (expiryTimer !== undefined) clearTimeout(expiryTimer);
      if (!session) return;
      const left = (session.expiresAt + this.#opts.tokens.clockToleranceS) * 1000 - Date.now();
      // setTimeout holds at most ~24.8 days; a longer token is looked at again then.
      expiryTimer = setTimeout(() => {
        if (session && (session.expiresAt + this.#opts.tokens.clockToleranceS) * 1000 <= Date.now()) refuse(CloseCode.unauthorized, "unauthorized: expired", "token-expired");
        else armExpiry();
      }, Math.min(Math.max(0, left), 2 ** 31 - 1));
      expiryTimer.unref();
    };
    const checkRevoked = (): void => {
      if (session && [...session.tokenIds].some((id) => tokens.revocations.has(id))) refuse(CloseCode.unauthorized, "unauthorized: revoked", "token-revoked");
    };
    let renewing: Promise<void> = Promise.resolve();
    const renew = (token: string, id: string | number | undefined): void => {
      // In order, one at a time: a slow check never lands after a later one.
      renewing = renewing.then(async () => {
        const result = await tokens.verify(token);
        if (state !== "open" || !session || session.closed) return;
        if (!result.ok) {
          metrics.authFailures.inc({ reason: result.reason });
          strike("forbidden", `token refused: ${result.reason}`, "token", id);
          return;
        }
        const c = result.claims;
        if (c.sub !== session.info.subject) {
          strike("forbidden", "token refused: it names another subject; a session keeps its subject (connect again to change)", "token", id);
          return;
        }
        if (ROLE_RANK[c.role] < ROLE_RANK[session.role]) {
          strike("forbidden", `token refused: its role ${c.role} is below this session's role ${session.role} (connect again with it to change role)`, "token", id);
          return;
        }
        session.renew(c.jti, c.exp);
        armExpiry();
        log.info({ remote, session: session.id, jti: c.jti, expiresAt: session.expiresAt }, "session token renewed");
        send({ type: "renewed", expiresAt: session.expiresAt, role: session.role, ...(id !== undefined ? { id } : {}) });
        // A token revoked between its check and now is caught here.
        checkRevoked();
      }).catch((err: unknown) => {
        log.error({ err, remote }, "token renewal failed unexpectedly");
        refuse(CloseCode.internalError, "internal error", "internal");
      });
    };

    const helloTimer = setTimeout(() => {
      if (state === "hello" || state === "auth") {
        answerError("unexpected", `no valid hello within ${sig.hello_timeout_ms} ms`);
        refuse(CloseCode.helloTimeout, "hello timeout", "hello-timeout");
      }
    }, sig.hello_timeout_ms);
    const pingTimer = setInterval(() => {
      if (!alive) {
        refuse(CloseCode.idleTimeout, "idle timeout", "idle-timeout");
        ws.terminate();
        return;
      }
      alive = false;
      try {
        ws.ping();
      } catch {
        // the socket is going away; the close handler cleans up
      }
    }, Math.max(500, Math.floor(sig.idle_timeout_ms / 2)));
    helloTimer.unref();
    pingTimer.unref();
    ws.on("pong", () => {
      alive = true;
    });

    ws.on("close", (code, reasonBuf) => {
      clearTimeout(helloTimer);
      clearInterval(pingTimer);
      if (expiryTimer !== undefined) clearTimeout(expiryTimer);
      this.#revocationChecks.delete(checkRevoked);
      this.#pending.remove(pending);
      this.#connections.delete(ws);
      state = "closed";
      session?.socketClosed(code, reasonBuf.toString());
    });
    ws.on("error", (err) => {
      // ws reports oversized frames (1009) and protocol errors here before closing.
      const tooBig = (err as { code?: string }).code === "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH";
      if (state !== "closed") {
        metrics.rejectedConnections.inc({ reason: tooBig ? "too-big" : "ws-protocol" });
        log.info({ remote, session: session?.id, reason: tooBig ? "too-big" : "ws-protocol", detail: err.message }, "signaling connection closed by the agent");
        state = "closed";
      }
    });

    ws.on("message", (data: RawData, isBinary: boolean) => {
      if (state === "closed") return;
      alive = true;
      pending.silent = false;
      if (!bucket.take()) {
        refuse(CloseCode.rateLimited, "rate limited: too many messages", "message-rate");
        return;
      }
      if (isBinary) {
        metrics.signalingMessages.inc({ type: "invalid", direction: "in" });
        if (state === "hello") {
          answerError("bad-message", "expected a text message");
          refuse(CloseCode.badMessage, "expected hello", "bad-hello");
        } else strike("bad-message", "expected a text message");
        return;
      }
      let parsed: unknown;
      try {
        parsed = JSON.parse(rawToString(data));
      } catch {
        metrics.signalingMessages.inc({ type: "invalid", direction: "in" });
        if (state === "hello") {
          answerError("bad-json", "not valid JSON");
          refuse(CloseCode.badMessage, "expected hello", "bad-hello");
        } else strike("bad-json", "not valid JSON");
        return;
      }
      const type = typeof (parsed as { type?: unknown })?.type === "string" ? (parsed as { type: string }).type : undefined;
      const knownType = type !== undefined && (CLIENT_TYPES as readonly string[]).includes(type) ? type : "invalid";
      metrics.signalingMessages.inc({ type: knownType, direction: "in" });
      const msgId = pickId(parsed);

      if (state === "hello") {
        const hello = helloSchema.safeParse(parsed);
        if (!hello.success) {
          answerError("bad-message", type === "hello" ? `bad hello: ${describeZodError(hello.error)}` : "the first message must be hello", type, msgId);
          refuse(CloseCode.badMessage, "expected hello", "bad-hello");
          return;
        }
        if (hello.data.v !== PROTOCOL_VERSION) {
          answerError("bad-message", `protocol version ${hello.data.v} is not supported; this agent speaks ${PROTOCOL_VERSION}`, "hello", msgId);
          refuse(CloseCode.unsupportedVersion, `unsupported version; use ${PROTOCOL_VERSION}`, "version");
          return;
        }
        state = "auth";
        const token = hello.data.token ?? headerToken;
        tokens.verify(token).then(
          (result) => {
            if (state !== "auth") return; // closed meanwhile
            if (!result.ok) {
              metrics.authFailures.inc({ reason: result.reason });
              refuse(CloseCode.unauthorized, `unauthorized: ${result.reason}`, "auth", result.reason);
              return;
            }
            if (this.registry.size >= sig.max_sessions) {
              refuse(CloseCode.serverFull, "server full: too many sessions", "server-full");
              return;
            }
            clearTimeout(helloTimer);
            const c = result.claims;
            session = new Session(ws, { role: c.role, subject: c.sub, jti: c.jti, expiresAt: c.exp, remoteAddress: remote }, sent);
            state = "open";
            this.#pending.remove(pending);
            this.registry.add(session);
            armExpiry();
            this.#revocationChecks.add(checkRevoked);
            session.once("close", () => {
              if (expiryTimer !== undefined) clearTimeout(expiryTimer);
              this.#revocationChecks.delete(checkRevoked);
            });
            log.info({ remote, session: session.id, role: c.role, subject: c.sub, jti: c.jti }, "session opened");
            session.once("close", ({ code, reason }) => log.info({ session: session?.id, code, reason }, "session closed"));
            send({
              type: "welcome",
              v: PROTOCOL_VERSION,
              session: session.id,
              role: c.role,
              subject: c.sub,
              expiresAt: c.exp,
              limits: { maxMessageBytes: sig.max_message_bytes, messagesPerSecond: sig.messages_per_second },
              ...(this.iceServersFor ? { iceServers: this.iceServersFor(c.sub) } : {}),
            });
            this.safeEmit("session", session);
          },
          (err: unknown) => {
            log.error({ err, remote }, "token verification failed unexpectedly");
            refuse(CloseCode.internalError, "internal error", "internal");
          },
        );
        return;
      }
      if (state === "auth") {
        strike("unexpected", "wait for welcome before sending more", type, msgId);
        return;
      }
      // state === "open"
      const msg = clientMessageSchema.safeParse(parsed);
      if (!msg.success) {
        strike("bad-message", type === "hello" ? "hello was already accepted" : describeZodError(msg.error), type, msgId);
        return;
      }
      const m = msg.data;
      if (m.type === "bye") {
        session?.close(CloseCode.normal, m.reason ?? "bye");
        return;
      }
      if (m.type === "ping") {
        send({ type: "pong", ...(m.id !== undefined ? { id: m.id } : {}), time: Date.now() });
        return;
      }
      if (m.type === "token") {
        renew(m.token, m.id);
        return;
      }
      if (!session?.deliver(m)) answerError("unavailable", "this agent has no media to offer yet", m.type, m.id);
    });
  }
}

function rawToString(data: RawData): string {
  if (Buffer.isBuffer(data)) return data.toString("utf8");
  if (Array.isArray(data)) return Buffer.concat(data).toString("utf8");
  return Buffer.from(data).toString("utf8");
}

function pickId(v: unknown): string | number | undefined {
  const id = (v as { id?: unknown } | null)?.id;
  if (typeof id === "number" && Number.isInteger(id)) return id;
  if (typeof id === "string" && id.length <= 64) return id;
  return undefined;
}

function parseProtocols(header: string | undefined): string[] {
  if (header === undefined) return [];
  return header.split(",").map((s) => s.trim()).filter((s) => s !== "");
}

/** A fresh token may keep or raise the rank it grants, never lower it below the session's role. */
const ROLE_RANK: Record<Role, number> = { view: 0, control: 1 };

export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\./.test(host);
}

const STATUS_TEXT: Record<number, string> = {
  400: "Bad Request",
  403: "Forbidden",
  404: "Not Found",
  421: "Misdirected Request",
  429: "Too Many Requests",
  503: "Service Unavailable",
};
