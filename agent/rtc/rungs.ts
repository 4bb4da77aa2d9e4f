/**
 * Which encoder rung each viewer should be on: pure logic, fed with the viewers' bitrate targets and a
 * clock, no timers, no I/O (tests drive it with synthetic targets). See docs/streaming.md.
 *
 * - The main rung's reference is the highest target among the viewers on it (the main encoder follows
 *   that viewer).
 * - A main-rung viewer whose target stays under `downRatio` x that reference for `downMs` should go
 *   down; not during its first `graceMs` (a new viewer's target is still ramping up from the start
 *   value; moving it would cost two encoder switches for nothing), unless its path already said it is
 *   the limit (`limited`: its controller cut or holds its target after congestion): a viewer on a slow
 *   link then moves within `downMs` of joining, instead of stuttering (and asking the main rung for
 *   recovery keyframes the fast viewers pay for) through the grace.
 * - A low-rung viewer whose target stays over `upRatio` x the reference for `upMs` should go back up:
 *   its link would carry the main rung. With nobody left on the main rung, it goes up at once (the main
 *   encoder then follows it, and the low rung can close).
 * - Hysteresis: `upRatio` > `downRatio`, and the timers restart whenever the condition breaks.
 */
export type RungName = "main" | "low";

export interface RungPolicyOptions {
  downRatio: number;
  downMs: number;
  upRatio: number;
  upMs: number;
  graceMs: number;
}

export interface RungViewer {
  id: string;
  /** The viewer's bitrate target (bit/s). */
  target: number;
  /** The rung it is on (or being moved to: the rung its wishes count for). */
  rung: RungName;
  /** Its bitrate controller is cutting or holding after congestion (not ramping up). */
  limited?: boolean;
}

export class RungPolicy {
  readonly #o: RungPolicyOptions;
  /** Per viewer: when it was first seen, and since when its current condition (down or up) holds. */
  readonly #state = new Map<string, { firstSeen: number; since: number | undefined }>();

  constructor(opts: RungPolicyOptions) {
    if (!(opts.upRatio > opts.downRatio)) throw new TypeError("RungPolicy: upRatio must be above downRatio (hysteresis)");
    this.#o = opts;
  }

  /** The main rung's reference: the highest target among its viewers (undefined: nobody on it). */
  static mainReference(viewers: readonly RungViewer[]): number | undefined {
    let best: number | undefined;
    for (const v of viewers) if (v.rung === "main") best = Math.max(best ?? 0, v.target);
    return best;
  }

  /**
   * Returns the viewers that should change rung now (id -> destination). Viewers not in `viewers` are
   * forgotten. Call it regularly (the stage does every 250 ms): the timers advance with `now`.
   */
  decide(viewers: readonly RungViewer[], now: number): Map<string, RungName> {
    const o = this.#o;
    const out = new Map<string, RungName>();
    const present = new Set(viewers.map((v) => v.id));
    for (const id of [...this.#state.keys()]) if (!present.has(id)) this.#state.delete(id);
    const ref = RungPolicy.mainReference(viewers);
    for (const v of viewers) {
      let st = this.#state.get(v.id);
      if (!st) {
        st = { firstSeen: now, since: undefined };
        this.#state.set(v.id, st);
      }
      let holds: boolean;
      let holdMs: number;
      if (v.rung === "main") {
        holds = ref !== undefined && (v.limited === true || now - st.firstSeen >= o.graceMs) && v.target < o.downRatio * ref;
        holdMs = o.downMs;
      } else {
        if (ref === undefined) {
          // Nobody on the main rung: it would follow this viewer, at full size.
          st.since = undefined;
          out.set(v.id, "main");
          continue;
        }
        holds = v.target > o.upRatio * ref;
        holdMs = o.upMs;
      }
      if (!holds) {
        st.since = undefined;
        continue;
      }
      st.since ??= now;
      if (now - st.since >= holdMs) {
        st.since = undefined;
        out.set(v.id, v.rung === "main" ? "low" : "main");
      }
    }
    return out;
  }

  /** The caller moved (or failed to move) a viewer: its timer starts again. */
  reset(id: string): void {
    const st = this.#state.get(id);
    if (st) st.since = undefined;
  }
}
