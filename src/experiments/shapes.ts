/**
 * `mhmoe experiment shapes`: the MH-MoE paper's masked multimodal task in small. The built-in shapes
 * corpus (scenes of coloured shapes with captions that name them) is turned into image–text shard sets
 * (a patch codebook learned by k-means, patches as image tokens), then an SMoE and an MH-MoE of equal
 * FLOPs train with the mlm objective on the same tokens and seeds. Each is scored on held-out pairs:
 * the eval rule's pseudo-loss and accuracy per modality; the accuracy on caption colour and shape words
 * masked whole, with the image visible and with every image token masked (what the image is worth); and
 * the routing of image and text sub-tokens (activation ratio, per-modality heatmaps). Every run is a
 * normal mhmoe run directory.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import type { Gpu } from "../gpu/device.ts";
import { read } from "../gpu/tensor.ts";
import { countActiveParams, countParams, flopsPerToken, presetConfig, type ModelConfig } from "../model/config.ts";
import { solveParity } from "../model/cost.ts";
import { loadModelCheckpoint } from "../model/load.ts";
import { Transformer, type MlmBatch } from "../model/transformer.ts";
import { uploadParams } from "../model/weights.ts";
import { openShardSet, type ShardSet } from "../data/shard-set.ts";
import { readEvalDocuments } from "../data/shard-reader.ts";
import { writeShapes, COLOUR_NAMES, SHAPE_KINDS, CAPTIONS_FILE } from "../data/shapes.ts";
import { trainCodebook } from "../data/codebook.ts";
import { runTokenizeImages } from "../data/tokenize-images.ts";
import { train } from "../train/loop.ts";
import { resolveModelDir } from "../train/checkpoint.ts";
import { TRAIN_DEFAULTS, type TrainOptions } from "../train/options.ts";
import { evaluateCheckpoint, type EvalResult } from "../eval/perplexity.ts";
import { fillFromCheckpoint } from "../eval/fill.ts";
import { routingHeatmapSvg } from "../eval/charts.ts";
import type { Modality } from "../eval/masked.ts";
import { writeFileAtomic } from "../io/atomic.ts";
import { UserError } from "../util/errors.ts";
import { finishedStep, selectModels } from "./runs.ts";

export type ShapesScale = "tiny" | "small";

export interface ShapesSpec {
  /** scenes rendered (a tenth held out), each of 1 to maxShapes shapes */
  scenes: number;
  maxShapes: number;
  /** image side in pixels, patch side, codebook size */
  size: number;
  patch: number;
  codes: number;
  hidden: number;
  layers: number;
  /** MoE in every moeEvery-th layer (moe_layer_freq): 1 puts it in every layer */
  moeEvery: number;
  attentionHeads: number;
  /** the SMoE's expert width (and the dense layers' FFN width) */
  width: number;
  seqLen: number;
  batchSize: number;
  steps: number;
  lr: number;
  warmup: number;
  /** text masked in training, whole words half the time (--mask-unit word); images block-wise, about 0.4 */
  maskRatio: number;
  seeds: number[];
}

/**
 * Both scales use one shape per scene: with two or three, a caption word must also be matched to its
 * shape by order, and no model tried here (d=64, up to 1200 steps of 4x192, windows holding several
 * pairs) learnt that. What one shape needs is learnt as a sudden step, after the text itself: about step
 * 500-750 at these settings (a learning rate of 1e-2 and text masked at 0.5 make it earlier and surer;
 * 3e-3, 0.3 or fewer tokens per step often never got there in 600-800 steps, in the PyTorch twin too).
 * tiny: one layer, MoE in it, 800 steps (CI trains its MH-MoE and checks the image is used; about five
 * minutes here). small: two layers, MoE in the second, 1000 steps, two seeds (the recorded figures).
 */
