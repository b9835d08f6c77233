import type { Command } from "commander";
import { registerPending } from "./pending.ts";

/** `mhmoe generate`: being written (its owner replaces this file). */
export function registerGenerate(program: Command): void {
  registerPending(program, "generate", "generate");
}
