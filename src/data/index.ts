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
export { openShardSet, verifyShard, INDEX_FILE, type IndexJson, type IndexShard, type ShardInfo, type ShardSet, type Split } from "./shard-set.ts";
export { readEvalDocuments, readShardDocuments, readSplitStream, readTokenBatches, ShardReader, type TokenBatch } from "./shard-reader.ts";
export { shardSchema, TOKEN_COLUMN } from "./shard-writer.ts";
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
export { DEFAULT_CORPUS, defaultCorpus, defaultShardSet, type DefaultShardSetOptions } from "./corpus.ts";
