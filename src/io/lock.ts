/**
 * One process at a time per output: a lock file created exclusively (O_EXCL) holding the owner's pid
 * and command, removed when the process exits. A lock whose pid is no longer running (a kill -9, a
 * power cut) is taken over with a note. Leftovers of interrupted writes by dead processes (temporary
 * names carrying their pid) are removed the same way.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { UserError } from "../util/errors.ts";
import { fsDo, ioError } from "./atomic.ts";

/** True while a process with this pid exists (ours counts; EPERM means it exists under another user). */
export function pidAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

export interface Lock {
  file: string;
  release(): void;
}

/**
 * Takes `file` for this process, or refuses in one line naming `what` and the owner's pid. `onNote`
 * hears about a stale lock taken over. The lock is released by release() or when the process exits.
 */
export function acquireLock(file: string, what: string, command: string, onNote?: (line: string) => void): Lock {
  const body = JSON.stringify({ pid: process.pid, command, started: new Date().toISOString() }) + "\n";
  for (let attempt = 0; ; attempt++) {
    try {
      fs.writeFileSync(file, body, { flag: "wx" });
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST" || attempt > 0) throw ioError(e, "create lock file", file);
    }
    const owner = readOwner(file);
    if (owner && owner.pid !== process.pid && pidAlive(owner.pid)) {
      throw new UserError(`${what} is in use by ${owner.command} (pid ${owner.pid})`);
    }
    onNote?.(`${what}: taking over the lock of ${owner ? `pid ${owner.pid}, which is no longer running` : "an unreadable lock file"}`);
    fsDo("remove stale lock", file, () => fs.rmSync(file, { force: true }));
  }
  let held = true;
  const release = () => {
    if (!held) return;
    held = false;
    process.off("exit", release);
    try {
      if (readOwner(file)?.pid === process.pid) fs.rmSync(file, { force: true });
    } catch {
      // the directory went away or became read-only: nothing left to release
    }
  };
  process.on("exit", release);
  return { file, release };
}

function readOwner(file: string): { pid: number; command: string } | null {
  try {
    const o = JSON.parse(fs.readFileSync(file, "utf8"));
    return Number.isSafeInteger(o.pid) ? { pid: o.pid, command: String(o.command ?? "mhmoe") } : null;
  } catch {
    return null;
  }
}

/** pid in a temporary name: NAME.tmp-PID-RAND, NAME.old-PID-RAND, NAME.partial-PID. */
const LEFTOVER = /\.(?:(?:tmp|old)-(\d+)-[0-9a-z]+|partial-(\d+))$/;

/**
 * Removes leftovers of interrupted writes in `dir` whose process is gone (a live process may be writing
 * them right now); `only` narrows to names starting with a prefix. Returns the names removed.
 */
export function removeDeadLeftovers(dir: string, only = ""): string[] {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const n of names) {
    const m = LEFTOVER.exec(n);
    if (!m || !n.startsWith(only)) continue;
    const pid = Number(m[1] ?? m[2]);
    if (pidAlive(pid)) continue;
    fsDo("remove leftover", path.join(dir, n), () => fs.rmSync(path.join(dir, n), { recursive: true, force: true }));
    removed.push(n);
  }
  return removed;
}
