import { UserError } from "../src/util/errors.ts";

/** A numeric flag value, or one UserError line naming the flag. */
export function parseNumber(flag: string, text: string, integer: boolean): number {
  const value = Number(text);
  if (text.trim() === "" || !Number.isFinite(value) || (integer && !Number.isSafeInteger(value))) {
    throw new UserError(`${flag}: expected ${integer ? "an integer" : "a number"}, got "${text}"`);
  }
  return value;
}
