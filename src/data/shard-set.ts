/**
 * A shard set on disk: our `index.json` plus Arrow shards, or a Hugging Face datasets directory
 * (`save_to_disk` layout: *.arrow, optional state.json, optional train/ and validation/ splits),
 * or a single .arrow file. Opening is cheap (JSON + stat); each shard's checksum is verified by a
 * streaming hash the first time a run opens that shard (see verifyShard).
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { readdir, readFile, stat } from "node:fs/promises";
import { basename, join } from "node:path";
import { UserError } from "../util/errors.ts";
import { fileError } from "./inputs.ts";
import { getTokenizer, isTokenizerName, TOKENIZER_NAMES, type TokenizerName } from "./tokenizer.ts";
import { TYPE_COLUMN } from "./shard-writer.ts";

export type Split = "train" | "val";
export const INDEX_FILE = "index.json";
export const INDEX_FORMAT = "mhmoe-token-shards";
/** Version 2 added continuation rows: a reader of version 1 would put an EOT inside long documents, so it must refuse them. */
export const INDEX_VERSION = 2;
const READABLE_VERSIONS: readonly number[] = [1, 2];

/** One entry of index.json's `shards` (null fields: unknown, as for Hugging Face files). */
export interface ShardInfo {
  file: string;
  split: Split;
  documents: number | null;
  tokens: number | null;
  bytes: number | null;
  sha256: string | null;
  /** absolute or caller-relative path on disk (not stored in index.json) */
  path: string;
}

/** A shard as index.json lists it. */
export interface IndexShard {
  file: string;
  split: Split;
  documents: number;
  tokens: number;
  bytes: number;
  sha256: string;
}

/** index.json's `images` object: the shard set holds image-text pairs (docs/data.md). */
export interface IndexImages {
  /** the codebook file as it was named to mhmoe tokenize (or any name for a visual tokenizer of one's own) */
  codebook: string;
  /** sha256 of the codebook file, or null when there is none to hash */
  codebook_sha256: string | null;
  /** patch side in pixels */
  patch: number;
  /** images were resized to size x size */
  size: number;
  /** codebook entries: image ids are image_token_offset .. image_token_offset + codes - 1 */
  codes: number;
  /** the text vocabulary's size + 1 */
  image_token_offset: number;
  /** the text vocabulary's size */
  mask_token_id: number;
  type_column: "token_type_ids";
}

/** ShardSet.images: index.json's `images` object, in the names the rest of mhmoe uses. */
export interface ImageInfo {
  codebook: string;
  codebookSha256: string | null;
  patch: number;
  size: number;
  codes: number;
  /** image patch code c has id imageTokenOffset + c (textVocab + 1) */
  imageTokenOffset: number;
  /** the text vocabulary's size (the byte tokenizer's 257) */
  maskTokenId: number;
  typeColumn: "token_type_ids";
  /** (size / patch)^2: ids, all of type 1, each image contributes (row-major over its patch grid) */
  patchesPerImage: number;
}

/** The ids an image-text shard set over `textVocab` text ids (EOT included) and `codes` image codes uses. */
export function imageVocab(textVocab: number, codes: number): { maskTokenId: number; imageTokenOffset: number; vocabSize: number } {
  return { maskTokenId: textVocab, imageTokenOffset: textVocab + 1, vocabSize: textVocab + 1 + codes };
}

export interface IndexJson {
  format: typeof INDEX_FORMAT;
  version: number;
  tokenizer: TokenizerName;
  vocab_size: number;
  eot: number;
  column: "input_ids";
  /** documents are stored without `<|endoftext|>`; the loader adds one after each */
  eot_stored: false;
  val_fraction: number;
  shard_tokens: number;
  splits: Record<Split, { documents: number; tokens: number; shards: number }>;
  shards: IndexShard[];
  /** present when the set holds image-text pairs; vocab_size is then image_token_offset + codes */
  images?: IndexImages;
}

