import { loadAddon } from "../native/addon.js";
import type { NativeEncoderProbe } from "../native/addon.js";
import { ENCODER_BACKENDS, type EncoderBackend } from "./encoder.js";

export type EncoderProbe = NativeEncoderProbe;

/**
 * The encoder capability probe for the CLI (and for logs at start-up): for each backend, whether it
 * is compiled in, whether its device is there and whether a small encoder really opens, with the
 * reason when not ("no /dev/dri ...", "libcuda.so.1 not found ..."). Synchronous; a few ms per
 * backend (each opens and closes a 256x144 encoder).
 */
export function probeEncoders(names: readonly EncoderBackend[] = ENCODER_BACKENDS): EncoderProbe[] {
  for (const n of names) {
    if (!(ENCODER_BACKENDS as readonly string[]).includes(n)) throw new TypeError(`probeEncoders: unknown backend "${String(n)}"`);
  }
  return loadAddon().probeEncoders([...names]);
}

/** The first backend of `priority` that is available here, or undefined. */
export function firstAvailable(probes: readonly EncoderProbe[], priority: readonly string[]): string | undefined {
  return priority.find((name) => probes.some((p) => p.name === name && p.available));
}

/** One line per backend, for `wl-webrtc probe`. */
export function formatProbes(probes: readonly EncoderProbe[]): string {
  return probes
    .map((p) => {
      const caps = Object.entries(p.caps)
        .filter(([, v]) => v)
        .map(([k]) => k)
        .join(",");
      return `${p.name.padEnd(9)} ${p.available ? "available  " : p.compiled ? "unavailable" : "not built  "} ${p.reason}${caps ? ` [${caps}]` : ""}`;
    })
    .join("\n");
}
