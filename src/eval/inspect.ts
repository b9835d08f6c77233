/**
 * `mhmoe inspect PATH`: what a checkpoint, a shard set or a .safetensors file holds, read from headers
 * only (a safetensors header is its first 8 + N bytes; the tensor data is never read), so inspecting a
 * large checkpoint costs the same as a small one. Nothing here touches the GPU. Shard sets are the one
 * exception to "headers only": their checksum verification streams every shard through sha256.
 */
import * as fs from "node:fs";
import { basename, join } from "node:path";
import { UserError } from "../util/errors.ts";
import { ioError } from "../io/atomic.ts";
import { CONFIG_FILE, INDEX_FILE, SINGLE_FILE, checkExpectedTensors, readJsonObject } from "../io/checkpoint.ts";
import { numElements, readSafetensorsHeader, type Dtype, type SafetensorsHeader } from "../io/safetensors.ts";
import { countActiveParams, isMoeLayer, resolveConfig, type ModelConfig } from "../model/config.ts";
import { expectedTensorShapes } from "../model/load.ts";
import { LATEST_FILE, OPTIMIZER_FILE, TRAINER_STATE_FILE, resolveModelDir } from "../train/checkpoint.ts";
import { openShardSet, verifyShard, INDEX_FILE as SHARD_INDEX_FILE, type Split } from "../data/shard-set.ts";
import { readTokenBatches } from "../data/shard-reader.ts";

// ---------------------------------------------------------------- reports

export interface TensorReport {
  name: string;
  dtype: Dtype;
  shape: number[];
  params: number;
  file: string;
}

export interface SafetensorsReport {
  kind: "safetensors";
  path: string;
  bytes: number;
  header_bytes: number;
  metadata: Record<string, string> | null;
  params: number;
  tensors: TensorReport[];
}

export interface CheckpointReport {
  kind: "checkpoint";
  path: string;
  /** the checkpoint directory PATH resolved to (PATH itself, or a run directory's newest) */
  dir: string;
  config: ModelConfig;
  params: { total: number; active_per_token: number; moe_layers: number; experts: number; top_k: number };
  weights: { files: string[]; bytes: number; dtypes: Dtype[] };
  tensors: TensorReport[];
  optimizer: { file: string; tensors: number; bytes: number } | null;
  /** trainer_state.json: an mhmoe training state or a PyTorch export record; null when absent */
  training: TrainingReport | null;
}

export type TrainingReport =
  | {
    format: "mhmoe-trainer-state";
    step: number;
    tokens_seen: number;
    skipped_steps: number;
    tokenizer: string;
    seed: number;
    data: string | null;
    run: Record<string, unknown>;
  }
  | { format: "mhmoe-torch-export"; tokenizer: string | null; source: string | null; torch_steps: number | null }
  | { format: string; raw: Record<string, unknown> };

export interface ShardReport {
  file: string;
  split: Split;
  documents: number | null;
  tokens: number | null;
  bytes: number | null;
  /** "ok" (sha256 matches), "failed" (error says why), "unchecked" (no checksum recorded; a Hugging Face file that read cleanly) */
  checksum: "ok" | "failed" | "unchecked";
  error?: string;
}

export interface ShardSetReport {
  kind: "shards";
  path: string;
  format: "mhmoe" | "huggingface";
  /** null: a Hugging Face set does not record one (pass --tokenizer) */
  tokenizer: string | null;
  vocab_size: number | null;
  /** image–text shards: index.json's images object (codebook, patch, size, codes, image ids, mask id); null for text */
  images: { codebook: string; patch: number; size: number; codes: number; image_token_offset: number; mask_token_id: number; patches_per_image: number } | null;
  splits: Record<Split, { shards: number; documents: number | null; tokens: number | null; bytes: number }>;
  shards: ShardReport[];
  verified: boolean;
}

export type InspectReport = SafetensorsReport | CheckpointReport | ShardSetReport;

