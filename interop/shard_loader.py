"""mhmoe's training batch loader (src/data/loader.ts, docs/data.md "The loader") in Python: the same
batches in the same order from the same shard set and seed, and the same JSON position, so a run moves
between `mhmoe train` and train_torch.py at any step without changing its data.

Documents (rows joined) form one stream with <|endoftext|> after each non-empty one; batch n row b is
stream tokens [(n*B+b)*T, (n*B+b)*T+T+1). Per epoch: shards in a permutation of (seed, epoch), each
shard's record batches in a permutation of (seed, epoch, shard), each record batch's documents in a
permutation from a running xoshiro128** RNG; a document's rows, record batches and shards move as one
unit (chained_order). All integer arithmetic is mod 2^32 as in the TypeScript (Math.imul, >>> 0).
"""
from __future__ import annotations

from typing import Callable, List, Optional

import numpy as np

from arrow_shards import ShardError, ShardReader, ShardSet, is_empty_document, split_joins, verify_shard

M32 = 0xFFFFFFFF


def _imul(a: int, b: int) -> int:
    return (a * b) & M32


def _splitmix32(state: list) -> int:
    state[0] = (state[0] + 0x9E3779B9) & M32
    z = state[0]
    z = _imul(z ^ (z >> 16), 0x21F0AAAD)
    z = _imul(z ^ (z >> 15), 0x735A2D97)
    return (z ^ (z >> 15)) & M32


