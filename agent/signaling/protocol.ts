import { z } from "zod";
import type { RenewedMessage } from "../protocol/signaling.js";

/**
 * The signaling protocol, version 1: JSON text messages over one WebSocket, each an object with a
 * `type`. docs/protocol.md is the reference for clients; keep it in step with this file.
 */
export const PROTOCOL_VERSION = 1;
/** The WebSocket subprotocol the agent speaks; a client may also offer `bearer.<token>` beside it. */
export const SUBPROTOCOL = "wl-webrtc.v1";
export const BEARER_PREFIX = "bearer.";
export const SIGNALING_PATH = "/signal";

/** Close codes. 1000/1001/1009 are the standard ones; 4xxx are the agent's own. */
export const CloseCode = {
  normal: 1000,
  goingAway: 1001,
  tooBig: 1009,
  badMessage: 4400,
  unauthorized: 4401,
  unsupportedVersion: 4406,
  helloTimeout: 4408,
  idleTimeout: 4410,
  slowConsumer: 4413,
  rateLimited: 4429,
  internalError: 4500,
  serverFull: 4503,
} as const;
export type CloseCodeName = keyof typeof CloseCode;

/** `error.code` values sent in error messages. */
export type ErrorCode =
  | "bad-json"
  | "bad-message"
  | "unexpected"
  | "forbidden"
  | "unavailable"
  | "internal";

const id = z.union([z.string().max(64), z.number().int()]).optional();
const sdp = z.string().min(1).max(256 * 1024);

const candidateInit = z.strictObject({
  candidate: z.string().max(1024),
  sdpMid: z.string().max(64).nullable().optional(),
  sdpMLineIndex: z.number().int().min(0).max(1023).nullable().optional(),
  usernameFragment: z.string().max(256).nullable().optional(),
});

export const helloSchema = z.strictObject({
  type: z.literal("hello"),
  id,
  v: z.number().int(),
  token: z.string().max(8192).optional(),
  client: z.strictObject({ name: z.string().max(128).optional(), version: z.string().max(64).optional() }).optional(),
});

const offerSchema = z.strictObject({ type: z.literal("offer"), id, sdp });
const answerSchema = z.strictObject({ type: z.literal("answer"), id, sdp });
/** `candidate: null` means end of candidates. */
const candidateSchema = z.strictObject({ type: z.literal("candidate"), id, candidate: candidateInit.nullable() });
const byeSchema = z.strictObject({ type: z.literal("bye"), id, reason: z.string().max(256).optional() });
const pingSchema = z.strictObject({ type: z.literal("ping"), id });
/** A fresh token for the open session (agent/protocol/signaling.ts TokenMessage). */
const tokenSchema = z.strictObject({ type: z.literal("token"), id, token: z.string().max(8192) });

/** Messages a client may send after hello. */
export const clientMessageSchema = z.discriminatedUnion("type", [offerSchema, answerSchema, candidateSchema, byeSchema, pingSchema, tokenSchema]);

export type Hello = z.infer<typeof helloSchema>;
export type ClientMessage = z.infer<typeof clientMessageSchema>;
export type ClientMessageType = ClientMessage["type"];
export type CandidateInit = z.infer<typeof candidateInit>;

/** Messages the agent sends. */
export type ServerMessage =
  | {
      type: "welcome"; v: number; session: string; role: "view" | "control"; subject: string; expiresAt: number;
      limits: { maxMessageBytes: number; messagesPerSecond: number };
      /** STUN/TURN servers for the browser's RTCPeerConnection (present when a streaming stage runs). */
      iceServers?: { urls: string; username?: string; credential?: string }[];
    }
  | { type: "offer"; sdp: string }
  | { type: "answer"; id?: string | number; sdp: string }
  | { type: "candidate"; candidate: CandidateInit | null }
  | { type: "error"; code: ErrorCode; message: string; id?: string | number; ref?: string }
  | { type: "bye"; reason: string }
  | { type: "pong"; id?: string | number; time: number }
  | RenewedMessage;

export const CLIENT_TYPES = ["hello", "offer", "answer", "candidate", "bye", "ping", "token"] as const;

/** Describes a validation failure in one line: which field, and what was wrong. */
export function describeZodError(err: z.ZodError): string {
  const first = err.issues[0];
  if (!first) return "invalid message";
  const path = first.path.length > 0 ? first.path.map(String).join(".") : "(message)";
  const more = err.issues.length > 1 ? ` (+${err.issues.length - 1} more)` : "";
  return `${path}: ${first.message}${more}`;
}
