/**
 * What the user sees when there is no portal to talk to: a bus with no portal on it, no bus at all,
 * and a portal with no ScreenCast backend. All PortalUnavailableError (a kind of UnsupportedError).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { PortalSession, PortalUnavailableError } from "../../agent/portal/index.js";
import { silentLogger } from "../../agent/log/logger.js";
import { UnsupportedError } from "../../agent/util/errors.js";
import { TestDesktop } from "./desktop-fixture.js";
import { openFdCount, sessionOptions, settleFds } from "./helpers.js";

describe("PortalSession when the portal is not there", () => {
  it("a bare dbus-daemon with no portal: PortalUnavailableError that says to install/start xdg-desktop-portal", async () => {
    const d = await TestDesktop.start("bare-bus");
    try {
      const before = openFdCount();
      await assert.rejects(PortalSession.open(sessionOptions(d.busAddress, join(d.dir, "st"))), (err: unknown) => {
        assert.ok(err instanceof PortalUnavailableError, String(err));
        assert.ok(err instanceof UnsupportedError, "a missing portal is a kind of UnsupportedError");
        assert.match(err.message, /xdg-desktop-portal is not available on the session bus/);
        assert.match(err.message, /org\.freedesktop\.portal\.Desktop/, "names the missing service");
        assert.match(err.message, /Install and start xdg-desktop-portal/);
        return true;
      });
      assert.ok((await settleFds(before)) <= before, "the bus connection was released");
    } finally {
      await d.close();
    }
  });

  it("no bus at that address: PortalUnavailableError naming the address", async () => {
    const address = `unix:path=${join("/tmp", `wl-portal-test-nobus-${process.pid}`, "bus")}`;
    const before = openFdCount();
    await assert.rejects(
      PortalSession.open({ busAddress: address, sourceTypes: ["monitor"], cursorMode: "embedded", persist: false, stateDir: "/tmp/unused", log: silentLogger() }),
      (err: unknown) => {
        assert.ok(err instanceof PortalUnavailableError, String(err));
        assert.match(err.message, /Cannot connect to the D-Bus session bus at unix:path=\/tmp\/wl-portal-test-nobus-/);
        return true;
      },
    );
    assert.ok((await settleFds(before)) <= before);
  });

  it("xdg-desktop-portal with no ScreenCast backend: PortalUnavailableError that says which backend to install", async () => {
    const d = await TestDesktop.start("portal-no-backend");
    try {
      await assert.rejects(PortalSession.open(sessionOptions(d.busAddress, join(d.dir, "st"))), (err: unknown) => {
        assert.ok(err instanceof PortalUnavailableError, String(err));
        assert.match(err.message, /has no ScreenCast interface/);
        assert.match(err.message, /xdg-desktop-portal-wlr/);
        return true;
      });
    } finally {
      await d.close();
    }
  });
});
