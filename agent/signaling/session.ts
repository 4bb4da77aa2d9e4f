import { randomBytes } from "node:crypto";
import type { WebSocket } from "ws";
import { TypedEmitter } from "../util/events.js";
import type { Role } from "../auth/tokens.js";
import type { ClientMessage, ServerMessage } from "./protocol.js";

/** Above this many unsent bytes the client is not reading: it is cut off rather than buffered forever. */
export const MAX_BUFFERED_BYTES = 4 * 1024 * 1024;

export interface SessionInfo {
  role: Role;
  subject: string;
  /** The id of the token given at hello (later ones: `tokenIds`). */
  jti: string;
  /** The hello token's expiry (the session's current end: `expiresAt`). */
  expiresAt: number;
  remoteAddress: string;
}

export type SessionEvents = {
  /** offer / answer / candidate from the client, already validated. */
  message: [ClientMessage];
  close: [{ code: number; reason: string }];
};

/**
 * One authenticated signaling connection. Later stages hang their peer connection off it and close
 * it with the session. `close()` is idempotent and `close` is emitted exactly once.
 */
export class Session extends TypedEmitter<SessionEvents> {
  readonly id = randomBytes(9).toString("base64url");
  readonly info: SessionInfo;
  readonly #ws: WebSocket;
  readonly #onSent: (type: ServerMessage["type"]) => void;
  readonly #tokenIds = new Set<string>();
  #expiresAt: number;
  #closed = false;

  /** @internal Created by the signaling server once the hello is accepted. */
  constructor(ws: WebSocket, info: SessionInfo, onSent: (type: ServerMessage["type"]) => void) {
    super();
    this.#ws = ws;
    this.info = info;
    this.#onSent = onSent;
    this.#tokenIds.add(info.jti);
    this.#expiresAt = info.expiresAt;
  }

  /** When the session ends unless a fresh token continues it (seconds since the epoch). */
  get expiresAt(): number {
    return this.#expiresAt;
  }

  /** The ids of every token this session presented: revoking any of them ends it. */
  get tokenIds(): ReadonlySet<string> {
    return this.#tokenIds;
  }

  /** @internal A fresh token (already checked) continues the session; the later expiry wins. */
  renew(jti: string, expiresAt: number): void {
    this.#tokenIds.add(jti);
    this.#expiresAt = Math.max(this.#expiresAt, expiresAt);
  }

  get closed(): boolean {
    return this.#closed;
  }

  get role(): Role {
    return this.info.role;
  }

  /** Sends a message; false when the session is closed. A client that stops reading is cut off. */
  send(msg: ServerMessage): boolean {
    if (this.#closed) return false;
    if (this.#ws.bufferedAmount > MAX_BUFFERED_BYTES) {
      this.close(4413, "slow consumer: not reading");
      return false;
    }
    this.#ws.send(JSON.stringify(msg));
    this.#onSent(msg.type);
    return true;
  }

  close(code = 1000, reason = "bye"): void {
    if (this.#closed) return;
    this.#closed = true;
    closeSocket(this.#ws, code, reason);
    this.safeEmit("close", { code, reason });
    this.removeAllListeners();
  }

  /** @internal The socket went away underneath us. */
  socketClosed(code: number, reason: string): void {
    if (this.#closed) return;
    this.#closed = true;
    this.safeEmit("close", { code, reason });
    this.removeAllListeners();
  }

  /** @internal */
  deliver(msg: ClientMessage): boolean {
    if (this.listenerCount("message") === 0) return false;
    this.safeEmit("message", msg);
    return true;
  }
}

/** Closes with a code and a reason that fits a close frame (123 bytes), then makes sure it goes. */
export function closeSocket(ws: WebSocket, code: number, reason: string): void {
  let r = reason;
  while (Buffer.byteLength(r) > 123) r = r.slice(0, -1);
  try {
    if (ws.readyState === ws.OPEN || ws.readyState === ws.CONNECTING) ws.close(code, r);
  } catch {
    ws.terminate();
    return;
  }
  // A peer that never answers the close handshake must not keep the socket (and its memory) alive.
  const t = setTimeout(() => ws.terminate(), 2000);
  t.unref();
  ws.once("close", () => clearTimeout(t));
}
