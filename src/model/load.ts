/**
 * A model checkpoint as the rest of mhmoe sees it: a validated ModelConfig and one float32 array per
 * parameter of parameterSpecs(config). The directory format itself (config.json + safetensors, shards,
 * atomic writes) is src/io/checkpoint.ts; this file adds what only the model knows: which config
 * fields are valid and which tensors, of which shapes, a config implies.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import {
  CONFIG_FILE, INDEX_FILE, SINGLE_FILE, checkExpectedTensors, loadCheckpointDir, saveCheckpointDir,
  type SaveCheckpointOptions, type ShapedTensor,
} from "../io/checkpoint.ts";
import { resolveConfig, validateConfig, type ModelConfig } from "./config.ts";
import { numel, parameterSpecs } from "./params.ts";
import { UserError } from "../util/errors.ts";

export interface ModelCheckpoint {
  config: ModelConfig;
  params: Map<string, Float32Array>;
}

/** Expected tensor name -> shape for a config, in parameterSpecs order. */
export function expectedTensorShapes(c: ModelConfig): Map<string, readonly number[]> {
  return new Map(parameterSpecs(c).map((s) => [s.name, s.shape]));
}

/**
 * Loads and checks a checkpoint directory. Every user-caused problem (missing or corrupt file, bad
 * config field, missing / unexpected / wrongly shaped tensor) is one UserError line naming the file
 * and the field or tensor.
 */
export function loadModelCheckpoint(dir: string): ModelCheckpoint {
  const loaded = loadCheckpointDir(dir);
  // resolveConfig refuses a model_type other than "mhmoe" and names config.json and the field.
  const config = resolveConfig(loaded.config, path.join(dir, CONFIG_FILE));
  const single = path.join(dir, SINGLE_FILE);
  const weightsFile = fs.existsSync(single) ? single : path.join(dir, INDEX_FILE);
  checkExpectedTensors(loaded.tensors, expectedTensorShapes(config), weightsFile);
  const params = new Map<string, Float32Array>();
  for (const [name, t] of loaded.tensors) params.set(name, t.data);
  return { config, params };
}

/**
 * Writes a checkpoint directory atomically from host parameters. A missing parameter or a wrong
 * length is a bug of the caller (not a user error), so it throws a plain Error before anything is written.
 */
export function saveModelCheckpoint(
  dir: string, config: ModelConfig, params: Map<string, Float32Array>, opts: SaveCheckpointOptions = {},
): void {
  validateConfig(config);
  const tensors = new Map<string, ShapedTensor>();
  for (const s of parameterSpecs(config)) {
    const data = params.get(s.name);
    if (!data) throw new Error(`saveModelCheckpoint: no value for parameter ${s.name}`);
    if (data.length !== numel(s.shape)) {
      throw new Error(`saveModelCheckpoint: ${s.name} has ${data.length} values, shape [${s.shape.join(", ")}] needs ${numel(s.shape)}`);
    }
    tensors.set(s.name, { shape: [...s.shape], data });
  }
  const extra = [...params.keys()].filter((name) => !tensors.has(name));
  if (extra.length > 0) throw new Error(`saveModelCheckpoint: ${extra[0]} is not a parameter of this config`);
  saveCheckpointDir(dir, config, tensors, opts);
}

/**
 * Refuses weights holding NaN or Inf (a diverged run's checkpoint, a corrupt export) in one line naming
 * the first such tensor and element: scores or updates computed from them would be meaningless.
 */
export function assertFiniteParams(params: Map<string, Float32Array>, where: string, use: string): void {
  for (const [name, w] of params) {
    for (let i = 0; i < w.length; i++) {
      if (!Number.isFinite(w[i]!)) throw new UserError(`${where}: tensor ${name} holds ${w[i]} at element ${i}; cannot ${use} a checkpoint with non-finite weights`);
    }
  }
}