export const SHAPES_SCALES: Record<ShapesScale, ShapesSpec> = {
  tiny: { scenes: 3000, maxShapes: 1, size: 24, patch: 8, codes: 24, hidden: 64, layers: 1, moeEvery: 1, attentionHeads: 4, width: 256, seqLen: 64, batchSize: 24, steps: 800, lr: 1e-2, warmup: 50, maskRatio: 0.5, seeds: [1] },
  small: { scenes: 3000, maxShapes: 1, size: 24, patch: 8, codes: 24, hidden: 64, layers: 2, moeEvery: 2, attentionHeads: 4, width: 256, seqLen: 64, batchSize: 24, steps: 1000, lr: 1e-2, warmup: 50, maskRatio: 0.5, seeds: [1, 2] },
};

export interface ShapesModel {
  name: "smoe" | "mhmoe-h2";
  config: ModelConfig;
}

/** SMoE (8 experts, top-1, width w) and MH-MoE h=2 (top-2) at its FLOPs and parameters, MoE every spec.moeEvery-th layer. */
export function shapesFamily(s: ShapesSpec, vocab: number, maskTokenId: number): ShapesModel[] {
  const base: Partial<ModelConfig> = {
    vocab_size: vocab, hidden_size: s.hidden, num_hidden_layers: s.layers, num_attention_heads: s.attentionHeads,
    intermediate_size: s.width, max_position_embeddings: s.seqLen, moe_layer_freq: s.moeEvery, router_type: "softmax",
    objective: "mlm", mask_token_id: maskTokenId, type_vocab_size: 2, mask_ratio: s.maskRatio,
  };
  const E = 8;
  const p = solveParity({ d: s.hidden, dMoe: s.width, kS: 1, experts: E, heads: 2, kM: 2 });
  return [
    { name: "smoe", config: presetConfig("smoe", { ...base, num_experts: E, num_experts_per_tok: 1, moe_intermediate_size: s.width, mhmoe_heads: 1, mhmoe_head_merge: false }) },
    { name: "mhmoe-h2", config: presetConfig("mhmoe", { ...base, num_experts: p.experts, num_experts_per_tok: 2, moe_intermediate_size: p.width, mhmoe_heads: 2 }) },
  ];
}

export interface WordAccuracy {
  /** caption colour / shape words scored (whole words, every byte masked) */
  colour_words: number;
  shape_words: number;
  /** share predicted whole (every byte's largest logit the right one) */
  colour: number;
  shape: number;
}

export interface ShapesRow {
  model: ShapesModel["name"];
  seed: number;
  run: string;
  params: number;
  active_params: number;
  flops_per_token: number;
  /** the eval rule on the held-out pairs */
  pseudo_loss: number;
  text_accuracy: number | null;
  image_accuracy: number | null;
  /** text scored with every image token masked */
  text_accuracy_without_image: number | null;
  with_image: WordAccuracy;
  without_image: WordAccuracy;
  activation_ratio: number | null;
  activation_ratio_text: number | null;
  activation_ratio_image: number | null;
}

export interface ShapesResult {
  scale: ShapesScale;
  spec: ShapesSpec;
  tokens_per_model: number;
  rows: ShapesRow[];
  results: string;
  markdown: string;
  pictures: string[];
  /** fill-in-the-mask on scenes drawn with another seed, by each model's first seed (none with --only) */
  examples: FillExample[];
}

export interface FillExample {
  image: string;
  caption: string;
  /** the caption with its colour and shape words masked, one mask character per letter */
  masked: string;
  /** model name -> the filled text with the image, and with every image token masked */
  fills: Record<string, { with_image: string; without_image: string }>;
}

export interface ShapesOptions {
  scale: ShapesScale;
  out: string;
  seeds?: number[];
  steps?: number;
  /** train and score only these models (a quicker check of one row): results.json only, no RESULTS.md or heatmaps */
  only?: string[];
  onInfo?: (line: string) => void;
}

