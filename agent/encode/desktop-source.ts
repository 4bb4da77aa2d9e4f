import type { Config } from "../config/schema.js";
import type { Logger } from "../log/logger.js";
import type { SharedDesktop } from "../desktop/index.js";
import { DesktopCapture } from "../capture/desktop-capture.js";
import { TypedEmitter } from "../util/events.js";
import { InvalidStateError, WlError } from "../util/errors.js";
import { VideoEncoder } from "./encoder.js";
import { chooseDmabufCapture, probeEncoders } from "./probe.js";
import type { EncodeMetrics } from "./metrics.js";
import type { CursorMode, EncodedSourceEvents, EncodedVideoSource, H264Format, KeyframeReason, RungOptions } from "./types.js";

export interface DesktopVideoSourceOptions {
  config: Config;
  desktop: SharedDesktop;
  log: Logger;
  metrics?: EncodeMetrics;
}

/**
 * The shared desktop as H.264: the portal + PipeWire capture feeding the native encoder, whose thread
 * reads the capture mailbox directly. The rtc stage opens one when the first viewer arrives and closes
 * it after the last leaves. Closing stops the encoder, then the capture stream, then the portal session.
 */
export class DesktopVideoSource extends TypedEmitter<EncodedSourceEvents> implements EncodedVideoSource {
  readonly capture: DesktopCapture;
  readonly encoder: VideoEncoder;
  readonly #log: Logger;
  #shapeSerial = -1;
  readonly #config: Config;
  readonly #rungs = new Set<VideoEncoder>();
  #closing: Promise<void> | undefined;
  #closed = false;

  private constructor(capture: DesktopCapture, encoder: VideoEncoder, log: Logger, config: Config) {
    super();
    this.capture = capture;
    this.encoder = encoder;
    this.#log = log;
    this.#config = config;
    encoder.on("frame", (f) => this.safeEmit("frame", f));
    encoder.on("format", (f) => this.safeEmit("format", f));
    encoder.on("error", (e) => this.safeEmit("error", e));
    encoder.on("close", () => void this.close());
    capture.on("cursor", (c) => {
      if (this.#closed || this.capture.stream.closed) return;
      const fmt = this.capture.stream.format;
      if (!fmt) return;
      let shape: { width: number; height: number; rgba: Buffer } | undefined;
      if (c.shapeSerial !== this.#shapeSerial) {
        if (c.shapeWidth === 0 || c.shapeHeight === 0) {
          // An empty bitmap: the producer hides the pointer.
          this.#shapeSerial = c.shapeSerial;
          shape = { width: 0, height: 0, rgba: Buffer.alloc(0) };
        } else {
          const s = this.capture.stream.cursorShape();
          if (s) {
            this.#shapeSerial = s.serial;
            shape = { width: s.width, height: s.height, rgba: s.rgba };
          }
        }
      }
      this.safeEmit("cursor", {
        x: c.x, y: c.y, hotspotX: c.hotspotX, hotspotY: c.hotspotY, frameWidth: fmt.width, frameHeight: fmt.height,
        shapeSerial: this.#shapeSerial, ...(shape ? { shape } : {}),
      });
    });
    capture.on("ended", (e) => {
      this.safeEmit("error", new WlError("capture-ended", `screen capture ended (${e.reason}): ${e.message}`));
      void this.close();
    });
  }

  static async open(opts: DesktopVideoSourceOptions): Promise<DesktopVideoSource> {
    const { config, desktop, log } = opts;
    // Zero-copy capture only when the encoder that will run is VA-API on a render node.
    const dmabuf = chooseDmabufCapture(probeEncoders(config.encode.backends), config.encode.backends);
    log.info({ dmabufDevice: dmabuf.device, reason: dmabuf.reason }, "capture buffers");
    const capture = await DesktopCapture.open({ capture: config.capture, stateDir: config.state_dir, busAddress: desktop.env.DBUS_SESSION_BUS_ADDRESS, log, dmabuf });
    let encoder: VideoEncoder;
    try {
      encoder = await VideoEncoder.open({ capture: capture.stream, config: config.encode, log: log.child({ stage: "encode" }), ...(opts.metrics ? { metrics: opts.metrics } : {}) });
    } catch (err) {
      await capture.close();
      throw err;
    }
    // On our headless desktop every cast gets the current picture at once (native/preload/xdpw-shm.c,
    // fix 2), also on a still screen. (A cursor move, tried before, draws nothing there: the seat has no
    // pointer device, so sway shows no cursor.)
    return new DesktopVideoSource(capture, encoder, log, config);
  }

  /** What the portal granted: "metadata" sends `cursor` events; "embedded" draws the pointer into the picture. */
  get cursorMode(): CursorMode {
    return this.capture.portal.cursorMode;
  }

  get format(): H264Format | null {
    return this.encoder.closed ? null : this.encoder.format;
  }

  get targetBitrate(): number {
    return this.encoder.targetBitrate;
  }

  get closed(): boolean {
    return this.#closed;
  }

  requestKeyframe(reason: KeyframeReason): void {
    if (!this.encoder.closed) this.encoder.requestKeyframe(reason);
  }

  setTargetBitrate(bps: number): void {
    if (!this.encoder.closed) this.encoder.setTargetBitrate(bps);
  }

  /**
   * A lower rung: a second native encoder on the same capture stream (its own mailbox, so each encoder
   * takes frames at its own pace), of a picture scaled by `scale`, at its own bitrate. Its encode
   * metrics are not counted in the main encoder's (the rtc stage counts rungs). Closed with this source.
   */
  async openRung(opts: RungOptions): Promise<EncodedVideoSource> {
    if (this.#closing) throw new InvalidStateError("openRung: the video source is closed");
    const rung = await VideoEncoder.open({
      capture: this.capture.stream,
      config: this.#config.encode,
      log: this.#log.child({ stage: "encode", rung: opts.scale }),
      outputScale: opts.scale,
      bitrateBps: opts.bitrateBps,
    });
    this.#rungs.add(rung);
    rung.once("close", () => this.#rungs.delete(rung));
    return rung;
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      for (const r of [...this.#rungs]) r.close();
      this.encoder.close();
      await this.capture.close();
      this.#closed = true;
      this.safeEmit("close");
      this.removeAllListeners();
    })();
    return this.#closing;
  }
}
