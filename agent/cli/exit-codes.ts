/** The CLI's exit codes (also in docs/cli.md). */
export const ExitCode = {
  ok: 0,
  /** The agent or a command failed while running (a port in use, the portal refused, ...). */
  failure: 1,
  /** The command line is wrong: unknown command or option, a bad value. */
  usage: 2,
  /** The configuration file does not validate, or a file it names cannot be read. */
  config: 3,
  /** Something the command needs is missing on this machine (the native addon, PipeWire, a portal). */
  unsupported: 4,
} as const;
