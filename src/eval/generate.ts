/**
 * `mhmoe generate`: sampling from a checkpoint, with a K/V cache (src/model/decoder.ts: a new token
 * costs O(prefix)) or, with `cache: false`, by re-running the whole forward over the prefix for every
 * token (the checking path, O(prefix) per layer op). Sampling is on the host in float64 from one seeded
 * Rng, so a seed gives the same tokens on both paths (up to float rounding of the logits).
 *
 * Rules: MoE layers are planned dropless in both paths (a capacity limit would make a token's routing
 * depend on how many tokens share its forward); only ids the tokenizer can decode are sampled (a model
 * may pad its vocabulary); `<|endoftext|>` ends a sample and is not part of its text; the prompt plus
 * the generated tokens but the last must fit in max_position_embeddings.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import type { Gpu } from "../gpu/device.ts";
import { read, readBytes } from "../gpu/tensor.ts";
import { CONFIG_FILE } from "../io/checkpoint.ts";
import type { ModelConfig } from "../model/config.ts";
import { Decoder, dropless } from "../model/decoder.ts";
import { assertFiniteParams, loadModelCheckpoint } from "../model/load.ts";
import { Transformer } from "../model/transformer.ts";
import { uploadParams, type ParamStore } from "../model/weights.ts";
import type { Tokenizer } from "../data/tokenizer.ts";
import { Rng } from "../util/rng.ts";
import { UserError } from "../util/errors.ts";
import { evalTokenizer } from "./perplexity.ts";

export const DEFAULT_MAX_TOKENS = 256;

export interface SampleOptions {
  /** 0: greedy (argmax, lowest id on a tie) */
  temperature: number;
  /** keep the k most likely ids (0: all) */
  topK: number;
  /** keep the smallest set of most likely ids whose probability reaches p (1: all) */
  topP: number;
}

export interface GenerateOptions extends SampleOptions {
  /** new tokens at most (EOT may end the sample sooner) */
  maxTokens: number;
  seed: number;
  /** false: recompute the whole prefix for every token */
  cache: boolean;
  /** called once every input is checked and the model planned, just before the first token */
  onStart?: () => void;
  /** called with each new id as it is sampled (EOT included) */
  onToken?: (id: number) => void;
  /** called with each piece of decoded text as soon as it is whole (no half UTF-8 character) */
  onText?: (text: string) => void;
}

export interface GenerateResult {
  /** generated ids, without the EOT that ended the sample */
  tokens: number[];
  text: string;
  prompt_tokens: number;
  finish_reason: "eot" | "length";
  /** seconds from the start to the first new token (prefill) */
  first_token_s: number;
  /** new tokens per second after the first one (the per-token cost at this prefix); all of them when only one */
  tokens_per_s: number;
  seconds: number;
}

export function checkSampleOptions(o: SampleOptions): void {
  if (!(Number.isFinite(o.temperature) && o.temperature >= 0)) throw new UserError(`--temperature must be a number >= 0, got ${o.temperature}`);
  if (!(Number.isSafeInteger(o.topK) && o.topK >= 0)) throw new UserError(`--top-k must be an integer >= 0 (0: off), got ${o.topK}`);
  if (!(o.topP > 0 && o.topP <= 1)) throw new UserError(`--top-p must be in (0, 1], got ${o.topP}`);
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
const ID_BITS = 2 ** 21;

/** Ids 0..n-1 most likely first (the lower id first among equal logits), by one typed-array sort. */
function ranked(logits: ArrayLike<number>, n: number): Int32Array {
  const out = new Int32Array(n);
  if (n > ID_BITS) {
    for (let i = 0; i < n; i++) out[i] = i;
    return out.sort((a, b) => logits[b]! - logits[a]! || a - b);
  }
  // Key: the f32's bits flipped to sort like the float, times 2^21, plus the id reversed: < 2^53, exact.
  const keys = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    f32[0] = logits[i]!;
    const b = u32[0]!;
    keys[i] = (b & 0x80000000 ? ~b >>> 0 : (b | 0x80000000) >>> 0) * ID_BITS + (ID_BITS - 1 - i);
  }
  keys.sort();
  for (let j = 0; j < n; j++) out[j] = ID_BITS - 1 - (keys[n - 1 - j]! % ID_BITS);
  return out;
}

/**
 * The next id from logits[0..n) (n: the ids the tokenizer can decode): argmax at temperature 0, else a
 * draw from softmax(logits / temperature) restricted by top-k then top-p, from one rng.nextFloat().
 */
