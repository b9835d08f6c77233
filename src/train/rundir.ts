/**
 * The run directory, owned by one process at a time: OUT/.lock (pid of the owner), checkpoint-N/ and
 * `latest` (src/train/checkpoint.ts), metrics.jsonl (one JSON object per line: logged steps and
 * evaluations), data/ (text inputs tokenized for the run). Opening it refuses a second owner and a fresh
 * run over one with checkpoints, and removes what dead writers left behind; a resumed run's metrics.jsonl is cut
 * back to the step it resumes from, so the file has one row per logged step whatever was killed when.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync, rmSync, statSync, truncateSync } from "node:fs";
import { join } from "node:path";
import { UserError } from "../util/errors.ts";
import { fsDo, ioError, writeFileAtomic } from "../io/atomic.ts";
import { acquireLock, removeDeadLeftovers, type Lock } from "../io/lock.ts";
import { listCheckpoints } from "./checkpoint.ts";

export const METRICS_FILE = "metrics.jsonl";
export const LOCK_FILE = ".lock";

export class RunDir {
  readonly metricsFile: string;

  private constructor(readonly out: string, private readonly lock: Lock, private readonly created: boolean) {
    this.metricsFile = join(out, METRICS_FILE);
  }

  /**
   * Takes OUT for this process. `resumeStep` undefined: a fresh run, refused where a run already is;
   * otherwise metrics.jsonl loses its rows past that step (and any half-written last line).
   */
  static open(out: string, opts: { resumeStep?: number; onInfo?: (line: string) => void } = {}): RunDir {
    const created = !existsSync(out);
    if (!created && !statSync(out).isDirectory()) throw new UserError(`cannot create run directory ${out}: a file is in the way`);
    fsDo("create run directory", out, () => mkdirSync(out, { recursive: true }));
    const lock = acquireLock(join(out, LOCK_FILE), out, "mhmoe train", opts.onInfo);
    const dir = new RunDir(out, lock, created);
    try {
      const removed = removeDeadLeftovers(out);
      if (removed.length) opts.onInfo?.(`removed ${removed.length} leftover(s) of interrupted writes: ${removed.join(", ")}`);
      if (opts.resumeStep === undefined) dir.refuseOldRun(opts.onInfo);
      else dir.truncateMetrics(opts.resumeStep);
    } catch (e) {
      dir.abandon();
      throw e;
    }
    return dir;
  }

  private refuseOldRun(onInfo?: (line: string) => void): void {
    const ckpts = listCheckpoints(this.out);
    if (ckpts.length > 0) {
      const step = Number(ckpts[ckpts.length - 1]!.slice("checkpoint-".length));
      throw new UserError(`${this.out} already holds a run (step ${step}); use --resume, or another --out`);
    }
    // A run that was killed before its first checkpoint left nothing to resume: its log goes.
    if (existsSync(this.metricsFile)) {
      onInfo?.(`${this.out} holds the ${METRICS_FILE} of a run that wrote no checkpoint: starting it afresh`);
      fsDo("remove", this.metricsFile, () => rmSync(this.metricsFile, { force: true }));
    }
  }

  /** Appends one record as one line; a failed write (disk full) leaves the file as it was. */
  appendMetrics(record: object): void {
    const line = JSON.stringify(record) + "\n";
    const before = existsSync(this.metricsFile) ? fsDo("read", this.metricsFile, () => statSync(this.metricsFile).size) : 0;
    try {
      appendFileSync(this.metricsFile, line);
    } catch (e) {
      try {
        truncateSync(this.metricsFile, before);
      } catch {
        // nothing was written, or the file cannot be touched at all: the error below says why
      }
      throw ioError(e, "append to", this.metricsFile);
    }
  }

  /** Keeps the whole rows whose step is at most `step`, rewritten atomically. */
  truncateMetrics(step: number): void {
    if (!existsSync(this.metricsFile)) return;
    const text = fsDo("read", this.metricsFile, () => readFileSync(this.metricsFile, "utf8"));
    const lines = text.split("\n");
    lines.pop(); // the text after the last newline: empty, or a half-written row
    const keep = lines.filter((l) => {
      try {
        const s = JSON.parse(l).step;
        return Number.isFinite(s) && s <= step;
      } catch {
        return false;
      }
    });
    const kept = keep.map((l) => l + "\n").join("");
    if (kept !== text) writeFileAtomic(this.metricsFile, kept);
  }

  /** The run is over (done, stopped or failed after it started): the lock goes. */
  close(): void {
    this.lock.release();
  }

  /** The run never started: the lock goes, and so does the directory if this run created it. */
  abandon(): void {
    this.lock.release();
    if (this.created) rmSync(this.out, { recursive: true, force: true });
  }
}
