/** The data capability's public surface (docs/data.md describes the formats). */
export {
  assertSameTokenizer,
  BYTE_EOT,
  BYTE_VOCAB_SIZE,
  decodeBytes,
  encodeBytes,
  EOT_TEXT,
  getTokenizer,
  isTokenizerName,
  TOKENIZER_NAMES,
  type Tokenizer,
  type TokenizerName,
} from "./tokenizer.ts";
export {
  imageVocab,
  openShardSet,
  verifyShard,
  INDEX_FILE,
  type ImageInfo,
  type IndexImages,
  type IndexJson,
  type IndexShard,
  type ShardInfo,
  type ShardSet,
  type Split,
} from "./shard-set.ts";
export {
  readEvalDocuments,
  readShardDocuments,
  readShardRows,
  readSplitStream,
  readTokenBatches,
  ShardReader,
  type DocumentRow,
  type EvalDocuments,
  type TokenBatch,
} from "./shard-reader.ts";
export { IMAGE_TYPE, shardSchema, TEXT_TYPE, TOKEN_COLUMN, TYPE_COLUMN } from "./shard-writer.ts";
export { Loader, type LoaderOptions, type LoaderPosition } from "./loader.ts";
export {
  DEFAULT_SHARD_TOKENS,
  DEFAULT_VAL_FRACTION,
  runTokenize,
  writeShardSet,
  type TokenizeOptions,
  type TokenizeProgress,
  type TokenizeSummary,
} from "./tokenize.ts";
export { runTokenizeImages, type TokenizeImagesOptions, type TokenizeImagesSummary } from "./tokenize-images.ts";
export { readCodebook, trainCodebook, type Codebook, type CodebookOptions, type CodebookSummary } from "./codebook.ts";
export { decodeImage, encodePng, patchesOf, readImage, resizeToSquare, type RgbImage } from "./images.ts";
export { captionOf, renderScene, scenesFor, writeShapes, type Scene, type Shape, type ShapesOptions, type ShapesSummary } from "./shapes.ts";
export { DEFAULT_CORPUS, defaultCorpus, defaultShardSet, type DefaultShardSetOptions } from "./corpus.ts";
