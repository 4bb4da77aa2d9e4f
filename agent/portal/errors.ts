import { UnsupportedError, WlError } from "../util/errors.js";

/**
 * Errors of the portal client. Each message says what happened and what the user can do about it;
 * `code` is stable for programs.
 */

/** The user (or the portal on the user's behalf) said no: Request.Response code 1. */
export class PortalCancelledError extends WlError {
  /** The portal method that was answered, e.g. "ScreenCast.Start". */
  readonly step: string;
  constructor(step: string, message: string) {
    super("portal-cancelled", message);
    this.step = step;
  }
}

/** The portal or its backend could not do it: Request.Response code 2, or an error reply. */
export class PortalFailedError extends WlError {
  readonly step: string;
  constructor(step: string, message: string, options?: { cause?: unknown }) {
    super("portal-failed", message, options);
    this.step = step;
  }
}

/** No answer within the deadline (a hung backend, or a dialog nobody answers). */
export class PortalTimeoutError extends WlError {
  readonly step: string;
  constructor(step: string, message: string) {
    super("portal-timeout", message);
    this.step = step;
  }
}

/**
 * No xdg-desktop-portal on the bus, no bus at all, or the portal lacks the interface we need. A kind of
 * UnsupportedError (something to install or start), so callers that handle "missing component" get it.
 */
export class PortalUnavailableError extends UnsupportedError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}