def _rotl(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & M32


class ShuffleRng:
    """src/data/shuffle.ts: xoshiro128** seeded through splitmix32 from (seed, stream)."""

    def __init__(self, seed: int, stream: int = 0):
        x = (seed & M32) ^ _imul((seed // 2 ** 32) & M32, 0x85EBCA6B) ^ _imul(stream & M32, 0xC2B2AE35)
        mix = [x & M32]
        self.s = [_splitmix32(mix) for _ in range(4)]
        if not any(self.s):
            self.s[0] = 1

    @classmethod
    def from_state(cls, state) -> "ShuffleRng":
        r = cls(0)
        r.s = [int(w) & M32 for w in state]
        return r

    def get_state(self) -> List[int]:
        return list(self.s)

    def next_u32(self) -> int:
        s = self.s
        result = _imul(_rotl(_imul(s[1], 5), 7), 9)
        t = (s[1] << 9) & M32
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = _rotl(s[3], 11)
        return result

    def below(self, n: int) -> int:
        limit = (2 ** 32 // n) * n
        while True:
            x = self.next_u32()
            if x < limit:
                return x % n


def permutation(n: int, rng: ShuffleRng) -> List[int]:
    p = list(range(n))
    for i in range(n - 1, 0, -1):
        j = rng.below(i + 1)
        p[i], p[j] = p[j], p[i]
    return p


def chained_order(n: int, joins: Callable[[int], bool], rng: Optional[ShuffleRng],
                  pin_first: bool = False, pin_last: bool = False) -> List[int]:
    if rng is None:
        return list(range(n))
    starts = [i for i in range(n) if i == 0 or not joins(i)]
    if len(starts) == n and not pin_first and not pin_last:
        return permutation(n, rng)
    groups = len(starts)
    first = 1 if pin_first and groups > 0 else 0
    last = 1 if pin_last and groups > first else 0
    order: List[int] = []

    def emit(g: int) -> None:
        end = starts[g + 1] if g + 1 < groups else n
        order.extend(range(starts[g], end))

    if first:
        emit(0)
    for g in permutation(groups - first - last, rng):
        emit(first + g)
    if last:
        emit(groups - 1)
    return order


def stream_id(epoch: int, salt: int) -> int:
    return (_imul(epoch + 1, 0x9E3779B1) ^ _imul(salt + 0x632BE5AB, 0x85EBCA77)) & M32


class Loader:
    """Loader(set, batch_size, seq_len, seed); next() -> int32 [B, T+1]; position() / resume(...).

    verify: which shards this process hashes (default all, as mhmoe): under torchrun each rank walks the
    whole stream but reads only its own batches' tokens (skip()), and hashes every world-th shard.
    """

    def __init__(self, shard_set: ShardSet, batch_size: int, seq_len: int, seed: int = 0, split: str = "train",
                 shuffle: bool = True, verify: Callable[[int], bool] = lambda i: True):
        self.set, self.batch_size, self.seq_len, self.split = shard_set, batch_size, seq_len, split
        self.shards = shard_set.splits[split]
        if not self.shards:
            raise ShardError(f"{shard_set.dir}: no {split} split (no {split} shards)")
        self.seed, self.shuffle, self.verify = seed, shuffle, verify
        self.rng = ShuffleRng(seed)
        self.cursor = dict(epoch=0, shard=0, recordBatch=0, row=0, offset=0, rng=self.rng.get_state())
        self.order: Optional[List[int]] = None
        self.shard_joins: Optional[List[bool]] = None
        self.reader: Optional[ShardReader] = None
        self.batch_order: Optional[List[int]] = None
        self.batch = None
        self.file_batch = 0
        self.rows: Optional[List[int]] = None
        self.carry: Optional[int] = None
        self.seen = 0
        self.shards_without_tokens = 0

    @classmethod
    def resume(cls, shard_set: ShardSet, batch_size: int, seq_len: int, position: dict, **kw) -> "Loader":
        if not isinstance(position, dict) or position.get("version") != 1:
            raise ShardError("loader position: not a version 1 loader position")
        if position.get("fingerprint") != shard_set.fingerprint:
            raise ShardError(f"loader position: saved for a different shard set (fingerprint "
                             f"{position.get('fingerprint')}, {shard_set.dir} has {shard_set.fingerprint})")
        loader = cls(shard_set, batch_size, seq_len, seed=position["seed"], split=position["split"],
                     shuffle=position["shuffle"], **kw)
        c = loader.cursor
        for k in ("epoch", "shard", "recordBatch", "row", "offset"):
            c[k] = int(position[k])
        c["rng"] = [int(w) for w in position["rng"]]
        if c["shard"] >= len(loader.shards):
            raise ShardError(f"loader position: shard {c['shard']} is past the {len(loader.shards)} shards")
        loader.order = loader._shard_order(c["epoch"])
        loader.carry = position["carry"]
        loader.seen = int(position["tokensSeen"])
        loader._load_current_batch()
        if c["shard"] != position["shard"] or c["epoch"] != position["epoch"]:
            raise ShardError(f"loader position: record batch {position['recordBatch']} is past the end of its shard")
        return loader

    @property
    def tokens_seen(self) -> int:
        return self.seen

    def position(self) -> dict:
        c = self.cursor
        return {"version": 1, "split": self.split, "seed": self.seed, "shuffle": self.shuffle,
                "fingerprint": self.set.fingerprint, "epoch": c["epoch"], "shard": c["shard"],
                "recordBatch": c["recordBatch"], "row": c["row"], "offset": c["offset"], "rng": list(c["rng"]),
                "carry": self.carry, "tokensSeen": self.seen}

    def next(self) -> np.ndarray:
        """The next (B, T+1) batch."""
        B, T = self.batch_size, self.seq_len
        stream = np.zeros(B * T + 1, np.int32)
        at = 0
        if self.carry is not None:
            stream[0] = self.carry
            at = 1
        self._fill(stream, at)
        self.carry = int(stream[B * T])
        self.seen += B * T
        idx = np.arange(B)[:, None] * T + np.arange(T + 1)[None, :]
        return stream[idx]

    def skip(self) -> None:
        """Moves past one batch exactly as next() does, copying no tokens (another rank's batch)."""
        B, T = self.batch_size, self.seq_len
        need = B * T + (0 if self.carry is not None else 1)
        self.carry = self._fill(None, 0, need)
        self.seen += B * T

    def _shard_order(self, epoch: int) -> List[int]:
        if self.shard_joins is None:
            self.shard_joins = split_joins(self.shards, self.set.vocab_size)
        joins = self.shard_joins
        rng = ShuffleRng(self.seed, stream_id(epoch, 0)) if self.shuffle else None
        return chained_order(len(self.shards), lambda s: joins[s], rng)

    def _fill(self, stream: Optional[np.ndarray], at: int, total: Optional[int] = None) -> Optional[int]:
        """Fills stream[at:] (or, stream None, walks `total` tokens); returns the last token placed."""
        eot = self.set.eot
        end = len(stream) if stream is not None else total
        last = None
        while at < end:
            if self.batch is None:
                self._load_current_batch()
            c, batch = self.cursor, self.batch
            if c["row"] >= batch.rows:
                self._advance()
                continue
            row = self.rows[c["row"]]
            start = int(batch.offsets[row])
            length = int(batch.offsets[row + 1]) - start
            ends = self.reader.ends_document(batch, self.file_batch, row)
            if is_empty_document(length, self.reader.continues(batch, self.file_batch, row), ends):
                c["row"] += 1
                continue
            take = min(length - c["offset"], end - at)
            if take > 0:
                first = start + c["offset"]
                if stream is not None:
                    stream[at:at + take] = batch.values[first:first + take]
                    last = int(stream[at + take - 1])
                elif at + take == end:  # walking past: only the token the next batch starts with is read
                    last = batch.value_at(first + take - 1)
            at += take
            c["offset"] += take
            self.shards_without_tokens = 0
            if c["offset"] == length and (not ends or at < end):
                if ends:
                    if stream is not None:
                        stream[at] = eot
                    last = eot
                    at += 1
                c["row"] += 1
                c["offset"] = 0
        return last

    def _advance(self) -> None:
        c = self.cursor
        c["recordBatch"] += 1
        c["row"] = 0
        c["offset"] = 0
        c["rng"] = self.rng.get_state()
        self.batch = None
        self.rows = None

    def _load_current_batch(self) -> None:
        c = self.cursor
        if self.order is None:
            self.order = self._shard_order(c["epoch"])
        while True:
            if self.reader is None:
                self.shards_without_tokens += 1
                if self.shards_without_tokens > len(self.shards) + 1:
                    raise ShardError(f"{self.set.dir}: the {self.split} split has no tokens")
                index = self.order[c["shard"]]
                shard = self.shards[index]
                if self.verify(index):
                    verify_shard(self.set, shard)
                reader = self.reader = ShardReader.open(shard.path, self.set.vocab_size)
                reader.followed_by_continuation = index + 1 < len(self.shard_joins) and self.shard_joins[index + 1]
                rng = ShuffleRng(self.seed, stream_id(c["epoch"], index + 1)) if self.shuffle else None
                self.batch_order = chained_order(reader.record_batch_count, reader.joins_previous, rng,
                                                 self.shard_joins[index], reader.followed_by_continuation)
            if c["recordBatch"] < self.reader.record_batch_count:
                reader = self.reader
                k = self.batch_order[c["recordBatch"]]
                batch = reader.read(k)
                self.rng = ShuffleRng.from_state(c["rng"])
                self.batch, self.file_batch = batch, k
                self.rows = chained_order(batch.rows, lambda r: reader.continues(batch, k, r),
                                          self.rng if self.shuffle else None,
                                          reader.joins_previous(k), reader.joins_next(k))
                return
            self.reader = None
            self.batch_order = self.batch = self.rows = None
            c["recordBatch"] = 0
            c["shard"] += 1
            if c["shard"] == len(self.order):
                c["shard"] = 0
                c["epoch"] += 1
                self.order = self._shard_order(c["epoch"])
