/**
 * The xdg-desktop-portal client: a screen-cast (and, where offered, remote-desktop) grant.
 *
 *   const portal = await PortalSession.open({ busAddress, sourceTypes: ["monitor"], cursorMode: "embedded",
 *                                             persist: true, stateDir: defaultStateDir(), log });
 *   const fd = portal.takePipeWireFd();          // hand it to the capture stream (which then owns it)
 *   portal.on("closed", ({ reason, message }) => ...);  // ended from outside; `close` follows
 *   ...
 *   await capture.close();                       // FIRST: xdpw 0.7 crashes otherwise (notes, trap 4)
 *   await portal.close();
 *
 * The fd arrives WITHOUT close-on-exec (dbus-next/usocket receive it that way): a consumer should
 * fcntl(fd, F_DUPFD_CLOEXEC, 3) it and close the original at once, or child processes spawned later
 * inherit the PipeWire connection.
 */
export { PortalSession } from "./session.js";
export type { CursorMode, CursorModeRequest, PortalClosedInfo, PortalSessionEvents, PortalSessionOptions, PortalStream, SourceType } from "./session.js";
export { PortalCancelledError, PortalFailedError, PortalTimeoutError, PortalUnavailableError } from "./errors.js";
export { RestoreTokenStore, RESTORE_TOKEN_FILE } from "./restore-token.js";
export type { RestoreToken, RestoreTokenKind } from "./restore-token.js";