/** Builds the corpus and shards (once), trains and scores both models for every seed, writes the report. */
export async function runShapesExperiment(gpu: Gpu, o: ShapesOptions): Promise<ShapesResult> {
  const spec = { ...SHAPES_SCALES[o.scale], ...(o.steps ? { steps: o.steps } : {}), ...(o.seeds ? { seeds: o.seeds } : {}) };
  fs.mkdirSync(o.out, { recursive: true });
  const set = await shapesShards(o.out, spec, o.onInfo);
  const images = set.images!;
  const vocab = Math.ceil(set.vocabSize / 64) * 64;
  const family = selectModels(shapesFamily(spec, vocab, images.maskTokenId), o.only);
  const rows: ShapesRow[] = [];
  const routing = new Map<string, EvalResult>();
  const firstRuns = new Map<string, string>();
  for (const seed of spec.seeds) {
    for (const m of family) {
      const run = path.join(o.out, "runs", `${m.name}-s${seed}`);
      const opts: TrainOptions = {
        ...TRAIN_DEFAULTS, config: m.config, data: set.dir, tokenizer: set.tokenizer, out: run, steps: spec.steps,
        batchSize: spec.batchSize, seqLen: spec.seqLen, lr: spec.lr, minLr: spec.lr / 10, warmup: spec.warmup, seed,
        logEvery: Math.max(1, Math.floor(spec.steps / 50)), keep: 1, maskUnit: "word",
      };
      if ((await finishedStep(run)) < spec.steps) {
        o.onInfo?.(`training ${m.name} (seed ${seed}) in ${run}`);
        await train(gpu, opts, {}, fs.existsSync(path.join(run, "latest")) ? run : undefined);
      }
      const ckpt = resolveModelDir(run, "run");
      const ev = await evaluateCheckpoint(gpu, ckpt, set.dir, { seqLen: spec.seqLen, split: "val" });
      const hidden = await evaluateCheckpoint(gpu, ckpt, set.dir, { seqLen: spec.seqLen, split: "val", maskModality: "image" });
      const words = await captionWordAccuracy(gpu, ckpt, set, spec.seqLen, spec.batchSize);
      if (seed === spec.seeds[0]) routing.set(m.name, ev), firstRuns.set(m.name, ckpt);
      const r = ev.routing_by_modality ?? {};
      rows.push({
        model: m.name, seed, run, params: countParams(m.config), active_params: countActiveParams(m.config),
        flops_per_token: flopsPerToken(m.config, spec.seqLen), pseudo_loss: ev.loss,
        text_accuracy: ev.by_modality?.text.accuracy ?? null, image_accuracy: ev.by_modality?.image.accuracy ?? null,
        text_accuracy_without_image: hidden.by_modality?.text.accuracy ?? null,
        with_image: words.withImage, without_image: words.withoutImage,
        activation_ratio: ev.routing?.activation_ratio ?? null,
        activation_ratio_text: r.text?.activation_ratio ?? null, activation_ratio_image: r.image?.activation_ratio ?? null,
      });
      o.onInfo?.(`${m.name} (seed ${seed}): colour words ${words.withImage.colour.toFixed(3)} with the image, ${words.withoutImage.colour.toFixed(3)} without`);
    }
  }
  const result: ShapesResult = {
    scale: o.scale, spec, tokens_per_model: spec.steps * spec.batchSize * spec.seqLen, rows,
    results: path.join(o.out, "results.json"), markdown: path.join(o.out, "RESULTS.md"), pictures: o.only ? [] : await writeHeatmaps(o.out, routing),
    examples: o.only ? [] : await fillExamples(gpu, o.out, spec, firstRuns),
  };
  writeFileAtomic(result.results, JSON.stringify(result, null, 2) + "\n");
  if (!o.only) writeFileAtomic(result.markdown, shapesMarkdown(result));
  return result;
}

const FILL_EXAMPLES = 6;
/** scenes drawn for the examples, of which the first FILL_EXAMPLES whose words their length does not give away are used */
const FILL_CANDIDATES = 200;

