/**
 * The training batch loader. Documents are concatenated into one token stream with EOT after each,
 * and every batch is the next B*T+1 tokens of that stream laid out as B rows of T+1 (row b starts
 * at stream token b*T; consecutive rows, and consecutive batches, share one token), so every token
 * is a target exactly once per epoch, as in llm.c.
 *
 * Order: each epoch visits the split's shards in a permutation drawn from (seed, epoch), each
 * shard's record batches in a permutation drawn from (seed, epoch, shard), and the documents of
 * each record batch in a permutation drawn from a running RNG. Only one record batch is in memory.
 * position() captures everything needed to continue exactly where it is.
 *
 * A long document is stored as several rows (continuation rows, docs/data.md), possibly across
 * record batches and shards: those rows, record batches and shards move as one unit in the
 * permutations (chainedOrder), and no EOT goes between them.
 */
import { UserError } from "../util/errors.ts";
import { isEmptyDocument, ShardReader, splitJoins, type TokenBatch } from "./shard-reader.ts";
import { verifyShard, type ShardInfo, type ShardSet, type Split } from "./shard-set.ts";
import { isShuffleState, permutation, ShuffleRng, type ShuffleState } from "./shuffle.ts";

export interface LoaderOptions {
  batchSize: number;
  seqLen: number;
  seed?: number;
  split?: Split;
  /** false: shards and documents in stored order (evaluation, tests); true by default */
  shuffle?: boolean;
}

/** JSON-serialisable; see docs/data.md. */
export interface LoaderPosition {
  version: 1;
  split: Split;
  seed: number;
  shuffle: boolean;
  /** ShardSet.fingerprint: a position only resumes on the shard set it came from */
  fingerprint: string;
  epoch: number;
  /** index into this epoch's shard order */
  shard: number;
  /** index into that shard's (shuffled) record batch order */
  recordBatch: number;
  /** index into that record batch's (shuffled) document order */
  row: number;
  /** tokens of that document already used; equal to its length when only its EOT is left */
  offset: number;
  /** RNG state just before this record batch's documents were shuffled */
  rng: ShuffleState;
  /** the last token of the previous batch, which starts the next one (null before the first batch) */
  carry: number | null;
  /** that token's type (0 text, 1 image); absent in positions saved before types existed: 0 */
  carryType?: number;
  tokensSeen: number;
}

interface Cursor {
  epoch: number;
  shard: number;
  recordBatch: number;
  row: number;
  offset: number;
  rng: ShuffleState;
}

export class Loader {
  readonly batchSize: number;
  readonly seqLen: number;
  readonly split: Split;
  private readonly shards: ShardInfo[];
  private seed: number;
  private shuffle: boolean;
  private cursor: Cursor;
  private rng: ShuffleRng;
  /** this epoch's shard order; null until the first read (it needs shardJoins) */
  private order: Uint32Array | null = null;
  /** per shard of the split (index order): it starts with a continuation row */
  private shardJoins: boolean[] | null = null;
  private reader: ShardReader | null = null;
  private batchOrder: Uint32Array | null = null;
  private batch: TokenBatch | null = null;
  /** the current record batch's index in file order */
  private fileBatch = 0;
  private rows: Uint32Array | null = null;
  private carry: number | null = null;
  private carryType = 0;
  private seen = 0;
  private shardsWithoutTokens = 0;
  private busy = false;

  constructor(
    private readonly set: ShardSet,
    opts: LoaderOptions,
  ) {
    for (const k of ["batchSize", "seqLen"] as const) {
      if (!Number.isSafeInteger(opts[k]) || opts[k] < 1) throw new UserError(`loader: ${k} must be a positive integer, got ${opts[k]}`);
    }
    const seed = opts.seed ?? 0;
    if (!Number.isSafeInteger(seed) || seed < 0) throw new UserError(`loader: seed must be a non-negative integer, got ${seed}`);
    this.batchSize = opts.batchSize;
    this.seqLen = opts.seqLen;
    this.split = opts.split ?? "train";
    this.shards = set.splits[this.split];
    if (this.shards.length === 0) throw new UserError(`${set.dir}: no ${this.split} split (no ${this.split} shards)`);
    this.seed = seed;
    this.shuffle = opts.shuffle ?? true;
    this.rng = new ShuffleRng(seed);
    this.cursor = { epoch: 0, shard: 0, recordBatch: 0, row: 0, offset: 0, rng: this.rng.getState() };
  }