export interface ShardSet {
  dir: string;
  format: "mhmoe" | "huggingface";
  tokenizer: TokenizerName;
  /** ids are 0..vocabSize-1: the tokenizer's, or with images image_token_offset + codes */
  vocabSize: number;
  eot: number;
  /** index.json's `images` object; null for text-only sets and Hugging Face files */
  images: ImageInfo | null;
  shards: ShardInfo[];
  splits: Record<Split, ShardInfo[]>;
  /** identifies the exact shard list; a saved loader position only resumes on the same one */
  fingerprint: string;
  /** shard paths whose checksum this process has verified */
  verified: Set<string>;
}

export interface OpenShardSetOptions {
  /** required for Hugging Face files (they do not record one); checked against index.json otherwise */
  tokenizer?: string;
}

function fingerprintOf(shards: ShardInfo[]): string {
  const h = createHash("sha256");
  for (const s of shards) h.update(`${s.split}\0${s.file}\0${s.sha256 ?? s.bytes ?? ""}\n`);
  return h.digest("hex").slice(0, 16);
}

function bad(indexPath: string, field: string, why: string): UserError {
  return new UserError(`${indexPath}: field "${field}" ${why}`);
}

const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;

function parseIndex(indexPath: string, text: string): IndexJson {
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new UserError(`${indexPath}: invalid JSON (${(e as Error).message})`);
  }
  if (raw === null || typeof raw !== "object") throw new UserError(`${indexPath}: not a JSON object`);
  if (raw.format !== INDEX_FORMAT) throw bad(indexPath, "format", `is not "${INDEX_FORMAT}"`);
  if (!READABLE_VERSIONS.includes(raw.version as number)) throw bad(indexPath, "version", `is ${raw.version}; this mhmoe reads ${READABLE_VERSIONS.join(" and ")}`);
  if (typeof raw.tokenizer !== "string" || !isTokenizerName(raw.tokenizer)) {
    throw bad(indexPath, "tokenizer", `must be one of ${TOKENIZER_NAMES.join(", ")}`);
  }
  const tokenizer = getTokenizer(raw.tokenizer);
  if (raw.images !== undefined) {
    const info = parseImages(indexPath, raw.images, tokenizer.vocabSize);
    const vocabSize = info.imageTokenOffset + info.codes;
    if (raw.vocab_size !== vocabSize) throw bad(indexPath, "vocab_size", `must be ${vocabSize} (images.image_token_offset + images.codes)`);
  } else if (raw.vocab_size !== tokenizer.vocabSize) throw bad(indexPath, "vocab_size", `must be ${tokenizer.vocabSize} for ${tokenizer.name}`);
  if (!Array.isArray(raw.shards)) throw bad(indexPath, "shards", "must be an array");
  raw.shards.forEach((s: Record<string, unknown>, i: number) => {
    const f = (name: string) => `shards[${i}].${name}`;
    if (s === null || typeof s !== "object") throw bad(indexPath, `shards[${i}]`, "must be an object");
    if (typeof s.file !== "string" || s.file !== basename(s.file) || !s.file.endsWith(".arrow")) {
      throw bad(indexPath, f("file"), "must be a .arrow file name in the same directory");
    }
    if (s.split !== "train" && s.split !== "val") throw bad(indexPath, f("split"), `must be "train" or "val"`);
    for (const k of ["documents", "tokens", "bytes"]) if (!isCount(s[k])) throw bad(indexPath, f(k), "must be a count");
    if (typeof s.sha256 !== "string" || !/^[0-9a-f]{64}$/.test(s.sha256)) throw bad(indexPath, f("sha256"), "must be 64 hex digits");
  });
  return raw as unknown as IndexJson;
}