/**
 * Fill-in-the-mask on a few scenes drawn with another seed (OUT/data/examples): each caption's colour and
 * shape words are masked letter by letter and filled by each model (mhmoe fill), with the image and with
 * every image token masked. The scenes are the first whose colour and shape names share their length with
 * another (yellow or purple, circle or square), as the word accuracy asks, so the text alone cannot tell.
 * With one shape per scene every scene also occurs in the corpus: these show what the models do, the
 * held-out scores measure it.
 */
async function fillExamples(gpu: Gpu, out: string, s: ShapesSpec, runs: Map<string, string>): Promise<FillExample[]> {
  const dir = path.join(out, "data", "examples");
  const codebook = path.join(out, "data", "codebook.safetensors");
  if (!fs.existsSync(path.join(dir, CAPTIONS_FILE))) writeShapes({ out: dir, n: FILL_CANDIDATES, seed: 1, size: s.size, maxShapes: s.maxShapes });
  const ambiguous = (caption: string) => {
    const names = [...caption.matchAll(/[a-z]+/g)].map((m) => m[0]).filter((w) => COLOURS.has(w) || KINDS.has(w));
    return names.every((w) => sameLength(COLOURS.has(w) ? COLOUR_NAMES : SHAPE_KINDS, w).length > 1);
  };
  const pairs = fs.readFileSync(path.join(dir, CAPTIONS_FILE), "utf8").trim().split("\n").map((l) => JSON.parse(l) as { image: string; caption: string })
    .filter((p) => ambiguous(p.caption)).slice(0, FILL_EXAMPLES);
  const examples: FillExample[] = [];
  for (const { image, caption } of pairs) {
    const masked = caption.replace(/[a-z]+/g, (w) => (COLOURS.has(w) || KINDS.has(w) ? "_".repeat(w.length) : w));
    const fills: FillExample["fills"] = {};
    for (const [name, ckpt] of runs) {
      const fill = async (maskImage: boolean) => (await fillFromCheckpoint(gpu, ckpt, masked, { image: path.join(dir, image), codebook, maskImage })).text;
      fills[name] = { with_image: await fill(false), without_image: await fill(true) };
    }
    examples.push({ image: path.join("data", "examples", image), caption, masked, fills });
  }
  return examples;
}

/** The corpus, codebook and shard set under OUT/data, each made once (a rerun reuses them). */
async function shapesShards(out: string, s: ShapesSpec, onInfo?: (line: string) => void): Promise<ShardSet> {
  const data = path.join(out, "data");
  const imagesDir = path.join(data, "images"), codebook = path.join(data, "codebook.safetensors"), shards = path.join(data, "shards");
  fs.mkdirSync(data, { recursive: true });
  if (!fs.existsSync(path.join(imagesDir, CAPTIONS_FILE))) {
    onInfo?.(`rendering ${s.scenes} scenes of ${s.maxShapes === 1 ? "one shape" : `one to ${s.maxShapes} shapes`} into ${imagesDir}`);
    writeShapes({ out: imagesDir, n: s.scenes, seed: 0, size: s.size, maxShapes: s.maxShapes });
  }
  if (!fs.existsSync(codebook)) {
    onInfo?.(`learning a ${s.codes}-code codebook of ${s.patch}x${s.patch} patches`);
    trainCodebook({ images: imagesDir, patch: s.patch, size: s.size, codes: s.codes, out: codebook, seed: 0 });
  }
  if (!fs.existsSync(path.join(shards, "index.json"))) {
    await runTokenizeImages({ images: imagesDir, captions: path.join(imagesDir, CAPTIONS_FILE), codebook, out: shards, valFraction: 0.1 });
  }
  const set = await openShardSet(shards);
  if (!set.images || set.splits.val.length === 0) throw new UserError(`${shards}: expected image–text shards with a validation split`);
  return set;
}

/** A caption word to predict: its positions in the stream and what it names. */
interface Word {
  start: number;
  length: number;
  /** the names of its kind as long as it (itself included): the candidates */
  candidates: readonly string[];
  kind: "colour" | "shape";
}

