/**
 * `mhmoe tokenize --images`: image-text pairs in, a shard set out (docs/data.md, "Image-text
 * shards"). Each image is resized to the codebook's size, cut into patches row-major, and each patch
 * becomes the id image_token_offset + (its nearest code); the caption's text ids follow. Ids carry
 * their type in the token_type_ids column (1 image, 0 text). A pair is one document and one split
 * unit (a pair never straddles train and val); a pair longer than a row is stored as continuation
 * rows, its types cut with it. Every image named by the captions file is checked to exist before
 * anything is written, and the output is written and renamed as for text (ShardSetOutput).
 */
import { readFileSync, statSync } from "node:fs";
import { isAbsolute, join } from "node:path";
import { UserError } from "../util/errors.ts";
import { fileError } from "./inputs.ts";
import { readCodebook, imageCodes } from "./codebook.ts";
import { listImageFiles } from "./images.ts";
import { imageVocab, INDEX_FORMAT, INDEX_VERSION, type IndexImages } from "./shard-set.ts";
import { IMAGE_TYPE, ROW_TOKENS, TEXT_TYPE, TYPE_COLUMN } from "./shard-writer.ts";
import { getTokenizer } from "./tokenizer.ts";
import { checkOptions, isValDocument, ShardSetOutput, type TokenizeSummary, type WriteShardSetOptions } from "./tokenize.ts";

export interface TokenizeImagesOptions extends Omit<WriteShardSetOptions, "bytesTotal" | "sourceName" | "chunkChars"> {
  /** folder of PNG/JPEG files (captions name files relative to it) */
  images: string;
  /** captions.jsonl: {"image": path relative to `images`, "caption": text} per line; absent: every image, no text */
  captions?: string;
  /** a codebook file from `mhmoe codebook` */
  codebook: string;
}

export interface TokenizeImagesSummary extends TokenizeSummary {
  images: number;
  image_tokens: number;
  text_tokens: number;
  codes: number;
  image_token_offset: number;
  mask_token_id: number;
}

interface Pair {
  /** the image's path relative to the images folder (or as the captions file gave it) */
  image: string;
  path: string;
  caption: string | null;
  bytes: number;
}

function imageBytes(path: string): number | null {
  try {
    const info = statSync(path);
    return info.isFile() ? info.size : null;
  } catch {
    return null;
  }
}

/** The captions file's pairs, in order; a bad line or a missing image is one line naming the file and line. */
function readCaptions(captions: string, images: string): Pair[] {
  let text: string;
  try {
    text = readFileSync(captions, "utf8");
  } catch (e) {
    throw fileError(captions, e);
  }
  const pairs: Pair[] = [];
  text.split("\n").forEach((line, i) => {
    if (line.trim() === "") return;
    const where = `${captions}:${i + 1}`;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (e) {
      throw new UserError(`${where}: invalid JSON (${(e as Error).message})`);
    }
    const o = value !== null && typeof value === "object" ? (value as Record<string, unknown>) : {};
    if (typeof o.image !== "string" || o.image === "") throw new UserError(`${where}: no string field "image"`);
    if (typeof o.caption !== "string") throw new UserError(`${where}: no string field "caption"`);
    const path = isAbsolute(o.image) ? o.image : join(images, o.image);
    const bytes = imageBytes(path);
    if (bytes === null) throw new UserError(`${where}: image "${o.image}" not found (no such file ${path})`);
    pairs.push({ image: o.image, path, caption: o.caption, bytes });
  });
  if (pairs.length === 0) throw new UserError(`${captions}: no captions (expected one {"image": ..., "caption": ...} per line)`);
  return pairs;
}

