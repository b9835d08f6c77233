/**
 * Checkpoint directories in the Hugging Face layout (docs/model.md): config.json plus
 * model.safetensors, or shards model-0000i-of-0000N.safetensors with model.safetensors.index.json
 * ({"metadata": {"total_size"}, "weight_map": {name: shard}}). A save builds the whole directory
 * under a temporary name and renames it into place, so a crash never leaves a partial checkpoint.
 * Names are not checked against a model here; the model module does that via checkExpectedTensors.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { UserError } from "../util/errors.ts";
import { findAtomicLeftovers, ioError, isAtomicLeftoverName, writeDirAtomic, writeFileAtomic, type FileContent } from "./atomic.ts";
import {
  DEFAULT_METADATA,
  encodeFloat32,
  numElements,
  readSafetensors,
  tensorToFloat32,
  writeSafetensors,
  type FloatDtype,
  type TensorInput,
} from "./safetensors.ts";

export const CONFIG_FILE = "config.json";
export const SINGLE_FILE = "model.safetensors";
export const INDEX_FILE = "model.safetensors.index.json";
/** Hugging Face's default max_shard_size ("5GB", decimal). */
export const DEFAULT_MAX_SHARD_BYTES = 5_000_000_000;

/** A float32 tensor with its shape (row-major, PyTorch convention). */
export interface ShapedTensor {
  shape: number[];
  data: Float32Array;
}

export interface SaveCheckpointOptions {
  /** Split into shards of at most this many bytes (a larger single tensor gets a shard alone). */
  maxShardBytes?: number;
  /** Storage dtype; F16/BF16 are for export (round to nearest even). Default F32. */
  dtype?: FloatDtype;
  /** More files to put in the directory (e.g. training state), by plain file name. */
  extraFiles?: Record<string, FileContent>;
}

export interface LoadedCheckpoint {
  config: Record<string, unknown>;
  tensors: Map<string, ShapedTensor>;
}

export function shardFileName(index: number, count: number): string {
  const pad = (i: number) => String(i).padStart(5, "0");
  return `model-${pad(index)}-of-${pad(count)}.safetensors`;
}

/** Groups tensors, in the order given, into shards of at most maxBytes (as huggingface_hub does). */
function planShards(entries: [string, TensorInput][], maxBytes: number): [string, TensorInput][][] {
  const shards: [string, TensorInput][][] = [];
  let current: [string, TensorInput][] = [];
  let size = 0;
  for (const entry of entries) {
    const bytes = entry[1].data.byteLength;
    if (current.length > 0 && size + bytes > maxBytes) {
      shards.push(current);
      current = [];
      size = 0;
    }
    current.push(entry);
    size += bytes;
  }
  if (current.length > 0 || shards.length === 0) shards.push(current);
  return shards;
}

function checkPlainFileName(name: string): void {
  if (name === "" || name !== path.basename(name) || name === "." || name === ".." || name.includes("\\")) {
    throw new Error(`extra checkpoint file name must be a plain file name, got '${name}'`);
  }
  if (name === CONFIG_FILE || name === SINGLE_FILE || name === INDEX_FILE || /^model-\d+-of-\d+\.safetensors$/.test(name)) {
    throw new Error(`extra checkpoint file '${name}' would clash with the checkpoint's own files`);
  }
}

/**
 * Writes checkpoint directory `dir` atomically (the whole directory appears at once, replacing any
 * previous one). config.json gets "model_type": "mhmoe".
 */
export function saveCheckpointDir(
  dir: string,
  config: object,
  tensors: Map<string, ShapedTensor> | Record<string, ShapedTensor>,
  options: SaveCheckpointOptions = {},
): void {
  const dtype = options.dtype ?? "F32";
  const maxShardBytes = options.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES;
  if (!(maxShardBytes > 0)) throw new Error(`maxShardBytes must be positive, got ${maxShardBytes}`);
  const extra = Object.entries(options.extraFiles ?? {});
  for (const [name] of extra) checkPlainFileName(name);

  const entries: [string, TensorInput][] = [];
  for (const [name, t] of tensors instanceof Map ? tensors.entries() : Object.entries(tensors)) {
    if (t.data.length !== numElements(t.shape)) {
      throw new Error(`tensor '${name}': shape [${t.shape.join(", ")}] needs ${numElements(t.shape)} values, data has ${t.data.length}`);
    }
    entries.push([name, { dtype, shape: t.shape, data: dtype === "F32" ? t.data : encodeFloat32(t.data, dtype) }]);
  }
  const shards = planShards(entries, maxShardBytes);
  const configText = JSON.stringify({ ...config, model_type: "mhmoe" }, null, 2) + "\n";

  writeDirAtomic(dir, (tmp) => {
    writeFileAtomic(path.join(tmp, CONFIG_FILE), configText);
    if (shards.length === 1) {
      writeSafetensors(path.join(tmp, SINGLE_FILE), new Map(shards[0]), DEFAULT_METADATA);
    } else {
      const weightMap: Record<string, string> = {};
      let totalSize = 0;
      shards.forEach((shard, i) => {
        const file = shardFileName(i + 1, shards.length);
        writeSafetensors(path.join(tmp, file), new Map(shard), DEFAULT_METADATA);
        for (const [name, t] of shard) {
          weightMap[name] = file;
          totalSize += t.data.byteLength;
        }
      });
      const sortedMap = Object.fromEntries(Object.keys(weightMap).sort().map((k) => [k, weightMap[k]]));
      const index = { metadata: { total_size: totalSize }, weight_map: sortedMap };
      writeFileAtomic(path.join(tmp, INDEX_FILE), JSON.stringify(index, null, 2) + "\n");
    }
    for (const [name, content] of extra) writeFileAtomic(path.join(tmp, name), content);
  });
}

