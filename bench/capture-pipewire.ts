// Capture-stage cost against a real PipeWire daemon (private, started here) and the native test
// producer animating a small square at 1080p/60 (tile damage path) or sending compositor damage.
// Not the desktop bench (sway + portal comes with agent/desktop/); this isolates our own cost.
//   node dist/bench/capture-pipewire.js [--seconds N] [--width W --height H] [--fps N] [--damage]
// The last line of output is one JSON object with every figure.
import { setTimeout as sleep } from "node:timers/promises";

import { CaptureStream } from "../agent/capture/capture-stream.js";
import { silentLogger } from "../agent/log/logger.js";
import { Producer, startPipeWire } from "../test/capture/pw-env.js";

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : def;
}
const seconds = arg("seconds", 5);
const width = arg("width", 1920);
const height = arg("height", 1080);
const fps = arg("fps", 60);
const damage = process.argv.includes("--damage");

const pw = await startPipeWire();
process.env.PIPEWIRE_RUNTIME_DIR = pw.dir;
const producer = await Producer.start(pw, { width, height, fps, damage });
try {
  const stream = await CaptureStream.open({ nodeId: producer.nodeId, log: silentLogger() });
  let events = 0;
  stream.on("frame", () => events++);
  await producer.send("animate on");
  await sleep(500);
  const s0 = stream.stats();
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  await sleep(seconds * 1000);
  const cpu = process.cpuUsage(cpu0);
  const wallUs = Number(process.hrtime.bigint() - t0) / 1000;
  const s1 = stream.stats();
  stream.close();
  const delivered = s1.counters.framesDelivered - s0.counters.framesDelivered;
  const t = s1.processToAvailable;
  const result = {
    bench: "capture-pipewire",
    resolution: `${width}x${height}`,
    producerFps: fps,
    damageSource: s1.damage.source,
    seconds,
    framesReceived: s1.counters.framesReceived - s0.counters.framesReceived,
    framesDelivered: delivered,
    frameEvents: events,
    deliveredFps: +(delivered / (wallUs / 1e6)).toFixed(1),
    buffersSkipped: s1.counters.buffersSkipped - s0.counters.buffersSkipped,
    // The whole process (JS + capture thread): what capturing costs us per second of wall time.
    cpuPercentOfOneCore: +(((cpu.user + cpu.system) / wallUs) * 100).toFixed(1),
    processToAvailableUs: { min: +t.minUs.toFixed(0), avg: +t.avgUs.toFixed(0), max: +t.maxUs.toFixed(0), count: t.count },
    histogram: Object.fromEntries(t.buckets.map((n, i) => [i < t.bucketBoundsUs.length ? `<${t.bucketBoundsUs[i]}us` : `>=${t.bucketBoundsUs.at(-1)}us`, n])),
  };
  console.log(
    `${result.resolution} @ ${fps} fps (${result.damageSource} damage): ${result.deliveredFps} frames/s delivered, ` +
      `process->available avg ${result.processToAvailableUs.avg} us (max ${result.processToAvailableUs.max}), ` +
      `${result.cpuPercentOfOneCore} % of one core`,
  );
  console.log(JSON.stringify(result));
} finally {
  await producer.stop();
  await pw.stop();
}
