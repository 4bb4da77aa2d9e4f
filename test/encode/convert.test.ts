// The encoder's damage-aware colour conversion: the native unit tests (native/test/convert_test.cc, built
// by binding.gyp as native/build/Release/convert_test) reported test by test. Banded conversions of random
// damage must stay byte-identical to full ones (odd sizes, edge rows, a picture the encoder still holds).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { describe, test } from "node:test";

import { NATIVE_RELEASE, requireBinary } from "../capture/pw-env.js";

describe("native damage-aware conversion unit tests (convert_test)", () => {
  const bin = requireBinary(join(NATIVE_RELEASE, "convert_test"), "build it: source scripts/env.sh && npm run build:native");
  const run = spawnSync(bin, [], { encoding: "utf8", timeout: 120_000 });
  const results = [...run.stdout.matchAll(/^(ok|not ok) \d+ - (.*)\n(?: {2}# (.*)\n)?/gm)];

  test("the executable ran to completion and reported its plan", () => {
    assert.equal(run.error, undefined, String(run.error));
    assert.match(run.stdout, /^1\.\.\d+$/m, `no TAP plan in output:\n${run.stdout}\n${run.stderr}`);
    const plan = Number(/^1\.\.(\d+)$/m.exec(run.stdout)![1]);
    assert.equal(results.length, plan);
    assert.ok(plan >= 29);
    assert.equal(run.status, 0, run.stdout);
  });
  for (const [, status, name, reason] of results) {
    test(name!, () => assert.equal(status, "ok", reason ?? "failed"));
  }
});
