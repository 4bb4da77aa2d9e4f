/**
 * The signaling messages about a session's token that the web client reads too (types only and no
 * imports, like control.ts, so that the browser's type check can read this file). agent/signaling/
 * protocol.ts validates them; docs/protocol.md "Session lifetime" describes them.
 */

/**
 * Client to agent, after `welcome`: a fresh token for this session, to continue it past the current
 * token's expiry. Checked like hello's token, and it must name the same subject with at least the
 * session's role (the role of an open session never changes). Answered with `renewed`, or with an
 * `error` (`forbidden`, `ref: "token"`) that leaves the session as it was.
 */
export interface TokenMessage {
  type: "token";
  token: string;
  id?: string | number;
}

/** Agent to client: the fresh token was accepted; the session now ends at `expiresAt` (unless renewed again). */
export interface RenewedMessage {
  type: "renewed";
  /** The session's new end, seconds since the epoch (the later of the tokens' `exp`). */
  expiresAt: number;
  /** The session's role, unchanged. */
  role: "view" | "control";
  id?: string | number;
}

/** The close code that ends a session whose token was refused, revoked or expired. */
export type TokenCloseCode = 4401;

/** Close reasons of a live session ended because of its token. */
export type SessionEndReason = "unauthorized: expired" | "unauthorized: revoked";
