/**
 * An error the user caused and can fix (bad flag, bad config, corrupt or missing file, no GPU adapter).
 * The CLI prints only its message, as one line, and exits non-zero; anything else is a bug and keeps its stack.
 */
export class UserError extends Error {
  constructor(message: string, readonly exitCode = 1) {
    super(message);
    this.name = "UserError";
  }
}

export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