/** Tokenizes image-text pairs (or images alone) into a shard set at opts.out. */
export async function runTokenizeImages(opts: TokenizeImagesOptions): Promise<TokenizeImagesSummary> {
  const started = performance.now();
  const tokenizer = getTokenizer(opts.tokenizer ?? "byte");
  const { valFraction, shardTokens } = checkOptions(opts);
  const book = readCodebook(opts.codebook);
  const pairs = opts.captions !== undefined
    ? readCaptions(opts.captions, opts.images)
    : listImageFiles(opts.images).map((image) => {
      const path = join(opts.images, image);
      return { image, path, caption: null, bytes: imageBytes(path) ?? 0 };
    });
  if (pairs.length === 0) throw new UserError(`${opts.images}: no PNG or JPEG images (.png, .jpg, .jpeg)`);
  const ids = imageVocab(tokenizer.vocabSize, book.codes);
  const bytesTotal = pairs.reduce((a, p) => a + p.bytes, 0);
  const rowTokens = opts.rowTokens ?? ROW_TOKENS;
  const output = await ShardSetOutput.create(opts.out, { tokenizer, vocabSize: ids.vocabSize, types: true }, shardTokens, opts.recordBatchRows);
  try {
    let bytesDone = 0, imageTokens = 0, textTokens = 0, lastReport = 0, done = 0;
    const report = () => opts.onProgress?.({ bytesDone, bytesTotal, documents: done, tokens: imageTokens + textTokens });
    for (const [i, pair] of pairs.entries()) {
      const codes = imageCodes(pair.path, book);
      const text = pair.caption ? tokenizer.encode(pair.caption) : new Int32Array(0);
      const doc = new Int32Array(codes.length + text.length);
      for (let k = 0; k < codes.length; k++) doc[k] = ids.imageTokenOffset + codes[k]!;
      doc.set(text, codes.length);
      const types = new Uint8Array(doc.length).fill(TEXT_TYPE);
      types.fill(IMAGE_TYPE, 0, codes.length);
      const split = output.writers[isValDocument(i, valFraction) ? "val" : "train"];
      for (let at = 0; at < doc.length; at += rowTokens) {
        const end = Math.min(doc.length, at + rowTokens);
        await split.add(doc.slice(at, end), at > 0, types.slice(at, end));
      }
      imageTokens += codes.length;
      textTokens += text.length;
      bytesDone += pair.bytes;
      done++;
      if (performance.now() - lastReport > 200) {
        lastReport = performance.now();
        report();
      }
    }
    report();
    await output.closeShards();
    if (output.writers.train.shards.length === 0) {
      throw new UserError(`all ${pairs.length} images went to the validation split; lower --val-fraction or add images`);
    }
    const images: IndexImages = {
      codebook: opts.codebook,
      codebook_sha256: book.sha256,
      patch: book.patch,
      size: book.size,
      codes: book.codes,
      image_token_offset: ids.imageTokenOffset,
      mask_token_id: ids.maskTokenId,
      type_column: TYPE_COLUMN,
    };
    await output.commit({
      format: INDEX_FORMAT,
      version: INDEX_VERSION,
      tokenizer: tokenizer.name,
      vocab_size: ids.vocabSize,
      eot: tokenizer.eot,
      column: "input_ids",
      eot_stored: false,
      val_fraction: valFraction,
      shard_tokens: shardTokens,
      images,
    });
    const seconds = (performance.now() - started) / 1000;
    return {
      out: opts.out,
      tokenizer: tokenizer.name,
      vocab_size: ids.vocabSize,
      files: pairs.length,
      documents: pairs.length,
      tokens: imageTokens + textTokens,
      skipped_empty: 0,
      input_bytes: bytesDone,
      seconds: +seconds.toFixed(3),
      input_mb_per_s: +(bytesDone / 1e6 / Math.max(seconds, 1e-9)).toFixed(2),
      ...output.summary(),
      images: pairs.length,
      image_tokens: imageTokens,
      text_tokens: textTokens,
      codes: book.codes,
      image_token_offset: ids.imageTokenOffset,
      mask_token_id: ids.maskTokenId,
    };
  } catch (e) {
    await output.abort();
    throw e;
  } finally {
    output.release();
  }
}
