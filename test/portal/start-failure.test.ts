/**
 * xdg-desktop-portal-wlr 0.7 without the screencopy shim cannot start a cast on a GPU-less machine
 * (notes, trap 2): ScreenCast.Start answers 2. That is a real "failed" response to test with.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { PortalFailedError, PortalSession, RestoreTokenStore } from "../../agent/portal/index.js";
import { TestDesktop } from "./desktop-fixture.js";
import { openFdCount, sessionOptions, settleFds } from "./helpers.js";

describe("PortalSession when the backend fails to start the cast", () => {
  let d: TestDesktop;
  before(async () => {
    d = await TestDesktop.start("xdpw-without-shim");
  });
  after(async () => {
    await d?.close();
  });

  it("Start answering 2 is a PortalFailedError for the Start step, and nothing leaks", async () => {
    const fds = openFdCount();
    await assert.rejects(PortalSession.open(sessionOptions(d.busAddress, join(d.dir, "st-fail"))), (err: unknown) => {
      assert.ok(err instanceof PortalFailedError, String(err));
      assert.equal(err.step, "ScreenCast.Start");
      assert.match(err.message, /answered "failed" \(response 2\)/);
      return true;
    });
    assert.ok((await settleFds(fds)) <= fds, "no fd left behind by a failed open");
  });

  it("a Start that fails with a saved token discards the token and says so (no retry loop)", async () => {
    const stateDir = join(d.dir, "st-fail-token");
    const store = new RestoreTokenStore(stateDir);
    await store.save({ kind: "screencast", token: "11111111-2222-4333-8444-555555555555" });
    await assert.rejects(PortalSession.open(sessionOptions(d.busAddress, stateDir)), (err: unknown) => {
      assert.ok(err instanceof PortalFailedError, String(err));
      assert.match(err.message, /used the saved restore token/);
      assert.match(err.message, /discarded/);
      return true;
    });
    assert.equal(existsSync(store.file), false, "the token that failed is gone");
    // The next attempt goes without a token (and fails the same honest way, once).
    await assert.rejects(PortalSession.open(sessionOptions(d.busAddress, stateDir)), (err: unknown) => {
      assert.ok(err instanceof PortalFailedError);
      assert.doesNotMatch(err.message, /restore token/);
      return true;
    });
  });
});