  /** A loader that continues from a saved position (its seed, split and shuffle come from the position). */
  static async resume(set: ShardSet, opts: LoaderOptions, position: LoaderPosition): Promise<Loader> {
    const loader = new Loader(set, { ...opts, split: position?.split ?? opts.split });
    await loader.seek(position);
    return loader;
  }

  get tokensSeen(): number {
    return this.seen;
  }

  get epoch(): number {
    return this.cursor.epoch;
  }

  position(): LoaderPosition {
    const c = this.cursor;
    return {
      version: 1,
      split: this.split,
      seed: this.seed,
      shuffle: this.shuffle,
      fingerprint: this.set.fingerprint,
      epoch: c.epoch,
      shard: c.shard,
      recordBatch: c.recordBatch,
      row: c.row,
      offset: c.offset,
      rng: [...c.rng] as ShuffleState,
      carry: this.carry,
      ...(this.carryType ? { carryType: this.carryType } : {}),
      tokensSeen: this.seen,
    };
  }

  async seek(position: LoaderPosition): Promise<void> {
    checkPosition(position, this.set, this.split);
    await this.close();
    this.seed = position.seed;
    this.shuffle = position.shuffle;
    this.cursor = { epoch: position.epoch, shard: position.shard, recordBatch: position.recordBatch, row: position.row, offset: position.offset, rng: [...position.rng] as ShuffleState };
    if (position.shard >= this.shards.length) throw new UserError(`loader position: shard ${position.shard} is past the ${this.shards.length} ${this.split} shards`);
    this.order = await this.shardOrder(position.epoch);
    this.carry = position.carry;
    this.carryType = position.carryType ?? 0;
    this.seen = position.tokensSeen;
    this.shardsWithoutTokens = 0;
    await this.loadCurrentBatch();
    if (this.cursor.shard !== position.shard || this.cursor.epoch !== position.epoch) {
      throw new UserError(`loader position: record batch ${position.recordBatch} is past the end of its shard`);
    }
    if (position.row > this.batch!.rows) throw new UserError(`loader position: row ${position.row} is past the end of its record batch`);
    const len = position.row < this.batch!.rows ? this.docLength(position.row) : 0;
    if (position.offset > len) throw new UserError(`loader position: offset ${position.offset} is past the end of its document`);
  }

  /** The next (B, T+1) batch, row-major. Await each call before the next. */
  async next(): Promise<Int32Array> {
    return (await this.nextWithTypes()).ids;
  }

  /**
   * The next (B, T+1) batch and its token types laid out the same way (0 text, EOT included; 1 image),
   * from the shards' token_type_ids column; all 0 for shards without one. Await each call before the next.
   */
  async nextWithTypes(): Promise<{ ids: Int32Array; types: Uint8Array }> {
    if (this.busy) throw new Error("Loader.next() called again before the previous call finished");
    this.busy = true;
    try {
      const B = this.batchSize;
      const T = this.seqLen;
      const stream = new Int32Array(B * T + 1);
      const streamTypes = new Uint8Array(B * T + 1);
      let filled = 0;
      if (this.carry !== null) {
        streamTypes[filled] = this.carryType;
        stream[filled++] = this.carry;
      }
      await this.fill(stream, filled, streamTypes);
      this.carry = stream[B * T];
      this.carryType = streamTypes[B * T]!;
      this.seen += B * T;
      const out = new Int32Array(B * (T + 1));
      const types = new Uint8Array(B * (T + 1));
      for (let b = 0; b < B; b++) {
        out.set(stream.subarray(b * T, b * T + T + 1), b * (T + 1));
        types.set(streamTypes.subarray(b * T, b * T + T + 1), b * (T + 1));
      }
      return { ids: out, types };
    } finally {
      this.busy = false;
    }
  }