/** Checks index.json's `images` object against the tokenizer's vocabulary (the id rules of docs/data.md). */
function parseImages(indexPath: string, images: unknown, textVocab: number): ImageInfo {
  if (images === null || typeof images !== "object" || Array.isArray(images)) throw bad(indexPath, "images", "must be an object");
  const o = images as Record<string, unknown>;
  const f = (name: string) => `images.${name}`;
  if (typeof o.codebook !== "string") throw bad(indexPath, f("codebook"), "must be a string");
  if (o.codebook_sha256 !== null && (typeof o.codebook_sha256 !== "string" || !/^[0-9a-f]{64}$/.test(o.codebook_sha256))) {
    throw bad(indexPath, f("codebook_sha256"), "must be 64 hex digits or null");
  }
  for (const k of ["patch", "size", "codes"]) if (!isCount(o[k]) || o[k] === 0) throw bad(indexPath, f(k), "must be a positive integer");
  const patch = o.patch as number, size = o.size as number, codes = o.codes as number;
  if (size % patch !== 0) throw bad(indexPath, f("size"), `(${size}) must be a multiple of images.patch (${patch})`);
  const ids = imageVocab(textVocab, codes);
  if (o.mask_token_id !== ids.maskTokenId) throw bad(indexPath, f("mask_token_id"), `must be ${ids.maskTokenId} (the text vocabulary's size)`);
  if (o.image_token_offset !== ids.imageTokenOffset) throw bad(indexPath, f("image_token_offset"), `must be ${ids.imageTokenOffset} (the text vocabulary's size + 1)`);
  if (o.type_column !== TYPE_COLUMN) throw bad(indexPath, f("type_column"), `must be "${TYPE_COLUMN}"`);
  return {
    codebook: o.codebook, codebookSha256: (o.codebook_sha256 as string | null) ?? null, patch, size, codes,
    imageTokenOffset: ids.imageTokenOffset, maskTokenId: ids.maskTokenId, typeColumn: TYPE_COLUMN, patchesPerImage: (size / patch) ** 2,
  };
}

async function openIndexed(dir: string, indexPath: string, opts: OpenShardSetOptions): Promise<ShardSet> {
  let text;
  try {
    text = await readFile(indexPath, "utf8");
  } catch (e) {
    throw fileError(indexPath, e);
  }
  const index = parseIndex(indexPath, text);
  if (opts.tokenizer !== undefined && opts.tokenizer !== index.tokenizer) {
    throw new UserError(`tokenizer mismatch: ${dir} was tokenized with "${index.tokenizer}" but "${opts.tokenizer}" was asked for`);
  }
  const shards: ShardInfo[] = index.shards.map((s) => ({ ...s, path: join(dir, s.file) }));
  for (const s of shards) {
    let size;
    try {
      size = (await stat(s.path)).size;
    } catch (e) {
      const err = fileError(s.path, e);
      if (err instanceof UserError) throw new UserError(`${err.message} (listed in ${indexPath})`);
      throw err;
    }
    if (size !== s.bytes) throw new UserError(`${s.path}: ${size} bytes but ${indexPath} says ${s.bytes} (truncated or replaced)`);
  }
  const tokenizer = getTokenizer(index.tokenizer);
  const images = index.images === undefined ? null : parseImages(indexPath, index.images, tokenizer.vocabSize);
  return makeSet(dir, "mhmoe", tokenizer.name, shards, images);
}

function makeSet(dir: string, format: ShardSet["format"], name: TokenizerName, shards: ShardInfo[], images: ImageInfo | null = null): ShardSet {
  const tokenizer = getTokenizer(name);
  return {
    dir,
    format,
    tokenizer: tokenizer.name,
    vocabSize: images ? images.imageTokenOffset + images.codes : tokenizer.vocabSize,
    eot: tokenizer.eot,
    images,
    shards,
    splits: { train: shards.filter((s) => s.split === "train"), val: shards.filter((s) => s.split === "val") },
    fingerprint: fingerprintOf(shards),
    verified: new Set(),
  };
}

const HF_VAL_DIRS = ["validation", "val", "valid", "test"];

