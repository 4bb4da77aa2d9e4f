/**
 * The per-viewer send window (ViewerPacer) with the controller, on the synthetic link of
 * test/helpers/abrsim.ts.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { simulate, type SimResult } from "../helpers/abrsim.js";
import { ViewerPacer } from "../../agent/rtc/pacer.js";

/** x264's 1 s output strays +-8 % at 2 Mbit/s, +-4 % at 5 (bench runs): about 4.5 % and 2.5 % std. */
const x264Spread = (bps: number): number => (bps < 3.5e6 ? 0.035 : 0.025);

const over = (r: SimResult, limit: (t: number) => number, from: number): { t: number; bps: number }[] => r.windows.filter((w) => w.t >= from && w.bps > limit(w.t));
const fmt = (r: SimResult, from: number, to = Infinity): string => r.windows.filter((w) => w.t >= from && w.t <= to && w.t % 1000 === 0).map((w) => (w.bps / 1e6).toFixed(2)).join(" ");

test("send window: an encoder varying like x264 (+-8 % at 2 Mbit/s, +-4 % at 5) never puts a 1 s window over the link; without it, it does", () => {
  for (const [mbps, sigma] of [[2, 0.035], [5, 0.025]] as const) {
    const capacity = (): number => mbps * 1e6;
    let overBefore = 0;
    for (const seed of [1, 2, 3, 4, 5]) {
      const base = { capacity, ms: 40_000, startBps: 0.8 * mbps * 1e6, sigma, overshoot: 1.075, keyframeEveryMs: 10_000, seed };
      const without = simulate({ ...base, window: false });
      overBefore += over(without, capacity, 5000).length;
      const r = simulate({ ...base, window: true });
      const o = over(r, capacity, 5000);
      assert.equal(o.length, 0, `${mbps} Mbit/s, seed ${seed}: ${o.length} windows over, max ${Math.max(...o.map((w) => w.bps)) / 1e6}: ${fmt(r, 5000)}`);
      assert.equal(r.drops.filter((d) => d.t >= 5000).length, 0, `${mbps} Mbit/s, seed ${seed}: drops after settling`);
      // The latency it costs: held packets wait tens of ms, a keyframe's tail a little more; nothing is
      // skipped to a keyframe at a steady rate.
      assert.ok(r.maxWaitMs <= ViewerPacer.HOLD_MAX_MS && r.meanWaitMs <= 80, `${mbps} Mbit/s, seed ${seed}: waits max ${r.maxWaitMs} ms, mean ${r.meanWaitMs.toFixed(1)} ms, ${r.held} of ${r.sent} held`);
      assert.equal(r.skipped, 0, `${mbps} Mbit/s, seed ${seed}: frames skipped`);
      const steady = r.windows.filter((w) => w.t >= 10_000);
      const mean = steady.reduce((s, w) => s + w.bps, 0) / steady.length;
      assert.ok(mean >= 0.85 * mbps * 1e6, `${mbps} Mbit/s, seed ${seed}: the link stays used: mean ${mean}`);
    }
    // The model reproduces what the bench saw on the real link: the windows' spread goes over it.
    assert.ok(overBefore > 0, `${mbps} Mbit/s without the window: no window over the link (the model does not vary enough)`);
  }
});

test("pushback: an encoder overshooting its target keeps the link under the limit, and the window's holds stay short and rare; without the pushback they do not", () => {
  for (const [mbps, sigma] of [[2, 0.035], [5, 0.025]] as const) {
    const capacity = (): number => mbps * 1e6;
    // x264 on busier content: 15 % more than it makes at first, for 15 s (the learned overshoot follows
    // only on average, its 1 s output still strays around it).
    const overshoot = (t: number): number => (t >= 10_000 && t < 25_000 ? 1.075 * 1.15 : 1.075);
    let slowWithout = 0;
    for (const seed of [1, 2, 3, 4, 5]) {
      const base = { capacity, ms: 40_000, startBps: 0.8 * mbps * 1e6, sigma, overshoot, window: true, seed };
      const r = simulate(base);
      const o = over(r, capacity, 5000);
      assert.equal(o.length, 0, `${mbps} Mbit/s, seed ${seed}: ${o.length} windows over the link: ${fmt(r, 5000)}`);
      assert.equal(r.drops.filter((d) => d.t >= 5000).length, 0, `${mbps} Mbit/s, seed ${seed}: drops after settling`);
      assert.equal(r.skipped, 0, `${mbps} Mbit/s, seed ${seed}: frames skipped`);
      // After settling (5 s on), over every packet: the aim of the bench (mean <= 5 ms, p95 <= 20 ms).
      const h = r.hold;
      assert.ok(h.meanMs <= 5 && h.p95Ms <= 20 && h.heldPercent <= 10, `${mbps} Mbit/s, seed ${seed}: ${h.heldPercent.toFixed(1)} % held, mean ${h.meanMs.toFixed(1)} ms, p95 ${h.p95Ms} ms, max ${h.maxMs} ms`);
      const steady = r.windows.filter((w) => w.t >= 5000);
      const mean = steady.reduce((a, w) => a + w.bps, 0) / steady.length;
      assert.ok(mean >= 0.85 * mbps * 1e6, `${mbps} Mbit/s, seed ${seed}: the link stays used: mean ${mean}`);
      const w = simulate({ ...base, pushback: false }).hold;
      if (w.meanMs > 5 || w.p95Ms > 20) slowWithout++;
    }
    // The same encoder without the pushback: the window holds what the encoder makes over it.
    assert.ok(slowWithout >= 3, `${mbps} Mbit/s without the pushback: the aim missed in only ${slowWithout} of 5 seeds`);
  }
});

