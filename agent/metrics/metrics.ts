import { Registry, Counter, Gauge, collectDefaultMetrics } from "prom-client";
import { AUTH_FAILURES } from "../auth/tokens.js";

/**
 * The agent's metrics, on a registry of its own (not prom-client's global one) so that several
 * agents can live in one process (tests) and each stage can add its own series to it.
 */
export class Metrics {
  readonly registry = new Registry();
  readonly sessionsActive: Gauge<"role">;
  readonly signalingMessages: Counter<"type" | "direction">;
  readonly authFailures: Counter<"reason">;
  readonly rejectedConnections: Counter<"reason">;

  constructor(version: string) {
    collectDefaultMetrics({ register: this.registry });
    const r = [this.registry];
    new Gauge({ name: "wl_webrtc_build_info", help: "Build information (always 1)", labelNames: ["version"], registers: r }).set({ version }, 1);
    this.sessionsActive = new Gauge({ name: "wl_webrtc_sessions_active", help: "Authenticated signaling sessions by role", labelNames: ["role"], registers: r });
    this.signalingMessages = new Counter({
      name: "wl_webrtc_signaling_messages_total",
      help: "Signaling messages by type and direction (in: from clients, out: to clients)",
      labelNames: ["type", "direction"],
      registers: r,
    });
    this.authFailures = new Counter({ name: "wl_webrtc_auth_failures_total", help: "Refused tokens by reason", labelNames: ["reason"], registers: r });
    this.rejectedConnections = new Counter({
      name: "wl_webrtc_rejected_connections_total",
      help: "Signaling connections refused or closed by the agent, by reason",
      labelNames: ["reason"],
      registers: r,
    });
    // Zero-initialise known label values so the series exist before the first event.
    for (const role of ["view", "control"]) this.sessionsActive.set({ role }, 0);
    for (const reason of AUTH_FAILURES) this.authFailures.inc({ reason }, 0);
  }
}
