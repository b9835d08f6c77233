/**
 * Crash-safe writes. A file is written to a temporary name beside its target, fsynced and renamed
 * over it; a directory is built under a temporary name and renamed into place. A reader therefore
 * sees the old version or the new one, never a half-written one. Leftovers of a crashed write keep
 * their temporary names (`NAME.tmp-<pid>-<rand>`, `NAME.old-<pid>-<rand>`), which
 * isAtomicLeftoverName recognises so that nobody mistakes them for a finished file or checkpoint.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { UserError } from "../util/errors.ts";

/**
 * Test-only injection points: a test (or a child process it spawns) sets these to throw or to
 * SIGKILL itself in the middle of a write, then checks that the previous version is intact.
 */
export const atomicTestHooks: {
  /** After chunk `index` of `tmpPath` has been written, before fsync and rename. */
  afterChunk?: (tmpPath: string, index: number) => void;
  /** After a directory has been built and fsynced under `tmpDir`, before it is renamed to `dir`. */
  beforeDirRename?: (tmpDir: string, dir: string) => void;
  /** After an existing `dir` was moved aside to `oldDir`, before the new one takes its name. */
  afterOldDirMoved?: (oldDir: string, dir: string) => void;
} = {};

const LEFTOVER_SUFFIX = /\.(tmp|old)-\d+-[0-9a-z]+$/;
const EXACT_SUFFIX = /^\.(tmp|old)-\d+-[0-9a-z]+$/;

/** True for the temporary names this module uses; such paths are never a finished file or checkpoint. */
export function isAtomicLeftoverName(nameOrPath: string): boolean {
  return LEFTOVER_SUFFIX.test(path.basename(nameOrPath));
}

function uniqueSuffix(kind: "tmp" | "old"): string {
  return `.${kind}-${process.pid}-${Math.random().toString(36).slice(2, 10)}`;
}

/** Turns an OS error about `target` into one line a user can act on; anything else passes through. */
export function ioError(e: unknown, action: string, target: string): unknown {
  const code = (e as NodeJS.ErrnoException | null)?.code;
  if (typeof code !== "string") return e;
  const why: Record<string, string> = {
    ENOENT: "no such file or directory",
    EACCES: "permission denied",
    EPERM: "operation not permitted",
    ENOSPC: "no space left on device",
    EDQUOT: "disk quota exceeded",
    EROFS: "read-only file system",
    EISDIR: "is a directory",
    ENOTDIR: "a path component is not a directory",
    ENOTEMPTY: "directory not empty",
    EEXIST: "already exists",
  };
  return new UserError(`cannot ${action} ${target}: ${why[code] ?? code}`);
}

/**
 * Runs one file-system operation on `target`; an OS error becomes one UserError line ("cannot ACTION
 * TARGET: why"), so call sites need no try/catch of their own.
 */
export function fsDo<T>(action: string, target: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw ioError(e, action, target);
  }
}