const tensorReports = (h: SafetensorsHeader): TensorReport[] =>
  h.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, params: numElements(t.shape), file: basename(h.file) }));

export function inspectSafetensors(file: string): SafetensorsReport {
  const h = readSafetensorsHeader(file);
  const tensors = tensorReports(h);
  return {
    kind: "safetensors", path: file, bytes: h.bytes, header_bytes: h.headerBytes, metadata: h.metadata,
    params: tensors.reduce((a, t) => a + t.params, 0), tensors,
  };
}

function trainingReport(file: string): TrainingReport {
  const s = readJsonObject(file, "training state");
  const str = (v: unknown) => (typeof v === "string" ? v : null);
  const num = (v: unknown) => (typeof v === "number" ? v : null);
  if (s.format === "mhmoe-trainer-state") {
    if (!Number.isInteger(s.step)) throw new UserError(`${file}: not an mhmoe training state (step missing)`);
    const data = s.data as { dir?: unknown } | undefined;
    return {
      format: "mhmoe-trainer-state", step: s.step as number, tokens_seen: num(s.tokensSeen) ?? 0,
      skipped_steps: num(s.skippedSteps) ?? 0, tokenizer: str(s.tokenizer) ?? "byte", seed: num(s.seed) ?? 0,
      data: str(data?.dir), run: (s.run as Record<string, unknown>) ?? {},
    };
  }
  if (s.format === "mhmoe-torch-export") {
    return { format: "mhmoe-torch-export", tokenizer: str(s.tokenizer), source: str(s.source), torch_steps: num(s.torch_steps) };
  }
  return { format: String(s.format ?? "unknown"), raw: s };
}

/** A checkpoint directory, a run directory (its newest checkpoint) or a run's `latest` file. */
export function inspectCheckpoint(path: string): CheckpointReport {
  const dir = resolveModelDir(path, "inspect");
  const configPath = join(dir, CONFIG_FILE);
  if (!fs.existsSync(configPath)) throw new UserError(`${configPath}: missing (is ${dir} a checkpoint directory?)`);
  const config = resolveConfig(readJsonObject(configPath, "config"), configPath);
  const single = join(dir, SINGLE_FILE);
  const index = join(dir, INDEX_FILE);
  const hasSingle = fs.existsSync(single), hasIndex = fs.existsSync(index);
  if (hasSingle && hasIndex) throw new UserError(`${dir}: holds both ${SINGLE_FILE} and ${INDEX_FILE}; keep one`);
  if (!hasSingle && !hasIndex) throw new UserError(`${dir}: no ${SINGLE_FILE} or ${INDEX_FILE} (no weights in this checkpoint)`);
  let files = [single];
  let weightMap: Map<string, string> | undefined;
  if (hasIndex) {
    const wm = readJsonObject(index, "shard index").weight_map;
    if (typeof wm !== "object" || wm === null || Array.isArray(wm)) throw new UserError(`${index}: "weight_map" must be an object mapping tensor names to shard files`);
    weightMap = new Map();
    for (const [name, f] of Object.entries(wm)) {
      if (typeof f !== "string" || f !== basename(f) || f === "" || f === "." || f === "..") {
        throw new UserError(`${index}: weight_map entry for tensor '${name}' must be a file name in the same directory, got ${JSON.stringify(f)}`);
      }
      weightMap.set(name, f);
    }
    files = [...new Set(weightMap.values())].map((f) => join(dir, f));
  }
  const headers = files.map(readSafetensorsHeader);
  const tensors: TensorReport[] = [];
  const seen = new Map<string, string>();
  for (const h of headers) {
    for (const t of tensorReports(h)) {
      if (seen.has(t.name)) throw new UserError(`${h.file}: tensor '${t.name}' is listed twice (also in ${seen.get(t.name)})`);
      if (weightMap && weightMap.get(t.name) !== t.file) throw new UserError(`${index}: does not map tensor '${t.name}' to ${t.file}, where it is stored`);
      seen.set(t.name, h.file);
      tensors.push(t);
    }
  }
  for (const name of weightMap?.keys() ?? []) if (!seen.has(name)) throw new UserError(`${index}: maps tensor '${name}' to ${weightMap!.get(name)}, which does not hold it`);
  checkExpectedTensors(new Map(tensors.map((t) => [t.name, t])), expectedTensorShapes(config), hasSingle ? single : index);
  // in the model's order (parameterSpecs), not the files'
  const order = new Map([...expectedTensorShapes(config).keys()].map((n, i) => [n, i]));
  tensors.sort((a, b) => order.get(a.name)! - order.get(b.name)!);

  const optFile = join(dir, OPTIMIZER_FILE);
  let optimizer: CheckpointReport["optimizer"] = null;
  if (fs.existsSync(optFile)) {
    const h = readSafetensorsHeader(optFile);
    optimizer = { file: OPTIMIZER_FILE, tensors: h.tensors.length, bytes: h.bytes };
  }
  const stateFile = join(dir, TRAINER_STATE_FILE);
  const moeLayers = Array.from({ length: config.num_hidden_layers }, (_, l) => l).filter((l) => isMoeLayer(config, l)).length;
  return {
    kind: "checkpoint", path, dir, config,
    params: {
      total: tensors.reduce((a, t) => a + t.params, 0), active_per_token: countActiveParams(config),
      moe_layers: moeLayers, experts: config.num_experts, top_k: config.num_experts_per_tok,
    },
    weights: {
      files: files.map((f) => basename(f)), bytes: headers.reduce((a, h) => a + h.bytes, 0),
      dtypes: [...new Set(tensors.map((t) => t.dtype))],
    },
    tensors, optimizer,
    training: fs.existsSync(stateFile) ? trainingReport(stateFile) : null,
  };
}

