/**
 * The small set of errors that cross module (and native) boundaries. Each carries a message that tells
 * the user what to do, and a stable `code` for programs.
 */
export class WlError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** A call on a resource that has been closed. */
export class InvalidStateError extends WlError {
  constructor(message: string) {
    super("invalid-state", message);
  }
}

/** A missing codec, portal, device, library or program. The message says what to install or enable. */
export class UnsupportedError extends WlError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("unsupported", message, options);
  }
}

/** A bounded resource (ports, sessions) is used up; others go on. The message names the limit to raise. */
export class ExhaustedError extends WlError {
  constructor(message: string) {
    super("exhausted", message);
  }
}

/** A configuration file or value that does not validate. */
export class ConfigError extends WlError {
  readonly problems: readonly string[];
  constructor(problems: readonly string[]) {
    super("config", problems.join("\n"));
    this.problems = problems;
  }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