const COLOURS = new Set<string>(COLOUR_NAMES), KINDS = new Set<string>(SHAPE_KINDS);
/** the names of a kind with the same length as `word` */
const sameLength = (names: readonly string[], word: string) => names.filter((n) => n.length === word.length);

/**
 * Accuracy on caption colour and shape words of the held-out pairs, each masked whole (every byte), with
 * the image visible and with every image token masked. A masked word still shows its length, and the
 * text around it shows where it ends, so only words that share their length with another name of their
 * kind are asked (yellow and purple; circle and square: red, green, blue and triangle give themselves
 * away), and the model's answer is the name of that length with the highest log-probability over the
 * masked bytes: chance is 1/2, and the text alone cannot do better. Each asked word is one sequence: the
 * T tokens of the stream from its pair's first image token (the pair, its EOT, then the next pair's
 * start, as a training window may hold), with that word alone masked; pairs longer than T are skipped.
 */
export async function captionWordAccuracy(gpu: Gpu, ckpt: string, set: ShardSet, T: number, B: number): Promise<{ withImage: WordAccuracy; withoutImage: WordAccuracy }> {
  const { config, params } = loadModelCheckpoint(ckpt);
  const docs = await readEvalDocuments(set, "val");
  const types = docs.types!;
  const seqs: { window: number; word: Word }[] = [];
  docs.docStarts.forEach((start, d) => {
    const end = (docs.docStarts[d + 1] ?? docs.tokens.length) - 1; // the EOT
    if (end - start + 1 > T || start + T > docs.tokens.length) return;
    let at = start;
    while (at < end && types[at] === 1) at++;
    const caption = String.fromCharCode(...docs.tokens.subarray(at, end));
    for (const m of caption.matchAll(/[a-z]+/g)) {
      const kind = COLOURS.has(m[0]) ? "colour" : KINDS.has(m[0]) ? "shape" : null;
      if (!kind) continue;
      const candidates = sameLength(kind === "colour" ? COLOUR_NAMES : SHAPE_KINDS, m[0]);
      if (candidates.length > 1) seqs.push({ window: start, word: { start: at + m.index!, length: m[0].length, candidates, kind } });
    }
  });
  if (seqs.length === 0) throw new UserError(`${set.dir}: the validation pairs hold no colour or shape word to ask in ${T} tokens`);
  const W = uploadParams(gpu, config, params);
  const model = await Transformer.plan(gpu, config, W, { B, T });
  try {
    const score = async (hideImage: boolean): Promise<WordAccuracy> => {
      const hits = { colour: [0, 0], shape: [0, 0] };
      for (let i = 0; i < seqs.length; i += B) {
        const group = seqs.slice(i, i + B);
        const batch: MlmBatch = { inputs: new Int32Array(B * T), targets: new Int32Array(B * T).fill(-1), types: new Int32Array(B * T) };
        group.forEach(({ window: w0, word: w }, b) => {
          for (let t = 0; t < T; t++) {
            const hide = hideImage && types[w0 + t] === 1;
            batch.inputs[b * T + t] = hide ? config.mask_token_id : docs.tokens[w0 + t]!;
            batch.types[b * T + t] = types[w0 + t]!;
          }
          for (let j = 0; j < w.length; j++) {
            batch.inputs[b * T + w.start - w0 + j] = config.mask_token_id;
            batch.targets[b * T + w.start - w0 + j] = docs.tokens[w.start + j]!;
          }
        });
        // rows past the group score nothing (targets -1): a full-shape batch, one plan
        model.setMlmBatch(batch);
        await model.run(false);
        const logits = await read(model.logits);
        const V = config.vocab_size;
        group.forEach(({ window: w0, word: w }, b) => {
          // each candidate scored by the sum of its bytes' log-probabilities at the masked positions
          const at = b * T + (w.start - w0);
          const truth = String.fromCharCode(...docs.tokens.subarray(w.start, w.start + w.length));
          let best = "", bestScore = -Infinity;
          for (const name of w.candidates) {
            let score = 0;
            for (let j = 0; j < w.length; j++) score += logProb(logits, at + j, V, name.charCodeAt(j));
            if (score > bestScore) (bestScore = score), (best = name);
          }
          hits[w.kind][0]++;
          if (best === truth) hits[w.kind][1]++;
        });
      }
      return {
        colour_words: hits.colour[0]!, shape_words: hits.shape[0]!,
        colour: hits.colour[0] ? hits.colour[1]! / hits.colour[0]! : 0, shape: hits.shape[0] ? hits.shape[1]! / hits.shape[0]! : 0,
      };
    };
    return { withImage: await score(false), withoutImage: await score(true) };
  } finally {
    model.release();
    W.release();
  }
}