export function sampleNext(logits: ArrayLike<number>, n: number, o: SampleOptions, rng: Rng): number {
  if (o.temperature === 0) {
    let best = 0;
    for (let i = 1; i < n; i++) if (logits[i]! > logits[best]!) best = i;
    return best;
  }
  const restrict = (o.topK > 0 && o.topK < n) || o.topP < 1;
  // The candidates' logits, most likely first when restricted (ids[j] is candidate j's id).
  const ids = restrict ? ranked(logits, n) : null;
  let m = restrict && o.topK > 0 && o.topK < n ? o.topK : n;
  const w = new Float64Array(m);
  let mx = -Infinity;
  for (let j = 0; j < m; j++) {
    w[j] = logits[ids ? ids[j]! : j]!;
    if (w[j]! > mx) mx = w[j]!;
  }
  let total = 0;
  for (let j = 0; j < m; j++) total += w[j] = Math.exp((w[j]! - mx) / o.temperature);
  if (o.topP < 1) {
    let cum = 0, keep = 0;
    while (keep < m && cum < o.topP * total) cum += w[keep++]!;
    m = Math.max(1, keep);
    total = 0;
    for (let j = 0; j < m; j++) total += w[j]!;
  }
  let u = rng.nextFloat() * total, j = 0;
  while (j < m - 1 && (u -= w[j]!) >= 0) j++;
  return ids ? ids[j]! : j;
}

/**
 * Turns ids into text as they come, holding back a tail that does not decode to whole characters yet
 * (a UTF-8 sequence split across byte tokens or GPT-2 tokens decodes to U+FFFD until it is complete).
 */
export class TextStream {
  private pending: number[] = [];
  constructor(private readonly tokenizer: Tokenizer) {}

  push(id: number): string {
    this.pending.push(id);
    const text = this.tokenizer.decode(this.pending);
    if (text.endsWith("\uFFFD")) return "";
    this.pending = [];
    return text;
  }

  /** Whatever is held back (as U+FFFD if it never became a whole character). */
  end(): string {
    const text = this.pending.length ? this.tokenizer.decode(this.pending) : "";
    this.pending = [];
    return text;
  }
}

/** The logits after a prefix, by either path. */
interface LogitsSource {
  /** feeds the ids that follow what it has seen and returns the logits after the last of them */
  next(ids: readonly number[]): Promise<Float32Array>;
  release(): void;
}

class CachedSource implements LogitsSource {
  private constructor(private readonly dec: Decoder) {}
  static async plan(gpu: Gpu, c: ModelConfig, W: ParamStore, maxT: number): Promise<CachedSource> {
    return new CachedSource(await Decoder.plan(gpu, c, W, { maxT }));
  }
  async next(ids: readonly number[]): Promise<Float32Array> {
    if (ids.length === 1) this.dec.feed(ids[0]!);
    else if (this.dec.pos === 0) await this.dec.prefill(ids);
    else this.dec.feedMany(ids);
    return this.dec.readLogits();
  }
  release(): void {
    this.dec.release();
  }
}

/** A whole forward (B = 1, T = prefix length) per token; only the last position's logits are read. */
class UncachedSource implements LogitsSource {
  private seen: number[] = [];
  constructor(private readonly gpu: Gpu, private readonly c: ModelConfig, private readonly W: ParamStore) {}
  async next(ids: readonly number[]): Promise<Float32Array> {
    this.seen.push(...ids);
    const T = this.seen.length;
    const model = await Transformer.plan(this.gpu, dropless(this.c), this.W, { B: 1, T });
    try {
      model.setBatch(Int32Array.from([...this.seen, 0])); // the target column is not used
      await model.run(false);
      // With a large vocabulary the head runs in row chunks and logits holds the last chunk: row T-1's place in it.
      const V = this.c.vocab_size, rows = model.logitsChunked ? model.logits.shape[0]! : T;
      const row = (T - 1) % rows;
      return new Float32Array(await readBytes(this.gpu, model.logits.buffer, V * 4, model.logits.byteOffset + row * V * 4));
    } finally {
      model.release();
    }
  }
  release(): void {}
}

/** The most new tokens a prompt of p tokens leaves room for: every fed token needs a position. */
export function roomFor(c: ModelConfig, promptTokens: number): number {
  return c.max_position_embeddings - promptTokens + 1;
}

