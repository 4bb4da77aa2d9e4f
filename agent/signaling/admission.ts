import { isIPv4, isIPv6 } from "node:net";

/**
 * The source "address" that per-address limits count by: an IPv4 address as it is (IPv4-mapped IPv6
 * unwrapped), an IPv6 address by its /64 (one host is usually given a whole /64, so counting single IPv6
 * addresses would give it 2^64 shares).
 *
 * Loopback is not special: 127.0.0.1 and 127.0.0.2 are two addresses. Every local process may pick any
 * of 127.0.0.0/8, so no per-address rule bounds a local attacker; putting all of loopback into one share
 * would instead put the owner (also local) into the attacker's share. What keeps a local flood from
 * locking the owner out is the displacement in PendingPool: a newcomer takes the place of the oldest
 * silent connection of whoever holds the most.
 */
export function addressGroup(remote: string): string {
  const v4 = remote.startsWith("::ffff:") ? remote.slice(7) : remote;
  if (isIPv4(v4)) return v4;
  if (!isIPv6(remote)) return remote;
  return `${expandIPv6(remote).slice(0, 4).join(":")}::/64`;
}

/** The eight hextets of an IPv6 address (no embedded IPv4: those are unwrapped above or rare). */
function expandIPv6(a: string): string[] {
  const addr = a.split("%")[0]!; // zone id
  const [head, tail] = addr.includes("::") ? addr.split("::") as [string, string] : [addr, undefined];
  const h = head === "" ? [] : head.split(":");
  const t = tail === undefined || tail === "" ? [] : tail.split(":");
  const fill = tail === undefined ? [] : Array<string>(Math.max(0, 8 - h.length - t.length)).fill("0");
  return [...h, ...fill, ...t].map((x) => (parseInt(x, 16) || 0).toString(16));
}

/** One connection waiting for its welcome. */
export interface PendingEntry {
  readonly group: string;
  /** False once the client sent its first message: it is being checked, not idling, and is never displaced. */
  silent: boolean;
  /** Closes the connection because a newcomer took its place. */
  readonly displace: () => void;
}

export type AdmitResult = { ok: true; displaced: PendingEntry | undefined } | { ok: false };

/**
 * The WebSockets that have not been welcomed yet: at most `max` in all and `perGroup` per source address
 * (addressGroup). Authenticated sessions are counted elsewhere (signaling.max_sessions), so this pool can
 * never take their room.
 *
 * When a newcomer finds no room it takes the place of the oldest silent connection (open, no message
 * yet) of its own address if that address is at its share, else of the address holding the most pending
 * connections, when that is more than the newcomer's own holds; else of its own address's oldest. It is
 * refused only when none of those is silent. A client that says hello at once (every client of ours
 * sends it on open) leaves the silent state within a round trip, so a flood has to displace a whole
 * pool's worth of connections inside that round trip to shut it out.
 */
export class PendingPool {
  readonly #entries = new Set<PendingEntry>();
  readonly #groups = new Map<string, number>();

  constructor(
    readonly max: number,
    readonly perGroup: number,
  ) {}

  get size(): number {
    return this.#entries.size;
  }

  /** Makes room for a newcomer from `group` (displacing one connection if need be), or says there is none. */
  admit(group: string): AdmitResult {
    const own = this.#groups.get(group) ?? 0;
    let victim: PendingEntry | undefined;
    if (own >= this.perGroup) {
      victim = this.#oldestSilent((e) => e.group === group);
      if (!victim) return { ok: false };
    } else if (this.#entries.size >= this.max) {
      // The oldest silent connection of the group holding the most (more than the newcomer's own); entries
      // are in age order, so among equal groups the one that has waited longest goes.
      let most = own;
      for (const e of this.#entries) {
        const n = this.#groups.get(e.group) ?? 0;
        if (e.silent && n > most) {
          victim = e;
          most = n;
        }
      }
      victim ??= this.#oldestSilent((e) => e.group === group);
      if (!victim) return { ok: false };
    }
    if (victim) {
      this.remove(victim);
      victim.displace();
    }
    return { ok: true, displaced: victim };
  }

  add(entry: PendingEntry): void {
    this.#entries.add(entry);
    this.#groups.set(entry.group, (this.#groups.get(entry.group) ?? 0) + 1);
  }

  /** The connection was welcomed or closed. Idempotent. */
  remove(entry: PendingEntry): void {
    if (!this.#entries.delete(entry)) return;
    const n = (this.#groups.get(entry.group) ?? 1) - 1;
    if (n <= 0) this.#groups.delete(entry.group);
    else this.#groups.set(entry.group, n);
  }

  #oldestSilent(pred: (e: PendingEntry) => boolean): PendingEntry | undefined {
    // Set order is insertion order: the first match is the oldest.
    for (const e of this.#entries) if (e.silent && pred(e)) return e;
    return undefined;
  }
}