export function readJsonObject(file: string, what: string): Record<string, unknown> {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    throw ioError(e, `read ${what}`, file);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new UserError(`${file}: invalid JSON: ${(e as Error).message}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new UserError(`${file}: must hold a JSON object`);
  return value as Record<string, unknown>;
}

/** Tensor name -> shard path, from a validated index file whose shards all exist. */
function readWeightMap(indexPath: string, dir: string): Map<string, string> {
  const index = readJsonObject(indexPath, "shard index");
  const weightMap = index.weight_map;
  if (typeof weightMap !== "object" || weightMap === null || Array.isArray(weightMap)) {
    throw new UserError(`${indexPath}: "weight_map" must be an object mapping tensor names to shard files`);
  }
  const result = new Map<string, string>();
  for (const [name, file] of Object.entries(weightMap)) {
    if (typeof file !== "string" || file === "" || file !== path.basename(file) || file === "." || file === "..") {
      throw new UserError(`${indexPath}: weight_map entry for tensor '${name}' must be a file name in the same directory, got ${JSON.stringify(file)}`);
    }
    const shardPath = path.join(dir, file);
    if (!fs.existsSync(shardPath)) throw new UserError(`${indexPath}: weight_map names shard ${file} (for tensor '${name}'), which does not exist`);
    result.set(name, shardPath);
  }
  return result;
}

/**
 * Loads a checkpoint directory in either layout, converting every tensor to float32. Errors are
 * one UserError line naming the directory or file at fault.
 */
export function loadCheckpointDir(dir: string): LoadedCheckpoint {
  if (isAtomicLeftoverName(dir)) {
    throw new UserError(`${dir}: this is the leftover of an interrupted checkpoint write, not a checkpoint (delete it)`);
  }
  if (!fs.existsSync(dir)) {
    const leftovers = findAtomicLeftovers(dir).filter((p) => p.includes(".old-"));
    const hint = leftovers.length > 0 ? ` (an interrupted save left the previous checkpoint in ${leftovers[0]}; rename it back to ${dir})` : "";
    throw new UserError(`checkpoint directory ${dir} does not exist${hint}`);
  }
  if (!fs.statSync(dir).isDirectory()) throw new UserError(`checkpoint ${dir} is not a directory`);
  const configPath = path.join(dir, CONFIG_FILE);
  if (!fs.existsSync(configPath)) throw new UserError(`${configPath}: missing (is ${dir} a checkpoint directory?)`);
  const config = readJsonObject(configPath, "config");

  const singlePath = path.join(dir, SINGLE_FILE);
  const indexPath = path.join(dir, INDEX_FILE);
  const hasSingle = fs.existsSync(singlePath);
  const hasIndex = fs.existsSync(indexPath);
  if (hasSingle && hasIndex) throw new UserError(`${dir}: holds both ${SINGLE_FILE} and ${INDEX_FILE}; keep one`);
  if (!hasSingle && !hasIndex) throw new UserError(`${dir}: no ${SINGLE_FILE} or ${INDEX_FILE} (no weights in this checkpoint)`);

  let weightMap: Map<string, string> | undefined; // tensor -> shard path
  let files = [singlePath];
  if (hasIndex) {
    weightMap = readWeightMap(indexPath, dir);
    files = [...new Set(weightMap.values())];
  }
  const read = files.map((file) => ({ file, content: readSafetensors(file) }));

  const foundIn = new Map<string, string>();
  for (const { file, content } of read) {
    for (const name of content.tensors.keys()) {
      const earlier = foundIn.get(name);
      if (earlier !== undefined) throw new UserError(`${file}: tensor '${name}' is listed twice (also in ${earlier})`);
      if (weightMap && !weightMap.has(name)) throw new UserError(`${file}: tensor '${name}' is not listed in ${indexPath}`);
      foundIn.set(name, file);
    }
  }
  for (const [name, shard] of weightMap ?? []) {
    const actual = foundIn.get(name);
    if (actual === undefined) throw new UserError(`${shard}: tensor '${name}' is missing (${indexPath} maps it there)`);
    if (actual !== shard) throw new UserError(`${indexPath}: maps tensor '${name}' to ${shard}, but it is stored in ${actual}`);
  }

  const tensors = new Map<string, ShapedTensor>();
  for (const { file, content } of read) {
    for (const [name, t] of content.tensors) tensors.set(name, { shape: t.shape, data: tensorToFloat32(t, `${file}: tensor '${name}'`) });
  }
  return { config, tensors };
}

const shapeText = (shape: readonly number[]) => `[${shape.join(", ")}]`;

/**
 * Checks loaded tensors against the names and shapes a model expects. The first problem (missing,
 * unexpected, or wrongly shaped tensor, in the expected order) is thrown as one UserError line
 * naming `file`, the tensor and both shapes.
 */
export function checkExpectedTensors(
  tensors: Map<string, { shape: readonly number[] }>,
  expected: Map<string, readonly number[]>,
  file: string,
): void {
  for (const [name, shape] of expected) {
    const t = tensors.get(name);
    if (!t) throw new UserError(`${file}: missing tensor '${name}' (expected shape ${shapeText(shape)})`);
    const same = t.shape.length === shape.length && t.shape.every((d, i) => d === shape[i]);
    if (!same) throw new UserError(`${file}: tensor '${name}' has shape ${shapeText(t.shape)}, expected ${shapeText(shape)}`);
  }
  for (const [name, t] of tensors) {
    if (!expected.has(name)) throw new UserError(`${file}: unexpected tensor '${name}' with shape ${shapeText(t.shape)} (not part of this model)`);
  }
}
