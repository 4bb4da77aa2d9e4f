/**
 * The contract between the encode stage and the rtc stage. One encoded video source is shared by all
 * viewers of a desktop (or a camera); each viewer's peer session reads its frames and sends it
 * requests. Implemented by the native encoder pipeline (agent/encode/) and, for cameras, by the RTSP
 * relay; consumed by agent/rtc/.
 */
import type { TypedEmitter } from "../util/events.js";
import type { CursorMode, CursorPosition } from "../protocol/control.js";

export interface EncodedFrame {
  /** One H.264 access unit in Annex-B form (start codes). Keyframes are IDR and carry SPS and PPS. */
  data: Buffer;
  keyframe: boolean;
  /** 1, 2, ... per source; a gap means frames were dropped before they were encoded (not after). */
  seq: number;
  width: number;
  height: number;
  /** Wall clock (ms since the epoch, fractional) when PipeWire delivered the source frame. */
  captureTimeMs: number;
  /** Wall clock (ms since the epoch, fractional) when the encoded frame reached JavaScript. */
  readyTimeMs: number;
  /** Time spent in the encoder for this frame, µs. */
  encodeUs: number;
  /** Presentation time on a 90 kHz clock (RTP video clock), from the capture timestamp. */
  rtpTimestamp: number;
  /** Which backend produced it: "x264", "openh264", "vaapi", "nvenc". */
  backend: string;
  /** A re-encode of an unchanged screen (encode refresh_interval_ms); absent on sources without refreshes. */
  refresh?: boolean;
}

export interface H264Format {
  /** profile_idc, constraint flags and level_idc of what is really produced, as in SDP: "42e01f", "42e02a", "4d0028". */
  profileLevelId: string;
  /** 1: FU-A / STAP-A (non-interleaved). */
  packetizationMode: 1;
}

/** `rung-switch`: a viewer moves to this rung (docs/streaming.md) and starts at its next keyframe. */
export type KeyframeReason = "pli" | "fir" | "new-viewer" | "api" | "recovery" | "rung-switch";

/** Where the pointer is: hidden, drawn into the picture (embedded), or sent apart (metadata: `cursor` events). */
export type { CursorMode };

/** The pointer, from the producer's cursor metadata, in the captured frame's pixels (the position as on the wire). */
export interface CursorUpdate extends CursorPosition {
  /** Bumps when the bitmap changes. */
  shapeSerial: number;
  /** The bitmap (RGBA), present only when shapeSerial changed (or on the first update); 0x0: the pointer is hidden. */
  shape?: { width: number; height: number; rgba: Buffer };
}

export type EncodedSourceEvents = {
  frame: [EncodedFrame];
  /** Pointer moves or changes shape (only sources whose cursorMode is "metadata"). */
  cursor: [CursorUpdate];
  /** Backend switch, format change (resize), fallback, ... */
  format: [H264Format & { width: number; height: number; backend: string }];
  error: [Error];
  close: [];
};

export interface RungOptions {
  /** Output size as a fraction of the source's (each dimension, rounded down to even), 0.1..1. */
  scale: number;
  /** Initial bitrate (bit/s). */
  bitrateBps: number;
}

export interface EncodedVideoSource extends TypedEmitter<EncodedSourceEvents> {
  /**
   * Optional: opens a lower rung on the same capture (a second encoder of a smaller picture, its own
   * bitrate and keyframes; docs/streaming.md). Its frames' `rtpTimestamp` come from the same capture
   * clock as this source's, so a viewer can switch between the two at a keyframe. Closed with this
   * source (or before, by the caller). Rejects when no encoder can open for it.
   */
  openRung?(opts: RungOptions): Promise<EncodedVideoSource>;
  readonly format: H264Format | null;
  /** Asks for an IDR on the next frame. The source rate-limits these itself (see its docs). */
  requestKeyframe(reason: KeyframeReason): void;
  /** The encoder's target, in bits per second. With several viewers the rtc stage decides what to ask for. */
  setTargetBitrate(bps: number): void;
  readonly targetBitrate: number;
  /** Where the pointer is; absent means "embedded" (whatever pointer there is, it is in the picture). */
  readonly cursorMode?: CursorMode;
  close(): Promise<void> | void;
  readonly closed: boolean;
}
