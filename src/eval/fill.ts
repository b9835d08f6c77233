/**
 * `mhmoe fill`: fill-in-the-mask with an mlm checkpoint. The text's mask characters (default "_") become
 * mask tokens, one per character; an image, when given, is turned into patch ids by the codebook it was
 * tokenized with and put before the text, as a shard's pair is, and the document ends with EOT as in
 * training. The masks are filled most-confident first: each pass runs the whole sequence once, and the
 * masked position whose best text token has the highest probability takes that token; the others stay
 * masked for the next pass (so a word's letters can depend on each other). Deterministic: no sampling.
 */
import * as path from "node:path";
import type { Gpu } from "../gpu/device.ts";
import { read } from "../gpu/tensor.ts";
import { CONFIG_FILE } from "../io/checkpoint.ts";
import { assertFiniteParams, loadModelCheckpoint } from "../model/load.ts";
import { Transformer } from "../model/transformer.ts";
import { uploadParams } from "../model/weights.ts";
import { imageCodes, readCodebook } from "../data/codebook.ts";
import { imageVocab } from "../data/shard-set.ts";
import { evalTokenizer } from "./perplexity.ts";
import { UserError } from "../util/errors.ts";

export interface FillOptions {
  /** the character that marks one masked token in the text (default "_") */
  maskChar?: string;
  /** an image (PNG or JPEG) put before the text, with the codebook its shards were made with */
  image?: string;
  codebook?: string;
  /** mask every image token too (what the text alone gives) */
  maskImage?: boolean;
  tokenizer?: string;
}

export interface FillStep {
  /** position in the text's tokens (0 = the text's first token) */
  position: number;
  token: number;
  text: string;
  /** the token's probability when it was chosen (softmax over the whole vocabulary) */
  probability: number;
}

export interface FillResult {
  /** the text with every mask filled */
  text: string;
  /** the fills in the order they were made */
  filled: FillStep[];
  text_tokens: number;
  image_tokens: number;
  /** sequence length run (image, text and the closing EOT) */
  seq_len: number;
  seconds: number;
}

/** The text's tokens with -1 at each mask character (one token per character). */
function encodeWithMasks(text: string, maskChar: string, encode: (s: string) => Int32Array): number[] {
  const out: number[] = [];
  text.split(maskChar).forEach((part, i) => {
    if (i > 0) out.push(-1);
    out.push(...encode(part));
  });
  return out;
}

export async function fillFromCheckpoint(gpu: Gpu | (() => Promise<Gpu>), dir: string, text: string, o: FillOptions = {}): Promise<FillResult> {
  const started = performance.now();
  const maskChar = o.maskChar ?? "_";
  if ([...maskChar].length !== 1) throw new UserError(`--mask-char must be one character, got "${maskChar}"`);
  const { config, params } = loadModelCheckpoint(dir);
  const where = path.join(dir, CONFIG_FILE);
  if (config.objective !== "mlm") throw new UserError(`${where}: objective "${config.objective}" is a causal model; fill needs an mlm one (generate continues text)`);
  assertFiniteParams(params, dir, "fill with");
  const tokenizer = evalTokenizer(dir, o.tokenizer);
  const textIds = encodeWithMasks(text, maskChar, (s) => tokenizer.encode(s));
  const masks = textIds.flatMap((id, i) => (id < 0 ? [i] : []));
  if (masks.length === 0) throw new UserError(`the text has no "${maskChar}" to fill (each one stands for a masked token; --mask-char changes it)`);
  const vocab = imageVocab(tokenizer.vocabSize, 0);
  if (config.mask_token_id !== vocab.maskTokenId) {
    throw new UserError(`${where}: mask_token_id ${config.mask_token_id} is not the ${tokenizer.name} tokenizer's mask id ${vocab.maskTokenId}`);
  }
  let image: number[] = [];
  if (o.image !== undefined || o.codebook !== undefined) {
    if (o.image === undefined || o.codebook === undefined) throw new UserError("--image and --codebook go together: the image's patch ids come from the codebook its shards were made with");
    if (config.type_vocab_size < 2) throw new UserError(`${where}: the model has no type embedding (type_vocab_size ${config.type_vocab_size}), so it takes no image`);
    const book = readCodebook(o.codebook);
    const ids = imageVocab(tokenizer.vocabSize, book.codes);
    if (ids.vocabSize > config.vocab_size) {
      throw new UserError(`${o.codebook}: ${book.codes} codes need ids up to ${ids.vocabSize - 1}, beyond the model's vocab_size ${config.vocab_size}`);
    }
    image = Array.from(imageCodes(o.image, book), (c) => (o.maskImage ? config.mask_token_id : ids.imageTokenOffset + c));
  } else if (o.maskImage) {
    throw new UserError("--mask-image needs --image");
  }
  const T = image.length + textIds.length + 1;
  if (T > config.max_position_embeddings) {
    throw new UserError(`the image and text are ${T} tokens with the closing EOT, beyond the model's max_position_embeddings ${config.max_position_embeddings}`);
  }
  const inputs = Int32Array.from([...image, ...textIds.map((id) => (id < 0 ? config.mask_token_id : id)), tokenizer.eot]);
  const types = Int32Array.from({ length: T }, (_, t) => (t < image.length ? 1 : 0));
  const device = typeof gpu === "function" ? await gpu() : gpu;
  const W = uploadParams(device, config, params);
  const model = await Transformer.plan(device, config, W, { B: 1, T });
  const V = config.vocab_size;
  const filled: FillStep[] = [];
  try {
    const open = new Set(masks);
    while (open.size > 0) {
      // every open mask is scored (its target a placeholder): the loss is not used, the logits are
      const targets = new Int32Array(T).fill(-1);
      for (const p of open) targets[image.length + p] = 0;
      model.setMlmBatch({ inputs, targets, types });
      await model.run(false);
      const logits = await read(model.logits);
      let best: FillStep | null = null;
      for (const p of open) {
        const row = logits.subarray((image.length + p) * V, (image.length + p + 1) * V);
        let max = -Infinity;
        for (let v = 0; v < V; v++) max = Math.max(max, row[v]!);
        let sum = 0;
        for (let v = 0; v < V; v++) sum += Math.exp(row[v]! - max);
        // a fill is a text token: not EOT, the mask id or an image id
        let id = -1;
        for (let v = 0; v < tokenizer.vocabSize; v++) if (v !== tokenizer.eot && (id < 0 || row[v]! > row[id]!)) id = v;
        const probability = Math.exp(row[id]! - max) / sum;
        if (!best || probability > best.probability) best = { position: p, token: id, text: tokenizer.decode([id]), probability };
      }
      filled.push(best!);
      open.delete(best!.position);
      inputs[image.length + best!.position] = best!.token;
    }
  } finally {
    model.release();
    W.release();
  }
  const out = textIds.slice();
  for (const f of filled) out[f.position] = f.token;
  return {
    text: tokenizer.decode(out), filled, text_tokens: textIds.length, image_tokens: image.length, seq_len: T,
    seconds: +((performance.now() - started) / 1000).toFixed(3),
  };
}