  async close(): Promise<void> {
    const reader = this.reader;
    this.reader = null;
    this.batchOrder = null;
    this.batch = null;
    this.rows = null;
    await reader?.close();
  }

  /** A document continued across shards keeps those shards together and in order. */
  private async shardOrder(epoch: number): Promise<Uint32Array> {
    const joins = (this.shardJoins ??= await splitJoins(this.shards, this.set.vocabSize));
    const rng = this.shuffle ? new ShuffleRng(this.seed, streamId(epoch, 0)) : null;
    return chainedOrder(this.shards.length, (s) => joins[s], rng);
  }

  private docLength(row: number): number {
    const doc = this.rows![row];
    return this.batch!.offsets[doc + 1] - this.batch!.offsets[doc];
  }

  /** Fills stream[at..] (and its types: EOT is text, 0) from the cursor on. */
  private async fill(stream: Int32Array, at: number, types: Uint8Array): Promise<void> {
    const eot = this.set.eot;
    while (at < stream.length) {
      if (!this.batch) await this.loadCurrentBatch();
      const c = this.cursor;
      const batch = this.batch!;
      if (c.row >= batch.rows) {
        this.advance();
        continue;
      }
      const row = this.rows![c.row];
      const start = batch.offsets[row];
      const len = batch.offsets[row + 1] - start;
      const ends = this.reader!.endsDocument(batch, this.fileBatch, row);
      if (isEmptyDocument(len, this.reader!.continues(batch, this.fileBatch, row), ends)) {
        c.row++; // empty (or null) documents contribute nothing, not even an EOT
        continue;
      }
      const take = Math.min(len - c.offset, stream.length - at);
      stream.set(batch.values.subarray(start + c.offset, start + c.offset + take), at);
      if (batch.types) types.set(batch.types.subarray(start + c.offset, start + c.offset + take), at);
      else types.fill(0, at, at + take);
      at += take;
      c.offset += take;
      this.shardsWithoutTokens = 0;
      if (c.offset === len && (!ends || at < stream.length)) {
        if (ends) {
          types[at] = 0;
          stream[at++] = eot; // a continuation row follows directly otherwise
        }
        c.row++;
        c.offset = 0;
      }
    }
  }

  /** Moves on to the next record batch; loadCurrentBatch() finds it, in this shard or the next. */
  private advance(): void {
    const c = this.cursor;
    c.recordBatch++;
    c.row = 0;
    c.offset = 0;
    c.rng = this.rng.getState();
    this.batch = null;
    this.rows = null;
  }

  /**
   * Loads the cursor's record batch, opening its shard (checksum verified once per run) when needed,
   * and shuffles its documents from the cursor's RNG state: the same call serves a fresh start,
   * normal progress and a resume.
   */
  private async loadCurrentBatch(): Promise<void> {
    const c = this.cursor;
    this.order ??= await this.shardOrder(c.epoch);
    for (;;) {
      if (!this.reader) {
        if (++this.shardsWithoutTokens > this.shards.length + 1) {
          throw new UserError(`${this.set.dir}: the ${this.split} split has no tokens`);
        }
        const shardIndex = this.order[c.shard];
        const shard = this.shards[shardIndex];
        await verifyShard(this.set, shard);
        const reader = (this.reader = await ShardReader.open(shard.path, this.set.vocabSize));
        reader.followedByContinuation = this.shardJoins![shardIndex + 1] ?? false;
        // A document continued from the previous shard comes first, one continued in the next shard last.
        const rng = this.shuffle ? new ShuffleRng(this.seed, streamId(c.epoch, shardIndex + 1)) : null;
        this.batchOrder = chainedOrder(reader.recordBatchCount, (k) => reader.joinsPrevious(k), rng, this.shardJoins![shardIndex], reader.followedByContinuation);
      }
      if (c.recordBatch < this.reader.recordBatchCount) {
        const reader = this.reader;
        const k = this.batchOrder![c.recordBatch];
        const batch = await reader.read(k);
        this.rng = ShuffleRng.fromState(c.rng);
        this.batch = batch;
        this.fileBatch = k;
        // A document continued from record batch k-1 comes first, one continued in k+1 last.
        const joins = (r: number) => reader.continues(batch, k, r);
        this.rows = chainedOrder(batch.rows, joins, this.shuffle ? this.rng : null, reader.joinsPrevious(k), reader.joinsNext(k));
        return;
      }
      await this.close();
      c.recordBatch = 0;
      c.shard++;
      if (c.shard === this.order.length) {
        c.shard = 0;
        c.epoch++;
        this.order = await this.shardOrder(c.epoch);
      }
    }
  }
}

