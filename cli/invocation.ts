/**
 * How to run mhmoe again from the user's shell, for hints meant to be copied (the resume command).
 * From the checkout that is its `mhmoe` wrapper (bun itself may be reachable only through npx); a
 * compiled binary names itself. The name alone when PATH finds that same file, `./name` in its own
 * directory, else the absolute path.
 */
import { existsSync, realpathSync } from "node:fs";
import { basename, dirname, join } from "node:path";

/** A word the shell reads back unchanged. */
export function shellQuote(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
}

const sameFile = (a: string, b: string) => {
  try {
    return realpathSync(a) === realpathSync(b);
  } catch {
    return false;
  }
};

function shortest(file: string, cwd: string): string {
  const name = basename(file);
  const found = Bun.which(name, { PATH: process.env.PATH ?? "" });
  if (found && sameFile(found, file)) return name;
  if (sameFile(dirname(file), cwd)) return `./${name}`;
  return shellQuote(file);
}

/** The command words that start mhmoe, as the user's shell would need them typed now. */
export function mhmoeCommand(cwd = process.cwd()): string {
  const compiled = Bun.main.startsWith("/$bunfs/") || Bun.main.includes("~BUN");
  if (compiled) return shortest(process.execPath, cwd);
  const wrapper = join(import.meta.dir, "..", "mhmoe");
  if (existsSync(wrapper)) return shortest(wrapper, cwd);
  return `${shellQuote(process.execPath)} ${shellQuote(Bun.main)}`;
}

export const resumeCommand = (out: string) => `${mhmoeCommand()} train --resume ${shellQuote(out)}`;
