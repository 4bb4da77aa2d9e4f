import type { Config } from "./config/schema.js";
import type { Logger } from "./log/logger.js";
import { Metrics } from "./metrics/metrics.js";
import { MetricsServer } from "./metrics/server.js";
import { TokenService } from "./auth/tokens.js";
import { loadOrCreateSecret } from "./auth/secret.js";
import { SignalingServer } from "./signaling/server.js";
import { VERSION } from "./version.js";
import { HeadlessDesktop, detectSession } from "./desktop/index.js";
import { UnsupportedError } from "./util/errors.js";

export interface AgentOptions {
  config: Config;
  log: Logger;
  env?: NodeJS.ProcessEnv;
}

/**
 * The running agent: owns every long-lived part and closes them in reverse order of opening.
 * Parts are opened one by one; if one fails, those already open are closed before the error is thrown.
 */
export class Agent {
  readonly config: Config;
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly tokens: TokenService;
  #signaling: SignalingServer | undefined;
  #metricsServer: MetricsServer | undefined;
  #desktop: HeadlessDesktop | undefined;
  /** The environment of the desktop being shared: the user's session, or our headless one. */
  #desktopEnv: NodeJS.ProcessEnv = {};
  readonly #env: NodeJS.ProcessEnv;
  #closing: Promise<void> | undefined;

  private constructor(opts: AgentOptions, tokens: TokenService, metrics: Metrics) {
    this.config = opts.config;
    this.log = opts.log;
    this.tokens = tokens;
    this.metrics = metrics;
    this.#env = opts.env ?? process.env;
  }

  /** Makes the token service without starting anything (used by `wl-webrtc token`). */
  static tokenService(config: Config, env: NodeJS.ProcessEnv = process.env, log?: Logger): TokenService {
    const secret = loadOrCreateSecret(config.auth.secret_file, env, log);
    return new TokenService(secret, config.auth, TokenService.loadPublicKeys(config.auth.public_keys));
  }

  static async start(opts: AgentOptions): Promise<Agent> {
    const tokens = Agent.tokenService(opts.config, opts.env ?? process.env, opts.log);
    const agent = new Agent(opts, tokens, new Metrics(VERSION));
    try {
      await agent.#open();
    } catch (err) {
      await agent.close();
      throw err;
    }
    return agent;
  }

  async #open(): Promise<void> {
    const { config, log } = this;
    if (config.metrics.enabled) {
      this.#metricsServer = await MetricsServer.open({ host: config.metrics.host, port: config.metrics.port, metrics: this.metrics, log });
    }
    this.#signaling = await SignalingServer.open({ server: config.server, signaling: config.signaling, tokens: this.tokens, metrics: this.metrics, log });
    const signaling = this.#signaling;
    this.#metricsServer?.addReadinessCheck("signaling", () => ({ ok: !signaling.closed, detail: "signaling server is closed" }));
    await this.#openDesktop();
  }

  /** Finds the desktop to share: the user's Wayland session, or (by config, or when none is found) our own. */
  async #openDesktop(): Promise<void> {
    const { config, log } = this;
    const mode = config.desktop.mode;
    if (mode === "none") {
      log.info("desktop.mode is none: no desktop is shared");
      return;
    }
    if (mode !== "headless") {
      const status = await detectSession(this.#env);
      if (status.usable) {
        log.info({ display: status.waylandDisplay, reason: status.reason }, "sharing the user's Wayland session");
        this.#desktopEnv = {
          ...this.#env,
          ...(status.waylandDisplay ? { WAYLAND_DISPLAY: status.waylandDisplay } : {}),
          ...(status.busAddress ? { DBUS_SESSION_BUS_ADDRESS: status.busAddress } : {}),
        };
        return;
      }
      if (mode === "session")
        throw new UnsupportedError(`desktop.mode is "session" but no usable Wayland session was found: ${status.reason}`);
      log.info({ reason: status.reason }, "no Wayland session found: starting a headless desktop");
    }
    const desktop = await HeadlessDesktop.start({ width: config.desktop.width, height: config.desktop.height, refreshHz: config.desktop.refresh_hz, log: log.child({ stage: "desktop" }) });
    this.#desktop = desktop;
    this.#desktopEnv = { ...this.#env, ...desktop.env };
    desktop.on("part-exited", ({ part, code, signal }) => log.error({ part, code, signal }, "a part of the headless desktop exited"));
    log.info({ width: config.desktop.width, height: config.desktop.height, refreshHz: config.desktop.refresh_hz, runtimeDir: desktop.env.XDG_RUNTIME_DIR }, "headless desktop running");
    this.#metricsServer?.addReadinessCheck("desktop", () => ({ ok: !desktop.closed, detail: "the headless desktop is closed" }));
  }

  /** The headless desktop, when the agent runs one. */
  get desktop(): HeadlessDesktop | undefined {
    return this.#desktop;
  }

  /** Environment for talking to the shared desktop (its bus, PipeWire, Wayland display). */
  get desktopEnv(): NodeJS.ProcessEnv {
    return this.#desktopEnv;
  }

  get signaling(): SignalingServer {
    if (!this.#signaling) throw new Error("agent not started");
    return this.#signaling;
  }

  get metricsServer(): MetricsServer | undefined {
    return this.#metricsServer;
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.#signaling?.close();
      await this.#desktop?.close();
      await this.#metricsServer?.close();
    })();
    return this.#closing;
  }
}