/** A shard set directory (ours or Hugging Face .arrow files) or one .arrow file, every shard's checksum verified. */
export async function inspectShardSet(path: string, tokenizer?: string): Promise<ShardSetReport> {
  const ours = fs.existsSync(join(path, SHARD_INDEX_FILE));
  // a Hugging Face set records no tokenizer: open it as bytes to list its files, and say it is unknown
  const set = await openShardSet(path, ours ? {} : { tokenizer: tokenizer ?? "byte" });
  const known = ours || tokenizer !== undefined;
  const shards: ShardReport[] = [];
  for (const s of set.shards) {
    const r: ShardReport = { file: s.file, split: s.split, documents: s.documents, tokens: s.tokens, bytes: s.bytes, checksum: "unchecked" };
    if (s.sha256 === null) {
      // Hugging Face files record no counts or checksum: read them (which checks they parse, and their ids
      // against the tokenizer when one is named) to count documents and tokens
      try {
        let docs = 0, toks = 0;
        for await (const b of readTokenBatches(s.path, known ? set.vocabSize : 0x7fffffff)) {
          docs += b.continuation ? b.continuation.reduce((a, c) => a + (c ? 0 : 1), 0) : b.rows;
          toks += b.offsets[b.rows]! - b.offsets[0]!;
        }
        r.documents = docs;
        r.tokens = toks;
      } catch (e) {
        if (!(e instanceof UserError)) throw e;
        r.checksum = "failed";
        r.error = e.message;
      }
    } else {
      try {
        await verifyShard(set, s);
        r.checksum = "ok";
      } catch (e) {
        if (!(e instanceof UserError)) throw e;
        r.checksum = "failed";
        r.error = e.message;
      }
    }
    shards.push(r);
  }
  const sum = (list: ShardReport[], k: "documents" | "tokens") =>
    list.some((s) => s[k] === null) ? null : list.reduce((a, s) => a + (s[k] as number), 0);
  const split = (name: Split) => {
    const list = shards.filter((s) => s.split === name);
    return { shards: list.length, documents: sum(list, "documents"), tokens: sum(list, "tokens"), bytes: list.reduce((a, s) => a + (s.bytes ?? 0), 0) };
  };
  return {
    kind: "shards", path, format: set.format, tokenizer: known ? set.tokenizer : null, vocab_size: known ? set.vocabSize : null,
    images: set.images
      ? {
        codebook: set.images.codebook, patch: set.images.patch, size: set.images.size, codes: set.images.codes,
        image_token_offset: set.images.imageTokenOffset, mask_token_id: set.images.maskTokenId, patches_per_image: set.images.patchesPerImage,
      }
      : null,
    splits: { train: split("train"), val: split("val") }, shards, verified: shards.every((s) => s.checksum !== "failed"),
  };
}

