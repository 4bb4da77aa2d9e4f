import { test } from "node:test";
import assert from "node:assert/strict";
import { startTestAgent } from "../helpers/agent.js";
import { hello } from "../helpers/ws-client.js";

/** A strict reader of the Prometheus text format (0.0.4): every line is a comment or a well-formed sample. */
function parsePrometheus(text: string): Map<string, { type?: string; samples: { labels: Record<string, string>; value: number }[] }> {
  const families = new Map<string, { type?: string; samples: { labels: Record<string, string>; value: number }[] }>();
  const family = (name: string) => {
    let f = families.get(name);
    if (!f) families.set(name, (f = { samples: [] }));
    return f;
  };
  const sampleRe = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+-?\d+)?$/;
  const labelRe = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?\s*/gy;
  for (const line of text.split("\n")) {
    if (line === "") continue;
    if (line.startsWith("# HELP ")) continue;
    if (line.startsWith("# TYPE ")) {
      const [, , name, type] = line.split(" ");
      assert.ok(name && ["counter", "gauge", "histogram", "summary", "untyped"].includes(type ?? ""), `bad TYPE line: ${line}`);
      family(name).type = type;
      continue;
    }
    assert.ok(!line.startsWith("#"), `unknown comment: ${line}`);
    const m = sampleRe.exec(line);
    assert.ok(m, `not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    if (m[3]) {
      labelRe.lastIndex = 0;
      let consumed = 0;
      let lm: RegExpExecArray | null;
      while ((lm = labelRe.exec(m[3])) !== null) {
        labels[lm[1]!] = lm[2]!;
        consumed = labelRe.lastIndex;
      }
      assert.equal(consumed, m[3].length, `bad labels in: ${line}`);
    }
    const value = Number(m[4] === "+Inf" ? Infinity : m[4] === "-Inf" ? -Infinity : m[4]);
    assert.ok(!Number.isNaN(value) || m[4] === "NaN", `bad value in: ${line}`);
    const base = m[1]!.replace(/_(bucket|sum|count|total|created)$/, "");
    family(families.has(m[1]!) ? m[1]! : base).samples.push({ labels, value });
  }
  return families;
}

test("/metrics parses as Prometheus text and carries the agent's series; healthz and readyz answer", async () => {
  const t = await startTestAgent();
  try {
    const { token } = await t.agent.tokens.mint({ role: "control", ttlS: 60, subject: "m" });
    const ok = await hello(t.wsUrl, token);
    assert.ok(ok.welcome);
    const bad = await hello(t.wsUrl, "x.y.z");
    assert.ok(bad.closed);
    const base = t.agent.metricsServer!.url;
    const res = await fetch(`${base}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /text\/plain/);
    const families = parsePrometheus(await res.text());
    for (const name of ["process_cpu_user_seconds_total", "process_resident_memory_bytes", "nodejs_eventloop_lag_seconds", "wl_webrtc_build_info"])
      assert.ok(families.has(name), `missing ${name}`);
    const active = families.get("wl_webrtc_sessions_active");
    assert.equal(active?.type, "gauge");
    assert.equal(active?.samples.find((s) => s.labels.role === "control")?.value, 1);
    const msgs = families.get("wl_webrtc_signaling_messages_total") ?? families.get("wl_webrtc_signaling_messages");
    assert.equal(msgs?.type, "counter");
    assert.equal(msgs?.samples.find((s) => s.labels.type === "hello" && s.labels.direction === "in")?.value, 2);
    assert.equal(msgs?.samples.find((s) => s.labels.type === "welcome" && s.labels.direction === "out")?.value, 1);
    const auth = families.get("wl_webrtc_auth_failures_total") ?? families.get("wl_webrtc_auth_failures");
    assert.equal(auth?.samples.find((s) => s.labels.reason === "malformed")?.value, 1);
    assert.ok(auth?.samples.some((s) => s.labels.reason === "expired"), "known reasons exist before they happen");
    const rejected = families.get("wl_webrtc_rejected_connections_total") ?? families.get("wl_webrtc_rejected_connections");
    assert.equal(rejected?.samples.find((s) => s.labels.reason === "auth")?.value, 1);

    assert.equal((await fetch(`${base}/healthz`)).status, 200);
    assert.equal((await fetch(`${base}/readyz`)).status, 200);
    ok.client.close();
    await ok.client.closed;
    await new Promise((r) => setTimeout(r, 50));
    const after = parsePrometheus(await (await fetch(`${base}/metrics`)).text());
    assert.equal(after.get("wl_webrtc_sessions_active")?.samples.find((s) => s.labels.role === "control")?.value, 0);
  } finally {
    await t.close();
  }
});

test("the metrics listener is loopback-only by default and separate from signaling", async () => {
  const t = await startTestAgent();
  try {
    assert.equal(t.agent.metricsServer!.address.address, "127.0.0.1");
    assert.notEqual(t.agent.metricsServer!.address.port, t.agent.signaling.address.port);
    assert.equal((await fetch(`${t.httpUrl}/metrics`)).status, 404, "metrics are not on the public port");
  } finally {
    await t.close();
  }
});
