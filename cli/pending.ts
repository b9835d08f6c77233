import type { Command } from "commander";
import { UserError } from "../src/util/errors.ts";

/** A command whose issue has not landed yet: listed in --help, says so plainly when run. */
export function registerPending(program: Command, name: string, description: string): void {
  program
    .command(name)
    .description(`${description} (not implemented yet)`)
    .allowUnknownOption()
    .argument("[args...]")
    .action(() => {
      throw new UserError(`\`mhmoe ${name}\` is not implemented yet`, 2);
    });
}