/** fsync a directory so a rename inside it survives a power cut; some platforms refuse, which is fine. */
function fsyncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = fs.openSync(dir, "r");
    fs.fsyncSync(fd);
  } catch {
    // Directory fsync is unsupported on some platforms (e.g. Windows); the rename is still atomic.
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

export type FileContent = string | Uint8Array | Iterable<Uint8Array>;

/**
 * Writes `content` to `target` atomically: temp file in the same directory, fsync, rename, fsync
 * the directory. `content` may be an iterable of chunks so that large files stream from memory
 * without being concatenated first. On any error the temp file is removed and the target untouched.
 */
export function writeFileAtomic(target: string, content: FileContent): void {
  const tmp = path.join(path.dirname(target), path.basename(target) + uniqueSuffix("tmp"));
  let fd: number | undefined;
  try {
    fd = fs.openSync(tmp, "wx", 0o644);
    const chunks: Iterable<Uint8Array> =
      typeof content === "string" ? [new TextEncoder().encode(content)] : content instanceof Uint8Array ? [content] : content;
    let index = 0;
    for (const chunk of chunks) {
      let done = 0;
      // at most 1 GiB per call: a write's length must stay below 2^31
      while (done < chunk.byteLength) done += fs.writeSync(fd, chunk, done, Math.min(chunk.byteLength - done, 2 ** 30));
      atomicTestHooks.afterChunk?.(tmp, index++);
    }
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = undefined;
    fs.renameSync(tmp, target);
  } catch (e) {
    if (fd !== undefined) fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw ioError(e, "write", target);
  }
  fsyncDir(path.dirname(target));
}

/** fsync every file and directory under `root` (bottom-up), so the tree is durable before its rename. */
function fsyncTree(root: string): void {
  for (const entry of fs.readdirSync(root, { withFileTypes: true })) {
    const p = path.join(root, entry.name);
    if (entry.isDirectory()) fsyncTree(p);
    else if (entry.isFile()) {
      const fd = fs.openSync(p, "r");
      try {
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
    }
  }
  fsyncDir(root);
}

/**
 * Creates or replaces directory `dir` as a whole: `build(tmpDir)` fills a fresh `DIR.tmp-<pid>-<rand>`
 * beside it, which is then fsynced and renamed to `dir`. An existing `dir` is first moved aside to
 * `DIR.old-<pid>-<rand>` and deleted once the new one is in place (POSIX cannot rename over a
 * non-empty directory). If build throws, the temp dir is removed and `dir` is untouched. A crash
 * leaves at most these suffixed leftovers, never a partial `dir`.
 */
export function writeDirAtomic(dir: string, build: (tmpDir: string) => void): void {
  const target = path.resolve(dir);
  const parent = path.dirname(target);
  if (!fs.existsSync(parent)) {
    try {
      fs.mkdirSync(parent, { recursive: true });
    } catch (e) {
      throw ioError(e, "create directory", parent);
    }
  }
  if (fs.existsSync(target) && !fs.statSync(target).isDirectory()) {
    throw new UserError(`cannot write directory ${dir}: a file with that name exists`);
  }
  const tmpDir = target + uniqueSuffix("tmp");
  try {
    fs.mkdirSync(tmpDir);
    build(tmpDir);
    fsyncTree(tmpDir);
    atomicTestHooks.beforeDirRename?.(tmpDir, target);
  } catch (e) {
    fs.rmSync(tmpDir, { recursive: true, force: true });
    throw ioError(e, "write directory", dir);
  }
  let oldDir: string | undefined;
  try {
    if (fs.existsSync(target)) {
      oldDir = target + uniqueSuffix("old");
      fs.renameSync(target, oldDir);
      atomicTestHooks.afterOldDirMoved?.(oldDir, target);
    }
    fs.renameSync(tmpDir, target);
  } catch (e) {
    // Put the previous version back if we had already moved it aside.
    if (oldDir !== undefined && !fs.existsSync(target) && fs.existsSync(oldDir)) fs.renameSync(oldDir, target);
    fs.rmSync(tmpDir, { recursive: true, force: true });
    throw ioError(e, "replace directory", dir);
  }
  fsyncDir(parent);
  if (oldDir !== undefined) fs.rmSync(oldDir, { recursive: true, force: true });
}

/** Leftovers of interrupted writes of `target`: its `.tmp-*` / `.old-*` siblings, sorted by name. */
export function findAtomicLeftovers(target: string): string[] {
  const abs = path.resolve(target);
  const parent = path.dirname(abs);
  const base = path.basename(abs);
  let names: string[];
  try {
    names = fs.readdirSync(parent);
  } catch {
    return [];
  }
  return names
    .filter((n) => n.startsWith(base) && EXACT_SUFFIX.test(n.slice(base.length)))
    .sort()
    .map((n) => path.join(parent, n));
}