function hasArrow(dir: string): boolean {
  try {
    return fs.readdirSync(dir).some((n) => n.endsWith(".arrow") && !n.startsWith("."));
  } catch {
    return false;
  }
}

/** What PATH is, judged from its name and the files it holds; then its report. */
export async function inspectPath(path: string, opts: { tokenizer?: string } = {}): Promise<InspectReport> {
  let st: fs.Stats;
  try {
    st = fs.statSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") throw new UserError(`${path}: does not exist`);
    throw ioError(e, "read", path);
  }
  if (st.isFile()) {
    if (path.endsWith(".safetensors")) return inspectSafetensors(path);
    if (path.endsWith(".arrow")) return inspectShardSet(path, opts.tokenizer);
    if (basename(path) === LATEST_FILE) return inspectCheckpoint(path);
    throw new UserError(`${path}: not a checkpoint, shard set or .safetensors file`);
  }
  if (!st.isDirectory()) throw new UserError(`${path}: not a file or directory`);
  const dir = resolveModelDir(path, "inspect");
  if (fs.existsSync(join(dir, CONFIG_FILE))) return inspectCheckpoint(path);
  if (fs.existsSync(join(path, SHARD_INDEX_FILE)) || hasArrow(path) || hasArrow(join(path, "train"))) return inspectShardSet(path, opts.tokenizer);
  throw new UserError(`${path}: not a checkpoint (no ${CONFIG_FILE}), run directory (no checkpoint), or shard set (no ${SHARD_INDEX_FILE} or .arrow files)`);
}

// ---------------------------------------------------------------- text

const int = (n: number) => n.toLocaleString("en-US");
const shape = (s: readonly number[]) => `[${s.join(", ")}]`;

function tensorLines(tensors: TensorReport[], showFile: boolean): string[] {
  const w = Math.max(...tensors.map((t) => t.name.length), 0);
  const sw = Math.max(...tensors.map((t) => shape(t.shape).length), 0);
  return tensors.map((t) => `  ${t.name.padEnd(w)}  ${t.dtype.padEnd(4)} ${shape(t.shape).padEnd(sw)}  ${int(t.params)}${showFile ? `  ${t.file}` : ""}`.trimEnd());
}

const RUN_KEYS: [string, string][] = [
  ["steps", "steps"], ["batchSize", "batch-size"], ["seqLen", "seq-len"], ["gradAccum", "grad-accum"], ["lr", "lr"],
  ["minLr", "min-lr"], ["warmup", "warmup"], ["schedule", "schedule"], ["weightDecay", "weight-decay"], ["clip", "clip"],
  ["seed", "seed"], ["data", "data"],
];