/** The .arrow files of one Hugging Face split directory, in state.json's order when it has one. */
async function hfArrowFiles(dir: string): Promise<string[]> {
  try {
    const state = JSON.parse(await readFile(join(dir, "state.json"), "utf8"));
    const files = (state?._data_files ?? []).map((f: { filename?: unknown }) => f?.filename);
    if (files.length > 0 && files.every((f: unknown) => typeof f === "string" && f === basename(f))) return files;
  } catch {
    // no (usable) state.json: fall back to the sorted listing
  }
  const names = await readdir(dir).catch((e) => {
    throw fileError(dir, e);
  });
  return names.filter((n) => n.endsWith(".arrow") && !n.startsWith(".")).sort();
}

async function hfShards(dir: string, split: Split): Promise<ShardInfo[]> {
  const files = await hfArrowFiles(dir);
  const shards: ShardInfo[] = [];
  for (const file of files) {
    const path = join(dir, file);
    let size;
    try {
      size = (await stat(path)).size;
    } catch (e) {
      throw fileError(path, e);
    }
    shards.push({ file, split, documents: null, tokens: null, bytes: size, sha256: null, path });
  }
  return shards;
}

async function isDir(path: string): Promise<boolean> {
  return stat(path).then((s) => s.isDirectory(), () => false);
}

async function openHuggingFace(path: string, isFile: boolean, opts: OpenShardSetOptions): Promise<ShardSet> {
  if (opts.tokenizer === undefined) {
    throw new UserError(`${path}: no ${INDEX_FILE} (not made by mhmoe tokenize); say which tokenizer its input_ids use (--tokenizer byte|gpt2)`);
  }
  const tokenizer = getTokenizer(opts.tokenizer).name;
  let shards: ShardInfo[];
  if (isFile) {
    const size = (await stat(path)).size;
    shards = [{ file: basename(path), split: "train", documents: null, tokens: null, bytes: size, sha256: null, path }];
  } else if (await isDir(join(path, "train"))) {
    shards = await hfShards(join(path, "train"), "train");
    for (const name of HF_VAL_DIRS) {
      if (await isDir(join(path, name))) {
        shards.push(...(await hfShards(join(path, name), "val")));
        break;
      }
    }
  } else {
    shards = await hfShards(path, "train");
  }
  if (shards.length === 0) throw new UserError(`${path}: no ${INDEX_FILE} and no .arrow files`);
  return makeSet(path, "huggingface", tokenizer, shards);
}

/** Opens a shard set directory (ours or Hugging Face's) or a single .arrow file. */
export async function openShardSet(dir: string, opts: OpenShardSetOptions = {}): Promise<ShardSet> {
  let info;
  try {
    info = await stat(dir);
  } catch (e) {
    throw fileError(dir, e);
  }
  if (info.isFile()) {
    if (!dir.endsWith(".arrow")) throw new UserError(`${dir}: not a shard set (expected a directory or an .arrow file)`);
    return openHuggingFace(dir, true, opts);
  }
  const indexPath = join(dir, INDEX_FILE);
  if (await stat(indexPath).then(() => true, () => false)) return openIndexed(dir, indexPath, opts);
  return openHuggingFace(dir, false, opts);
}

/** Streams the shard through sha256 once per run (bounded memory) and compares with index.json. */
export async function verifyShard(set: ShardSet, shard: ShardInfo): Promise<void> {
  if (shard.sha256 === null || set.verified.has(shard.path)) return;
  const hash = createHash("sha256");
  try {
    for await (const chunk of createReadStream(shard.path, { highWaterMark: 1 << 20 })) hash.update(chunk as Buffer);
  } catch (e) {
    throw fileError(shard.path, e);
  }
  const actual = hash.digest("hex");
  if (actual !== shard.sha256) {
    throw new UserError(`${shard.path}: checksum mismatch (sha256 ${actual.slice(0, 12)}..., index.json says ${shard.sha256.slice(0, 12)}...): the shard is corrupt or was changed`);
  }
  set.verified.add(shard.path);
}