/** Samples up to maxTokens ids after `prompt` (ids already checked against the vocabulary). */
export async function generateTokens(
  gpu: Gpu, c: ModelConfig, W: ParamStore, prompt: Int32Array, tokenizer: Tokenizer, o: GenerateOptions,
): Promise<GenerateResult> {
  checkSampleOptions(o);
  if (prompt.length < 1) throw new UserError("the prompt holds no token");
  if (!(Number.isSafeInteger(o.maxTokens) && o.maxTokens >= 1)) throw new UserError(`--max-tokens must be a positive integer, got ${o.maxTokens}`);
  const room = roomFor(c, prompt.length);
  if (o.maxTokens > room) {
    throw new UserError(
      room < 1
        ? `the prompt is ${prompt.length} tokens, more than max_position_embeddings ${c.max_position_embeddings}`
        : `a prompt of ${prompt.length} tokens leaves room for ${room} new tokens (max_position_embeddings ${c.max_position_embeddings}), --max-tokens asks for ${o.maxTokens}`,
    );
  }
  const rng = new Rng(o.seed);
  const n = Math.min(c.vocab_size, tokenizer.vocabSize);
  const stream = new TextStream(tokenizer);
  const start = performance.now();
  const source: LogitsSource = o.cache
    ? await CachedSource.plan(gpu, c, W, prompt.length + o.maxTokens - 1)
    : new UncachedSource(gpu, c, W);
  const tokens: number[] = [];
  let text = "", finish: "eot" | "length" = "length", firstAt = start;
  const emit = (s: string) => {
    if (!s) return;
    text += s;
    o.onText?.(s);
  };
  try {
    o.onStart?.();
    let logits = await source.next(Array.from(prompt));
    for (;;) {
      const id = sampleNext(logits, n, o, rng);
      if (tokens.length === 0) firstAt = performance.now();
      o.onToken?.(id);
      if (id === tokenizer.eot) {
        finish = "eot";
        break;
      }
      tokens.push(id);
      emit(stream.push(id));
      if (tokens.length >= o.maxTokens) break;
      logits = await source.next([id]);
    }
  } finally {
    source.release();
  }
  emit(stream.end());
  const end = performance.now();
  const sampled = tokens.length + (finish === "eot" ? 1 : 0);
  const after = (end - firstAt) / 1000;
  return {
    tokens, text, prompt_tokens: prompt.length, finish_reason: finish,
    first_token_s: (firstAt - start) / 1000,
    tokens_per_s: sampled > 1 && after > 0 ? (sampled - 1) / after : sampled / ((end - start) / 1000),
    seconds: (end - start) / 1000,
  };
}

export interface CheckpointGenerateOptions extends Partial<GenerateOptions> {
  /** byte or gpt2; default: the checkpoint's (trainer_state.json), else byte */
  tokenizer?: string;
}

function refuseMlm(dir: string): void {
  const file = path.join(dir, CONFIG_FILE);
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch {
    return; // missing or broken: loadModelCheckpoint names the problem
  }
  if ((raw as { objective?: unknown })?.objective === "mlm") {
    throw new UserError(`${file}: objective "mlm" is a masked (bidirectional) model; generate needs a causal ("clm") one`);
  }
}

/** Loads checkpoint `dir`, tokenizes the prompt with its tokenizer and samples; the device opens once every input is checked. */
export async function generateFromCheckpoint(
  gpu: Gpu | (() => Promise<Gpu>), dir: string, prompt: string, given: CheckpointGenerateOptions = {},
): Promise<GenerateResult & { prompt: string }> {
  refuseMlm(dir); // before the weights are read
  const { config, params } = loadModelCheckpoint(dir);
  assertFiniteParams(params, dir, "generate from");
  const tokenizer = evalTokenizer(dir, given.tokenizer);
  let ids = tokenizer.encode(prompt);
  // An empty prompt starts a new document: the separator every training document follows.
  if (ids.length === 0) ids = Int32Array.of(tokenizer.eot);
  const bad = ids.findIndex((id) => id >= config.vocab_size);
  if (bad >= 0) {
    const what = prompt === "" ? `an empty prompt starts with <|endoftext|>, id ${ids[bad]},` : `prompt token ${bad} has id ${ids[bad]},`;
    throw new UserError(`${what} outside the vocabulary of ${path.join(dir, CONFIG_FILE)} (vocab_size ${config.vocab_size})`);
  }
  const o: GenerateOptions = {
    temperature: given.temperature ?? 1, topK: given.topK ?? 0, topP: given.topP ?? 1, seed: given.seed ?? 0,
    cache: given.cache ?? true, onStart: given.onStart, onText: given.onText,
    maxTokens: given.maxTokens ?? Math.max(1, Math.min(DEFAULT_MAX_TOKENS, roomFor(config, ids.length))),
  };
  checkSampleOptions(o);
  const device = typeof gpu === "function" ? await gpu() : gpu;
  const W = uploadParams(device, config, params);
  try {
    return { prompt, ...(await generateTokens(device, config, W, ids, tokenizer, o)) };
  } finally {
    W.release();
  }
}
