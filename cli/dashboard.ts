import type { Command } from "commander";
import { registerPending } from "./pending.ts";

/** `mhmoe dashboard`: being written (its owner replaces this file). */
export function registerDashboard(program: Command): void {
  registerPending(program, "dashboard", "dashboard");
}
