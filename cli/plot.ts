import type { Command } from "commander";
import { registerPending } from "./pending.ts";

/** `mhmoe plot`: being written (its owner replaces this file). */
export function registerPlot(program: Command): void {
  registerPending(program, "plot", "plot");
}
