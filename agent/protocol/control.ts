/**
 * The wire types of the `control` data channel that the web client reads too: one definition, imported
 * by the agent (agent/rtc/control.ts re-exports them; agent/encode/types.ts builds its cursor event on
 * CursorPosition) and by web-client/src/main.ts (a type-only import: esbuild drops it, the bundle gets
 * no agent code). Types only and no imports, so that the browser's type check (web-client/tsconfig.json:
 * DOM, no Node types) can read this file. docs/streaming.md "Cursor" describes the messages.
 */

/**
 * Where the pointer is: "metadata": in `cursor` messages, the client draws it; "embedded": in the
 * picture, the client must not draw a second one; "hidden": nowhere.
 */
export type CursorMode = "hidden" | "embedded" | "metadata";

/** Sent when the control channel opens. */
export interface CursorModeMessage {
  type: "cursor-mode";
  mode: CursorMode;
}

/** The pointer's position in the captured frame's pixels (the encoded video may be scaled). */
export interface CursorPosition {
  x: number;
  y: number;
  hotspotX: number;
  hotspotY: number;
  /** Size of the captured frame the position refers to: the client scales by (shown video width / frameWidth). */
  frameWidth: number;
  frameHeight: number;
}

/**
 * The pointer bitmap: RGBA (straight alpha), base64; drawn `scale` times its size (large shapes are sent
 * downscaled). 0x0 (empty `rgba`): the pointer is hidden until a bitmap with a later serial comes.
 */
export interface CursorShapeMessage {
  serial: number;
  width: number;
  height: number;
  scale: number;
  rgba: string;
}

/**
 * The pointer (cursor mode "metadata" only). `shape` comes with the first message and whenever the
 * bitmap changes (`serial` names the bitmap in force). Rate-limited per viewer; the newest position wins.
 */
export interface CursorMessage extends CursorPosition {
  type: "cursor";
  serial: number;
  shape?: CursorShapeMessage;
}