/** log softmax(logits[n])[id] */
function logProb(logits: Float32Array, n: number, V: number, id: number): number {
  const row = logits.subarray(n * V, n * V + V);
  let max = -Infinity;
  for (let v = 0; v < V; v++) max = Math.max(max, row[v]!);
  let sum = 0;
  for (let v = 0; v < V; v++) sum += Math.exp(row[v]! - max);
  return row[id]! - max - Math.log(sum);
}

/** Per-modality activation heatmaps of the first seed's models. */
async function writeHeatmaps(out: string, routing: Map<string, EvalResult>): Promise<string[]> {
  const written: string[] = [];
  for (const [name, ev] of routing) {
    for (const m of ["text", "image"] as Modality[]) {
      const r = ev.routing_by_modality?.[m];
      if (!r) continue;
      const file = path.join(out, `heatmap-${name}-${m}.svg`);
      writeFileAtomic(file, await routingHeatmapSvg(r, `Expert activation of ${m} sub-tokens: ${name} (held-out pairs)`));
      written.push(file);
    }
  }
  return written;
}

function mean(xs: number[]): string {
  return xs.length ? (xs.reduce((a, b) => a + b, 0) / xs.length).toFixed(3) : "-";
}

/** RESULTS.md: the figures per model (mean over seeds, each seed in results.json) and what they say. */
export function shapesMarkdown(r: ShapesResult): string {
  const s = r.spec;
  const by = (name: string) => r.rows.filter((x) => x.model === name);
  const col = (name: string, f: (x: ShapesRow) => number | null) => mean(by(name).map(f).filter((v): v is number => v !== null));
  const lines = [
    `# Masked multimodal modelling on the shapes corpus (${r.scale} scale)`, "",
    `Produced by \`mhmoe experiment shapes --scale ${r.scale} --seeds ${s.seeds.join(",")}\`: ${s.scenes} rendered scenes of ` +
      `${s.maxShapes === 1 ? "one shape" : `one to ${s.maxShapes} shapes`} ` +
      `(${s.size}x${s.size} pixels, ${s.patch}x${s.patch} patches, a ${s.codes}-code k-means codebook; a tenth held out), ` +
      `each model trained ${s.steps} steps of ${s.batchSize}x${s.seqLen} tokens (${r.tokens_per_model.toLocaleString()} tokens) ` +
      `with the mlm objective (text masked at ${s.maskRatio}, whole words half the time; images block-wise at about 0.4), d=${s.hidden}, ${s.layers} layers, ` +
      `MoE in ${s.moeEvery === 1 ? "every layer" : `every ${s.moeEvery === 2 ? "second" : `${s.moeEvery}th`} layer`}. Figures are means over the seeds; results.json has every seed.`, "",
    "Caption colour and shape words are masked whole (every byte), one word per sequence. A masked word still shows its length, " +
      "so only the words that share it with another name are asked (yellow or purple; circle or square), and the answer is the name " +
      "of that length with the highest log-probability over the masked bytes: chance, and the best the text alone can do, is 0.5.",
    "\"Without image\" masks every image token as well: the gap is what the image is worth." +
      (s.maxShapes === 1
        ? " With one shape per scene there are only 135 scenes (5 colours, 3 kinds, 9 cells), so the held-out pairs show scenes the training pairs " +
          "showed too: the gap measures whether a model reads the words off the image, not whether it generalises to new scenes."
        : ""), "",
    "| model | params | active | FLOPs/token | pseudo-loss | text acc | image acc | text acc, no image | colour words (image / none) | shape words (image / none) | activation ratio (all / text / image) |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ];
  for (const name of ["smoe", "mhmoe-h2"]) {
    const rows = by(name);
    if (rows.length === 0) continue;
    const x = rows[0]!;
    lines.push(
      `| ${name} | ${x.params.toLocaleString()} | ${x.active_params.toLocaleString()} | ${(x.flops_per_token / 1e6).toFixed(2)}M | ${col(name, (y) => y.pseudo_loss)} | ` +
        `${col(name, (y) => y.text_accuracy)} | ${col(name, (y) => y.image_accuracy)} | ${col(name, (y) => y.text_accuracy_without_image)} | ` +
        `${col(name, (y) => y.with_image.colour)} / ${col(name, (y) => y.without_image.colour)} | ${col(name, (y) => y.with_image.shape)} / ${col(name, (y) => y.without_image.shape)} | ` +
        `${col(name, (y) => y.activation_ratio)} / ${col(name, (y) => y.activation_ratio_text)} / ${col(name, (y) => y.activation_ratio_image)} |`,
    );
  }
  const gap = (name: string, k: "colour" | "shape") => by(name).map((y) => y.with_image[k] - y.without_image[k]);
  const words = r.rows[0] ? `${r.rows[0].with_image.colour_words} colour and ${r.rows[0].with_image.shape_words} shape words` : "";
  lines.push("", "## What it shows", "");
  for (const name of ["smoe", "mhmoe-h2"]) {
    if (by(name).length === 0) continue;
    const seeds = by(name).map((y) => `seed ${y.seed}: ${y.with_image.colour.toFixed(3)} / ${y.without_image.colour.toFixed(3)} and ${y.with_image.shape.toFixed(3)} / ${y.without_image.shape.toFixed(3)}`);
    lines.push(`- ${name}: the image raises colour-word accuracy by ${mean(gap(name, "colour"))} and shape-word accuracy by ${mean(gap(name, "shape"))} (${words} per evaluation; ${seeds.join("; ")}).`);
  }
  lines.push(
    `- Routing: MH-MoE splits each token into sub-tokens, so its activation ratio counts sub-token assignments; the per-modality heatmaps ` +
      `(${r.pictures.map((p) => `\`${path.basename(p)}\``).join(", ")}) show which experts image and text sub-tokens use.`,
    "- Scale: about ten minutes of CPU training per model. The figures say whether the cross-modal effect and the routing pattern appear at all at this size, not how large they are at the paper's.",
  );
  if (r.examples.length > 0) {
    const names = Object.keys(r.examples[0]!.fills);
    lines.push(
      "", "## Fill-in-the-mask", "",
      `\`mhmoe fill\` on ${r.examples.length} scenes drawn with another seed (\`data/examples\`; with one shape per scene they also occur in the corpus) ` +
        "whose colour and shape names share their length with another (yellow or purple, circle or square), so the text alone cannot tell them: " +
        "each caption's colour and shape words masked letter by letter, filled by the first seed's models with the image and with every image token masked. " +
        "Each pass of `fill` fixes the one masked letter the model is surest of, so a model unsure of a word's first letters can fill it with other bytes.", "",
      `| caption | masked | ${names.map((n) => `${n} (image) | ${n} (no image)`).join(" | ")} |`,
      `|---|---|${names.map(() => "---|---").join("|")}|`,
      ...r.examples.map((e) => `| ${e.caption} | \`${e.masked}\` | ${names.map((n) => `${e.fills[n]!.with_image} | ${e.fills[n]!.without_image}`).join(" | ")} |`),
    );
  }
  return lines.join("\n") + "\n";
}
