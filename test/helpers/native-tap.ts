// Runs a native C++ unit-test executable (built by native/binding.gyp into native/build/Release) that
// prints TAP, and reports each of its cases as a node:test test, so the runner counts them.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { describe, test } from "node:test";

import { NATIVE_RELEASE, requireBinary } from "../capture/pw-env.js";

const TAP_LINE = /^(ok|not ok) \d+ - (.*)\n(?: {2}# (.*)\n)?/gm;

/** The `ok` / `not ok` lines of TAP output: [status, name, reason]. */
export function tapResults(stdout: string): [string, string, string | undefined][] {
  return [...stdout.matchAll(TAP_LINE)].map((m) => [m[1]!, m[2]!, m[3]]);
}

export function describeNativeTap(title: string, executable: string, opts: { minPlan: number; timeoutMs: number }): void {
  describe(title, () => {
    const bin = requireBinary(join(NATIVE_RELEASE, executable), "build it: source scripts/env.sh && npm run build:native");
    const run = spawnSync(bin, [], { encoding: "utf8", timeout: opts.timeoutMs });
    const results = tapResults(run.stdout);

    test("the executable ran to completion and reported its plan", () => {
      assert.equal(run.error, undefined, String(run.error));
      assert.match(run.stdout, /^1\.\.\d+$/m, `no TAP plan in output:\n${run.stdout}\n${run.stderr}`);
      const plan = Number(/^1\.\.(\d+)$/m.exec(run.stdout)![1]);
      assert.equal(results.length, plan);
      assert.ok(plan >= opts.minPlan, `plan ${plan} < ${opts.minPlan}`);
      assert.equal(run.status, 0, run.stdout);
    });
    for (const [status, name, reason] of results) {
      test(name, () => assert.equal(status, "ok", reason ?? "failed"));
    }
  });
}
