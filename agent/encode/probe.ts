import { loadAddon } from "../native/addon.js";
import type { NativeEncoderProbe } from "../native/addon.js";
import type { DmabufChoice } from "../capture/capture-stream.js";
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

/**
 * Whether capture should offer DMA-BUF (zero copy into the GPU encoder): only when the encoder that
 * will run, the first available backend of [encode] backends, is VA-API and its render node exists
 * (the probe opened a test encoder on it). Anything else gets shared memory, with the reason shown in
 * the capture's stats().dmabuf and by `wl-webrtc probe`. NVENC would need a CUDA importer (not coded).
 */
export function chooseDmabufCapture(probes: readonly EncoderProbe[], priority: readonly string[]): DmabufChoice {
  const first = firstAvailable(probes, priority);
  const vaapi = probes.find((p) => p.name === "vaapi");
  if (first === "vaapi" && vaapi !== undefined && /^\/dev\/dri\/renderD\d+$/.test(vaapi.device)) {
    return { device: vaapi.device, reason: `vaapi on ${vaapi.device} is the first usable encoder` };
  }
  if (first === "vaapi") return { device: null, reason: "vaapi opened without a render node path" };
  const why = !priority.includes("vaapi")
    ? "vaapi is not in [encode] backends"
    : vaapi === undefined
      ? "vaapi was not probed"
      : !vaapi.available
        ? `vaapi: ${vaapi.reason}`
        : `vaapi comes after ${first ?? "?"} in [encode] backends`;
  return { device: null, reason: `shared memory: ${first === undefined ? "no encoder is usable" : `the encoder is ${first}`} (${why})` };
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
