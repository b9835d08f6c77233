/**
 * Training checkpoints: OUT/checkpoint-STEP/ holds config.json + model.safetensors (the model, spec
 * names), optimizer.safetensors (AdamW moments "m.<name>" / "v.<name>") and trainer_state.json (step,
 * loader position, run options, tokenizer). Each directory is written under a temporary name and renamed
 * when complete; OUT/latest (a one-line file naming the newest complete checkpoint) is replaced
 * atomically after it, so a kill at any moment leaves the previous checkpoint and pointer usable.
 */
import { existsSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { UserError } from "../util/errors.ts";
import { fsDo, writeFileAtomic, isAtomicLeftoverName, ioError } from "../io/atomic.ts";
import { CONFIG_FILE, saveCheckpointDir, type ShapedTensor } from "../io/checkpoint.ts";
import { encodeSafetensors, readSafetensors, tensorToFloat32 } from "../io/safetensors.ts";
import type { ModelConfig } from "../model/config.ts";
import { parameterSpecs } from "../model/params.ts";
import { assertFiniteParams, loadModelCheckpoint } from "../model/load.ts";
import type { LoaderPosition } from "../data/index.ts";

export const TRAINER_STATE_FILE = "trainer_state.json";
export const OPTIMIZER_FILE = "optimizer.safetensors";
export const LATEST_FILE = "latest";

export interface TrainerState {
  format: "mhmoe-trainer-state";
  version: 1;
  /** optimizer steps completed */
  step: number;
  tokensSeen: number;
  skippedSteps: number;
  tokenizer: string;
  /** the shard set the loader position belongs to */
  data: { dir: string; fingerprint: string };
  loader: LoaderPosition;
  /** the options of the run (for resuming with the same hyperparameters) */
  run: Record<string, unknown>;
  seed: number;
  /**
   * AdamW's bias corrections 1 - beta^n (n = updates applied: steps less skipped steps) as the GPU holds
   * them, so a resumed run continues with the same bits; absent in older checkpoints (then recomputed).
   */
  adam?: { bias_correction1: number; bias_correction2: number };
}

export function checkpointName(step: number): string {
  return `checkpoint-${String(step).padStart(6, "0")}`;
}

export interface SaveTrainingArgs {
  out: string;
  config: ModelConfig;
  params: Map<string, Float32Array>;
  m: Map<string, Float32Array>;
  v: Map<string, Float32Array>;
  state: TrainerState;
  keep: number;
}

/** Writes checkpoint-STEP atomically, points `latest` at it, prunes beyond `keep`; returns its path. */
export function saveTrainingCheckpoint(a: SaveTrainingArgs): string {
  const name = checkpointName(a.state.step);
  const dir = join(a.out, name);
  const specs = parameterSpecs(a.config);
  const tensors = new Map<string, ShapedTensor>();
  const moments = new Map<string, { dtype: "F32"; shape: number[]; data: Float32Array }>();
  for (const s of specs) {
    tensors.set(s.name, { shape: s.shape, data: a.params.get(s.name)! });
    moments.set(`m.${s.name}`, { dtype: "F32", shape: s.shape, data: a.m.get(s.name)! });
    moments.set(`v.${s.name}`, { dtype: "F32", shape: s.shape, data: a.v.get(s.name)! });
  }
  saveCheckpointDir(dir, a.config, tensors, {
    extraFiles: {
      // the chunks as they are: moments of a real model pass 2 GiB, more than one buffer or write takes
      [OPTIMIZER_FILE]: encodeSafetensors(moments),
      [TRAINER_STATE_FILE]: JSON.stringify(a.state, null, 2) + "\n",
    },
  });
  writeFileAtomic(join(a.out, LATEST_FILE), name + "\n");
  if (a.keep > 0) {
    const all = listCheckpoints(a.out);
    for (const old of all.slice(0, Math.max(0, all.length - a.keep))) removeCheckpoint(join(a.out, old));
  }
  return dir;
}

/**
 * Deleting a directory file by file can be killed half way, leaving a checkpoint-STEP that still looks
 * complete (trainer_state.json present) but lacks its weights; renaming it to a leftover name first
 * makes it stop being a checkpoint in one atomic step.
 */
function removeCheckpoint(dir: string): void {
  const doomed = `${dir}.old-${process.pid}-${Math.random().toString(36).slice(2, 10)}`;
  try {
    renameSync(dir, doomed);
  } catch (e) {
    throw ioError(e, "remove old checkpoint", dir);
  }
  rmSync(doomed, { recursive: true, force: true });
}

const stepOf = (name: string) => Number(name.slice("checkpoint-".length));

/** Complete checkpoint directories of a run, oldest first (leftovers of interrupted writes excluded). */
export function listCheckpoints(out: string): string[] {
  if (!existsSync(out)) return [];
  // By step, not by name: past 999999 steps the zero padding no longer keeps names in order.
  return readdirSync(out)
    .filter((n) => /^checkpoint-\d+$/.test(n) && !isAtomicLeftoverName(n) && existsSync(join(out, n, TRAINER_STATE_FILE)))
    .sort((x, y) => stepOf(x) - stepOf(y));
}

/**
 * The checkpoint to resume from: `path` may be a checkpoint directory itself or a run directory, whose
 * `latest` pointer (or, failing that, newest complete checkpoint) is taken.
 */
export function resolveResumeDir(path: string, flag = "--resume"): string {
  if (existsSync(join(path, TRAINER_STATE_FILE))) return path;
  if (!existsSync(path)) throw new UserError(`${flag}: ${path} does not exist`);
  const latest = join(path, LATEST_FILE);
  if (existsSync(latest)) {
    const name = fsDo("read checkpoint pointer", latest, () => readFileSync(latest, "utf8")).trim();
    if (existsSync(join(path, name, TRAINER_STATE_FILE))) return join(path, name);
  }
  const all = listCheckpoints(path);
  if (all.length === 0) throw new UserError(`${flag}: no complete checkpoint in ${path}`);
  return join(path, all[all.length - 1]!);
}

/**
 * A model checkpoint named by the user: a checkpoint directory (config.json + weights, from mhmoe or
 * elsewhere), a run directory (its latest checkpoint), or a run's `latest` pointer file.
 */
export function resolveModelDir(path: string, flag: string): string {
  if (existsSync(join(path, CONFIG_FILE))) return path;
  if (existsSync(path) && basename(path) === LATEST_FILE && statSync(path).isFile()) path = dirname(path);
  // a run directory: its latest checkpoint; anything else is left for the checkpoint reader to judge
  if (existsSync(join(path, LATEST_FILE)) || listCheckpoints(path).length > 0) return resolveResumeDir(path, flag);
  return path;
}

export function readTrainerState(dir: string): TrainerState {
  const file = join(dir, TRAINER_STATE_FILE);
  let s: TrainerState;
  try {
    s = JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    throw new UserError(`${file}: cannot read training state (${e instanceof Error ? e.message : e})`);
  }
  if (s?.format !== "mhmoe-trainer-state" || s.version !== 1 || !Number.isInteger(s.step)) {
    throw new UserError(`${file}: not an mhmoe training state (format/version/step missing)`);
  }
  return s;
}

export function readMoments(dir: string, config: ModelConfig): { m: Map<string, Float32Array>; v: Map<string, Float32Array> } {
  const file = join(dir, OPTIMIZER_FILE);
  if (!existsSync(file)) throw new UserError(`${file}: missing (the checkpoint has no optimizer state)`);
  const f = readSafetensors(file);
  const m = new Map<string, Float32Array>(), v = new Map<string, Float32Array>();
  for (const s of parameterSpecs(config)) {
    for (const [prefix, into] of [["m", m], ["v", v]] as const) {
      const t = f.tensors.get(`${prefix}.${s.name}`);
      const n = s.shape.reduce((a, b) => a * b, 1);
      if (!t) throw new UserError(`${file}: missing tensor ${prefix}.${s.name}`);
      const data = tensorToFloat32(t, `${prefix}.${s.name}`);
      if (data.length !== n) throw new UserError(`${file}: tensor ${prefix}.${s.name} has ${data.length} values, expected ${n}`);
      into.set(s.name, Float32Array.from(data));
    }
  }
  return { m, v };
}

/** Everything a resumed run needs from its checkpoint, read once (the CLI hands it to train()). */
export interface ResumeState {
  dir: string;
  state: TrainerState;
  config: ModelConfig;
  params: Map<string, Float32Array>;
  moments: { m: Map<string, Float32Array>; v: Map<string, Float32Array> };
}

/** Reads the checkpoint `path` names (a checkpoint, or a run directory's latest), refusing non-finite weights. */
export function readResumeState(path: string): ResumeState {
  const dir = resolveResumeDir(path);
  const state = readTrainerState(dir);
  const { config, params } = loadModelCheckpoint(dir);
  assertFiniteParams(params, dir, "resume from");
  return { dir, state, config, params, moments: readMoments(dir, config) };
}
