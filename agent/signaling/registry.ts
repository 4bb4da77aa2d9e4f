import type { Metrics } from "../metrics/metrics.js";
import type { Session } from "./session.js";

/** Owns the live sessions: counts them, forgets them when they close, closes them all on shutdown. */
export class SessionRegistry {
  readonly #sessions = new Map<string, Session>();
  readonly #metrics: Metrics | undefined;

  constructor(metrics?: Metrics) {
    this.#metrics = metrics;
  }

  get size(): number {
    return this.#sessions.size;
  }

  add(session: Session): void {
    this.#sessions.set(session.id, session);
    this.#metrics?.sessionsActive.inc({ role: session.role });
    session.once("close", () => {
      if (this.#sessions.delete(session.id)) this.#metrics?.sessionsActive.dec({ role: session.role });
    });
  }

  get(id: string): Session | undefined {
    return this.#sessions.get(id);
  }

  list(): Session[] {
    return [...this.#sessions.values()];
  }

  closeAll(code: number, reason: string): void {
    for (const s of [...this.#sessions.values()]) s.close(code, reason);
  }
}
