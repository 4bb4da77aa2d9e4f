// DMA-BUF capture (zero copy into VA-API), the parts that run without a GPU: the native unit tests
// (native/test/dmabuf_test.cc: PipeWire params offered and parsed, the render-node check, fd
// ownership, the software fallback's LINEAR mapping) and the TS decision of when capture asks for
// DMA-BUF at all. The capture side without a render node is in pipewire.test.ts (real PipeWire).
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { describe, test } from "node:test";

import { chooseDmabufCapture, probeEncoders, type EncoderProbe } from "../../agent/encode/probe.js";
import { describeNativeTap } from "../helpers/native-tap.js";

describeNativeTap("native DMA-BUF capture unit tests (dmabuf_test)", "dmabuf_test", { minPlan: 10, timeoutMs: 30_000 });

const caps = { bitrateWithoutIdr: false, framerateWithoutIdr: false, roi: false, intraRefresh: false, zeroCopyDmabuf: false };
function probe(name: string, available: boolean, reason: string, device = ""): EncoderProbe {
  return { name, compiled: true, available, reason, device, caps: { ...caps, zeroCopyDmabuf: name === "vaapi" } };
}
const PRIORITY = ["vaapi", "nvenc", "x264", "openh264"];

describe("chooseDmabufCapture: DMA-BUF only when the encoder that will run is VA-API on a render node", () => {
  test("this machine (real probe): no render node, so shared memory, and the reason names it", () => {
    const probes = probeEncoders();
    const choice = chooseDmabufCapture(probes, PRIORITY);
    if (!existsSync("/dev/dri/renderD128")) {
      assert.equal(choice.device, null);
      assert.match(choice.reason, /^shared memory: the encoder is x264 \(vaapi: no \/dev\/dri/);
    } else {
      const vaapi = probes.find((p) => p.name === "vaapi")!;
      assert.equal(choice.device !== null, vaapi.available, choice.reason);
    }
  });

  test("VA-API first and available with its render node: that node", () => {
    const probes = [probe("vaapi", true, "opened on /dev/dri/renderD129", "/dev/dri/renderD129"), probe("x264", true, "opened")];
    assert.deepEqual(chooseDmabufCapture(probes, PRIORITY), { device: "/dev/dri/renderD129", reason: "vaapi on /dev/dri/renderD129 is the first usable encoder" });
  });

  test("VA-API available but after x264 in the priority list, or not listed: shared memory", () => {
    const probes = [probe("vaapi", true, "opened", "/dev/dri/renderD128"), probe("x264", true, "opened")];
    const after = chooseDmabufCapture(probes, ["x264", "vaapi"]);
    assert.equal(after.device, null);
    assert.match(after.reason, /the encoder is x264 \(vaapi comes after x264/);
    const absent = chooseDmabufCapture(probes, ["x264"]);
    assert.equal(absent.device, null);
    assert.match(absent.reason, /vaapi is not in \[encode\] backends/);
  });

  test("VA-API listed first but unavailable (driver refused): shared memory with the probe's reason", () => {
    const probes = [probe("vaapi", false, "vaapi: cannot initialise VA-API on /dev/dri/renderD128: Input/output error", "/dev/dri/renderD128"), probe("x264", true, "opened")];
    const c = chooseDmabufCapture(probes, PRIORITY);
    assert.equal(c.device, null);
    assert.match(c.reason, /the encoder is x264 \(vaapi: vaapi: cannot initialise/);
  });

  test("nothing usable: shared memory, said so", () => {
    const c = chooseDmabufCapture([probe("vaapi", false, "no /dev/dri"), probe("x264", false, "not built")], PRIORITY);
    assert.equal(c.device, null);
    assert.match(c.reason, /no encoder is usable/);
  });
});