test("send window: a viewer with ample capacity is never held (frames leave as bursts)", () => {
  const r = simulate({ capacity: () => 50e6, ms: 20_000, startBps: 2e6, window: true, sigma: 0.045, overshoot: 1.075, keyframeEveryMs: 5000, seed: 7 });
  assert.equal(r.held, 0, `${r.held} of ${r.sent} packets held`);
  assert.ok(r.targets.at(-1)!.bps >= 7_900_000, `climbs to the maximum: ${r.targets.at(-1)!.bps}`);
});

test("send window: a raised link is climbed as fast as without it; a lowered one is settled under as fast", () => {
  for (const seed of [1, 2, 3]) {
    const raise = (t: number): number => (t < 20_000 ? 2e6 : 5e6);
    const reach = (r: SimResult): number | undefined => r.windows.find((w) => w.t >= 20_000 && w.bps >= 0.9 * 5e6)?.t;
    const base = { capacity: raise, ms: 30_000, startBps: 1.6e6, sigma: x264Spread, overshoot: 1.075, seed };
    const a = simulate({ ...base, window: false }), b = simulate({ ...base, window: true });
    const ta = reach(a), tb = reach(b);
    // (The model's encoder drifts: in some seeds it sits under its target for seconds either way.)
    assert.ok(tb !== undefined, `seed ${seed}: 90 % of 5 Mbit/s never reached: ${fmt(b, 19_000, 30_000)}`);
    assert.ok(ta !== undefined && tb - ta <= 500, `seed ${seed}: ${tb - 20_000} ms with the window, ${ta === undefined ? "never" : ta - 20_000} without`);
    const lower = (t: number): number => (t < 20_000 ? 5e6 : 2e6);
    const c = simulate({ ...base, capacity: lower, startBps: 4e6, window: true });
    const late = over(c, lower, 20_000).filter((w) => w.t >= 23_000);
    assert.equal(late.length, 0, `seed ${seed}: 5 -> 2 Mbit/s, over the link 3 s later: ${fmt(c, 19_000, 30_000)}`);
    // ... and uses it again (a window set from a rate it holds down itself would spiral: seen in a variant).
    const tail = c.windows.filter((w) => w.t >= 25_000);
    assert.ok(tail.reduce((a, w) => a + w.bps, 0) / tail.length >= 0.8 * 2e6, `seed ${seed}: 5 -> 2 Mbit/s, the link unused: ${fmt(c, 19_000, 30_000)}`);
  }
});

test("ViewerPacer: no 1 s window over SHARE x capacity, no burst over BURST_MS of it, order kept, held runs get their own burst id; paced: the rate", () => {
  let nextGroup = 1000;
  const p = new ViewerPacer<number>(() => ++nextGroup);
  p.capacityBps = 2_000_000;
  const sent: { t: number; item: number; bytes: number; group: number; frame: number; pushedAt: number }[] = [];
  const meta = new Map<number, { frame: number; pushedAt: number }>();
  let item = 0, wake: number | undefined;
  for (let t = 0; t <= 10_000; t++) {
    if (t % 33 === 0) {
      // Frames of 8-12 kB, a keyframe of 40 kB every 3 s: on average ~2.4 Mbit/s, more than the window takes.
      const bytes = t % 3000 === 0 ? 40_000 : 8000 + ((t * 7919) % 4000);
      const frame = t;
      const pkts = Array.from({ length: Math.ceil(bytes / 1200) }, () => ({ item: item++, bytes: 1200, group: frame }));
      for (const x of pkts) meta.set(x.item, { frame, pushedAt: t });
      p.push(pkts, t, t % 3000 === 0);
      wake = t;
    }
    if (wake !== undefined && t >= wake) {
      const next = p.drain(t, (x) => sent.push({ t, ...x, ...meta.get(x.item)! }));
      wake = next === undefined ? undefined : t + next;
    }
  }
  assert.ok(sent.length > 1000);
  assert.deepEqual(sent.map((x) => x.item), [...sent.map((x) => x.item)].sort((a, b) => a - b), "order kept");
  const limit = (ViewerPacer.SHARE * 2_000_000) / 8;
  let vq = 0, last = 0, maxVq = 0;
  for (let i = 0, j = 0, sum = 0; i < sent.length; i++) {
    sum += sent[i]!.bytes;
    while (sent[j]!.t <= sent[i]!.t - 1000) sum -= sent[j++]!.bytes;
    assert.ok(sum <= limit, `1 s ending at ${sent[i]!.t} ms: ${sum} bytes > ${limit}`);
    vq = Math.max(0, vq - ((sent[i]!.t - last) / 1000) * 250_000) + sent[i]!.bytes;
    last = sent[i]!.t;
    maxVq = Math.max(maxVq, vq);
  }
  assert.ok(maxVq <= 250_000 * (ViewerPacer.BURST_MS / 1000) + 1, `own queue at the bottleneck: ${maxVq} bytes`);
  for (const x of sent) {
    if (x.t === x.pushedAt) assert.equal(x.group, x.frame, "sent at once: the frame's burst");
    else assert.ok(x.group > 1000, "held: a burst of its own");
  }
  assert.ok(p.counters.held > 0 && p.counters.maxWaitMs > 0);
  // Paced: ~paceBps, whatever the capacity says.
  const q = new ViewerPacer<number>(() => 0);
  q.capacityBps = 100_000;
  q.paceBps = 1_000_000;
  q.push(Array.from({ length: 100 }, (_, k) => ({ item: k, bytes: 1250, group: 1 })), 0, false);
  let n = 0, t = 0, w: number | undefined = 0;
  while (w !== undefined && t < 10_000) {
    t += w;
    w = q.drain(t, () => n++);
  }
  assert.equal(n, 100);
  assert.ok(t >= 900 && t <= 1100, `100 x 1250 bytes at 1 Mbit/s took ${t} ms`);
});