/**
 * A shuffled order of n units (the rows of a record batch, the record batches of a shard) that keeps
 * each document's units together and in order: a group starts at every unit that does not join the
 * one before it, the groups are permuted, and the first group stays first when it continues a
 * document from before these units (pinFirst), the last stays last when its document goes on after
 * them (pinLast). With no joins this is permutation(n, rng), so shard sets without continuation
 * rows are read exactly as before they existed. rng null: stored order.
 */
function chainedOrder(n: number, joins: (i: number) => boolean, rng: ShuffleRng | null, pinFirst = false, pinLast = false): Uint32Array {
  if (!rng) return identity(n);
  const starts: number[] = [];
  for (let i = 0; i < n; i++) if (i === 0 || !joins(i)) starts.push(i);
  if (starts.length === n && !pinFirst && !pinLast) return permutation(n, rng);
  const groups = starts.length;
  const first = pinFirst && groups > 0 ? 1 : 0;
  const last = pinLast && groups > first ? 1 : 0;
  const order = new Uint32Array(n);
  let at = 0;
  const emit = (g: number) => {
    for (let i = starts[g], end = g + 1 < groups ? starts[g + 1] : n; i < end; i++) order[at++] = i;
  };
  if (first) emit(0);
  for (const g of permutation(groups - first - last, rng)) emit(first + g);
  if (last) emit(groups - 1);
  return order;
}

/** Independent RNG streams for shard orders (salt 0) and each shard's record batch order (salt i+1). */
function streamId(epoch: number, salt: number): number {
  return (Math.imul(epoch + 1, 0x9e3779b1) ^ Math.imul(salt + 0x632be5ab, 0x85ebca77)) >>> 0;
}

function identity(n: number): Uint32Array {
  return Uint32Array.from({ length: n }, (_, i) => i);
}

function checkPosition(p: LoaderPosition, set: ShardSet, split: Split): void {
  const count = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 0;
  if (p === null || typeof p !== "object" || p.version !== 1) throw new UserError("loader position: not a version 1 loader position");
  if (p.split !== split) throw new UserError(`loader position: saved for the ${p.split} split, not ${split}`);
  if (p.fingerprint !== set.fingerprint) {
    throw new UserError(`loader position: saved for a different shard set (fingerprint ${p.fingerprint}, ${set.dir} has ${set.fingerprint})`);
  }
  for (const k of ["seed", "epoch", "shard", "recordBatch", "row", "offset", "tokensSeen"] as const) {
    if (!count(p[k])) throw new UserError(`loader position: field "${k}" must be a non-negative integer`);
  }
  if (typeof p.shuffle !== "boolean") throw new UserError(`loader position: field "shuffle" must be true or false`);
  if (!isShuffleState(p.rng)) throw new UserError(`loader position: field "rng" must be four 32-bit words`);
  if (p.carry !== null && !(Number.isInteger(p.carry) && p.carry >= 0 && p.carry < set.vocabSize)) {
    throw new UserError(`loader position: field "carry" must be null or a token id`);
  }
  if (p.carryType !== undefined && p.carryType !== 0 && p.carryType !== 1) throw new UserError(`loader position: field "carryType" must be 0 or 1`);
}
