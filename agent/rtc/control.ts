import { z } from "zod";
import { describeZodError } from "../signaling/protocol.js";
import type { CursorMessage, CursorModeMessage } from "../protocol/control.js";

// The cursor messages are defined once, with the web client: agent/protocol/control.ts.
export type { CursorMessage, CursorMode, CursorModeMessage, CursorPosition, CursorShapeMessage } from "../protocol/control.js";

/**
 * Messages on the `control` data channel (JSON text, one object per message, each with a `type`).
 * docs/streaming.md lists them for client authors. Every bad message is answered with an `error` and
 * changes nothing else; the channel stays open.
 */
export const CONTROL_LABEL = "control";
/** Reserved for the input stage: accepted for control-role sessions, refused (closed) for view-role ones. */
export const INPUT_LABEL = "input";
export const MAX_CONTROL_MESSAGE_BYTES = 16 * 1024;

const id = z.union([z.string().max(64), z.number().int()]).optional();

export const controlMessageSchema = z.discriminatedUnion("type", [
  /** Asks for a `stats` message now (they also come once a second). */
  z.strictObject({ type: z.literal("stats-request"), id }),
  /** Asks for a keyframe (merged with other requests; see rtc.keyframe_min_interval_ms). */
  z.strictObject({ type: z.literal("keyframe"), id }),
  /** Quality preferences: a ceiling for this viewer's bitrate; null removes it. */
  z.strictObject({ type: z.literal("quality"), id, maxBitrateBps: z.number().int().min(50_000).max(1_000_000_000).nullable() }),
  /** Clock sync: the agent answers `pong` with its own wall clock, so the client can estimate latency. */
  z.strictObject({ type: z.literal("ping"), id, t: z.number().finite() }),
]);
export type ControlMessage = z.infer<typeof controlMessageSchema>;

export type ControlErrorCode = "bad-json" | "bad-message" | "too-big" | "not-implemented" | "forbidden";

/** Messages the agent sends on `control` (and `error` on `input`). */
export type AgentControlMessage =
  | { type: "stats"; stats: ViewerStats }
  | { type: "ok"; id?: string | number; ref: string }
  | { type: "pong"; id?: string | number; t: number; agentTimeMs: number }
  | CursorModeMessage
  | CursorMessage
  | { type: "error"; code: ControlErrorCode; message: string; id?: string | number; ref?: string };

export interface ViewerStats {
  /** Agent wall clock (ms since the epoch) when this was made. */
  agentTimeMs: number;
  targetBitrateBps: number;
  encoderBitrateBps: number;
  rttMs: number | null;
  lossFraction: number;
  queueingDelayMs: number;
  abrState: string;
  framesSent: number;
  framesDropped: number;
  keyframesSent: number;
  packetsSent: number;
  packetsRetransmitted: number;
  nacks: number;
  plis: number;
  firs: number;
  width: number;
  height: number;
  backend: string;
  /** Maps the stream's RTP clock to capture time: the client's estimate of end-to-end latency uses it. */
  clock: { rtpTimestamp: number; captureTimeMs: number } | null;
}

export type ParseResult = { ok: true; msg: ControlMessage } | { ok: false; error: AgentControlMessage & { type: "error" } };

/** Validates one message from the control channel. Never throws. */
export function parseControlMessage(data: string | Buffer): ParseResult {
  const size = typeof data === "string" ? Buffer.byteLength(data) : data.length;
  if (size > MAX_CONTROL_MESSAGE_BYTES) return { ok: false, error: { type: "error", code: "too-big", message: `messages are at most ${MAX_CONTROL_MESSAGE_BYTES} bytes` } };
  if (typeof data !== "string") return { ok: false, error: { type: "error", code: "bad-message", message: "expected a text message" } };
  let parsed: unknown;
  try {
    parsed = JSON.parse(data);
  } catch {
    return { ok: false, error: { type: "error", code: "bad-json", message: "not valid JSON" } };
  }
  const r = controlMessageSchema.safeParse(parsed);
  if (r.success) return { ok: true, msg: r.data };
  const type = typeof (parsed as { type?: unknown } | null)?.type === "string" ? ((parsed as { type: string }).type.slice(0, 64)) : undefined;
  const rawId = (parsed as { id?: unknown } | null)?.id;
  const msgId = (typeof rawId === "number" && Number.isInteger(rawId)) || (typeof rawId === "string" && rawId.length <= 64) ? (rawId as string | number) : undefined;
  return { ok: false, error: { type: "error", code: "bad-message", message: describeZodError(r.error), ...(type !== undefined ? { ref: type } : {}), ...(msgId !== undefined ? { id: msgId } : {}) } };
}
