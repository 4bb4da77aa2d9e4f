import type { Config } from "../config/schema.js";
import type { Logger } from "../log/logger.js";
import type { DesktopStatus, SharedDesktop } from "../desktop/index.js";
import { DesktopCapture } from "../capture/desktop-capture.js";
import { TypedEmitter } from "../util/events.js";
import { InvalidStateError, WlError } from "../util/errors.js";
import { VideoEncoder } from "./encoder.js";
import { chooseDmabufCapture, probeEncoders } from "./probe.js";
import type { EncodeMetrics } from "./metrics.js";
import type { CursorMode, EncodedSourceEvents, EncodedVideoSource, H264Format, KeyframeReason, RungOptions } from "./types.js";

/** How long an open waits for a restarting headless desktop (a restart takes ~0.5 s, more after backoff). */
const DESKTOP_WAIT_MS = 15_000;
/**
 * A capture that ends on our own desktop waits this long for the desktop to name the part that died
 * (the capture often notices first): the viewers then learn the cause, not only its effect.
 */
const CAUSE_WAIT_MS = 500;

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
  readonly #desktop: SharedDesktop | undefined;
  readonly #onDesktopState = (s: DesktopStatus): void => {
    if (s.state !== "running" && s.captureLost) this.#fail(new WlError("desktop-down", s.reason));
  };
  /** Ended: by #fail (from outside) or by close(); nothing ends it twice. */
  #failed = false;
  #pendingEnd: { err: WlError; priority: number } | undefined;
  #endTimer: NodeJS.Timeout | undefined;
  #closing: Promise<void> | undefined;
  #closed = false;

  private constructor(capture: DesktopCapture, encoder: VideoEncoder, log: Logger, config: Config, desktop?: SharedDesktop) {
    super();
    this.capture = capture;
    this.#desktop = desktop;
    this.encoder = encoder;
    this.#log = log;
    this.#config = config;
    encoder.on("frame", (f) => this.safeEmit("frame", f));
    encoder.on("format", (f) => this.safeEmit("format", f));
    encoder.on("error", (e) => this.safeEmit("error", e));
    // The encoder stops by itself when its capture stream ends: that is the capture ending.
    encoder.on("close", () => this.#endedOutside(new WlError("encoder-closed", "the video encoder stopped"), 0));
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
    capture.on("ended", (e) => this.#endedOutside(new WlError("capture-ended", `screen capture ended (${e.reason}): ${e.message}`), 1));
    // On our own desktop, a part that dies ends the picture at once, with the part's name as the reason.
    desktop?.headless?.on("state", this.#onDesktopState);
  }

  /**
   * The capture or the encoder ended by itself. On our own desktop that is usually a part that died,
   * which the desktop names a little later: wait for it (#onDesktopState fails at once with it), else
   * end with the most telling of the effects seen (priority: the capture's over the encoder's).
   */
  #endedOutside(err: WlError, priority: number): void {
    if (this.#failed || this.#closing) return;
    if (!this.#pendingEnd || priority > this.#pendingEnd.priority) this.#pendingEnd = { err, priority };
    if (this.#endTimer) return;
    const waitForCause = this.#desktop?.headless?.status.state === "running";
    this.#endTimer = setTimeout(() => this.#fail(this.#pendingEnd!.err), waitForCause ? CAUSE_WAIT_MS : 0);
  }

  /** Ends the source from outside: one `error` with the reason, then close. */
  #fail(err: WlError): void {
    clearTimeout(this.#endTimer);
    if (this.#failed || this.#closing) return;
    this.#failed = true;
    this.#log.warn({ err: err.message }, "video source ended");
    this.safeEmit("error", err);
    void this.close();
  }

  static async open(opts: DesktopVideoSourceOptions): Promise<DesktopVideoSource> {
    const { config, desktop, log } = opts;
    // A restarting desktop is waited for; one that is down says why (and the viewer hears it).
    await desktop.headless?.whenRunning(DESKTOP_WAIT_MS);
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
    // On our headless desktop every cast gets the current picture at once, also on a still screen
    // (native/preload/xdpw-shm.c: plain copies at each new stream's start).
    const source = new DesktopVideoSource(capture, encoder, log, config, desktop);
    // A part that died while this source was opening.
    if (desktop.headless) source.#onDesktopState(desktop.headless.status);
    return source;
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
    // Before the encoder closes: its `close` event must not count as an end from outside.
    this.#failed = true;
    clearTimeout(this.#endTimer);
    this.#closing ??= (async () => {
      this.#desktop?.headless?.off("state", this.#onDesktopState);
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