export function formatReport(r: InspectReport): string {
  const out: string[] = [];
  if (r.kind === "safetensors") {
    out.push(`safetensors ${r.path}: ${r.tensors.length} tensors, ${int(r.params)} values, ${int(r.bytes)} bytes (header ${int(r.header_bytes)})`);
    out.push(`metadata: ${r.metadata ? Object.entries(r.metadata).map(([k, v]) => `${k}=${v}`).join(", ") : "none"}`);
    out.push("tensors:", ...tensorLines(r.tensors, false));
  } else if (r.kind === "checkpoint") {
    const c = r.config;
    out.push(`checkpoint ${r.dir}`);
    const moe = r.params.moe_layers > 0
      ? `, ${r.params.moe_layers} MoE (${c.num_experts} experts, top-${c.num_experts_per_tok}, h=${c.mhmoe_heads}, router ${c.router_type})`
      : "";
    out.push(`model: ${c.num_hidden_layers} layers${moe}, hidden ${c.hidden_size}, vocab ${c.vocab_size}`);
    out.push(`parameters: ${int(r.params.total)} total, ${int(r.params.active_per_token)} active per token`);
    const t = r.training;
    if (t === null) out.push("training: no trainer_state.json");
    else if (t.format === "mhmoe-trainer-state" && "step" in t) {
      out.push(`training: step ${int(t.step)}, ${int(t.tokens_seen)} tokens seen, ${int(t.skipped_steps)} skipped steps, tokenizer ${t.tokenizer}`);
      const opts = RUN_KEYS.filter(([k]) => t.run[k] !== undefined && t.run[k] !== null).map(([k, flag]) => `--${flag} ${t.run[k]}`);
      if (opts.length > 0) out.push(`run: ${opts.join(" ")}`);
    } else if (t.format === "mhmoe-torch-export" && "torch_steps" in t) {
      out.push(`training: PyTorch export (mhmoe-torch-export), tokenizer ${t.tokenizer ?? "unknown"}, ${t.torch_steps ?? "?"} PyTorch steps${t.source ? `, from ${t.source}` : ""}`);
    } else out.push(`training: trainer_state.json of unknown format ${JSON.stringify(t.format)}`);
    out.push(`optimizer: ${r.optimizer ? `${r.optimizer.file}, ${r.optimizer.tensors} tensors, ${int(r.optimizer.bytes)} bytes` : "none"}`);
    out.push(`weights: ${r.weights.files.join(", ")}, ${int(r.weights.bytes)} bytes, ${r.weights.dtypes.join("/")}`);
    out.push("config:", ...Object.entries(c).map(([k, v]) => `  ${k}: ${JSON.stringify(v)}`));
    out.push(`tensors (${r.tensors.length}):`, ...tensorLines(r.tensors, r.weights.files.length > 1));
  } else {
    out.push(`shard set ${r.path} (${r.format === "mhmoe" ? "mhmoe index.json" : "Hugging Face .arrow files"})`);
    out.push(r.tokenizer === null
      ? "tokenizer: not recorded (Hugging Face files; pass --tokenizer byte|gpt2)"
      : `tokenizer: ${r.tokenizer}, vocab size ${int(r.vocab_size!)}`);
    if (r.images) {
      const m = r.images;
      out.push(`images: ${m.size}x${m.size} pixels in ${m.patch}x${m.patch} patches (${m.patches_per_image} ids each), ${m.codes} codes as ids ` +
        `${m.image_token_offset}-${m.image_token_offset + m.codes - 1}, mask id ${m.mask_token_id}, codebook ${m.codebook}`);
    }
    for (const name of ["train", "val"] as const) {
      const s = r.splits[name];
      const n = (v: number | null) => (v === null ? "?" : int(v));
      out.push(`${name}: ${s.shards} shards, ${n(s.documents)} documents, ${n(s.tokens)} tokens, ${int(s.bytes)} bytes`);
    }
    const ok = r.shards.filter((s) => s.checksum === "ok").length;
    const failed = r.shards.filter((s) => s.checksum === "failed");
    const unchecked = r.shards.length - ok - failed.length;
    out.push(`checksums: ${ok} ok, ${failed.length} failed${unchecked ? `, ${unchecked} without a recorded checksum` : ""}`);
    const w = Math.max(...r.shards.map((s) => s.file.length), 0);
    for (const s of r.shards) {
      const n = (v: number | null) => (v === null ? "?" : int(v));
      out.push(`  ${s.file.padEnd(w)}  ${s.split.padEnd(5)} ${n(s.documents)} documents, ${n(s.tokens)} tokens, ${n(s.bytes)} bytes  ${s.checksum}`);
    }
  }
  return out.join("\n");
}
