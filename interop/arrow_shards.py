"""mhmoe token shard sets in Python without pyarrow: index.json, checksums, and a reader of the
Arrow IPC stream files `mhmoe tokenize` writes (docs/data.md, "Shard set format").

Only what those files hold is decoded: the schema's fields (input_ids list<int32|int64|uint16|uint32>,
the optional continuation bool column, the optional token_type_ids list<int*> column of shard sets
with images), each record batch's field nodes and buffers, and the record batch's custom metadata
{"joins_previous": bool}. The flatbuffer tables are read by hand (format.fbs /
Message.fbs / Schema.fbs of Apache Arrow): a table starts with an int32 offset back to its vtable; the
vtable lists each field's offset in the table (0: absent). Compressed bodies, dictionaries and the
file (ARROW1) format are refused with one line; mhmoe itself reads those (src/data/shard-reader.ts).

    from arrow_shards import open_shard_set, ShardReader
    s = open_shard_set("my-shards")            # index.json checked, sizes compared
    r = ShardReader.open(s.splits["train"][0].path, s.vocab_size)
    batch = r.read(0)                          # TokenBatch: rows, offsets, values (int32), continuation, types

shard_writer.py beside this file writes such shard sets (text, or image-text pairs with token types).

Like mhmoe: opening a set reads index.json and compares each shard's size; verify_shard hashes a
whole shard (sha256, 1 MiB chunks) the first time a run opens it.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

INDEX_FILE = "index.json"
INDEX_FORMAT = "mhmoe-token-shards"
READABLE_VERSIONS = (1, 2)
TOKEN_COLUMN = "input_ids"
CONTINUATION_COLUMN = "continuation"
TYPE_COLUMN = "token_type_ids"  # 0 text, 1 image (shard sets with images)
BATCH_METADATA_KEY = "mhmoe"
TOKENIZERS = {"byte": (257, 256), "gpt2": (50257, 50256)}  # vocab size, <|endoftext|>

# Arrow enums (Message.fbs, Schema.fbs)
_HEADER_SCHEMA, _HEADER_DICTIONARY, _HEADER_RECORD_BATCH = 1, 2, 3
_TYPE_INT, _TYPE_BOOL, _TYPE_LIST = 2, 6, 12


class ShardError(ValueError):
    """A user-caused problem with a shard set or shard; the message names the file."""


# ---- flatbuffers -------------------------------------------------------------------------

class _Table:
    def __init__(self, buf: bytes, pos: int):
        self.buf, self.pos = buf, pos
        vt = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vt_len = struct.unpack_from("<H", buf, vt)[0]
        self.vt = vt

    def _field(self, i: int) -> int:
        slot = 4 + 2 * i
        if slot >= self.vt_len:
            return 0
        off = struct.unpack_from("<H", self.buf, self.vt + slot)[0]
        return self.pos + off if off else 0

    def scalar(self, i: int, fmt: str, default=0):
        at = self._field(i)
        return struct.unpack_from("<" + fmt, self.buf, at)[0] if at else default

    def _indirect(self, at: int) -> int:
        return at + struct.unpack_from("<I", self.buf, at)[0]

    def table(self, i: int) -> Optional["_Table"]:
        at = self._field(i)
        return _Table(self.buf, self._indirect(at)) if at else None

    def string(self, i: int) -> Optional[str]:
        at = self._field(i)
        if not at:
            return None
        s = self._indirect(at)
        n = struct.unpack_from("<I", self.buf, s)[0]
        return self.buf[s + 4: s + 4 + n].decode("utf-8")

    def vector(self, i: int):
        """(start of the elements, count), or (0, 0) when absent."""
        at = self._field(i)
        if not at:
            return 0, 0
        v = self._indirect(at)
        return v + 4, struct.unpack_from("<I", self.buf, v)[0]

    def tables(self, i: int) -> List["_Table"]:
        start, n = self.vector(i)
        return [_Table(self.buf, self._indirect(start + 4 * k)) for k in range(n)]


def _root(buf: bytes) -> _Table:
    return _Table(buf, struct.unpack_from("<I", buf, 0)[0])


def _metadata(t: _Table, i: int) -> Dict[str, str]:
    return {kv.string(0) or "": kv.string(1) or "" for kv in t.tables(i)}


# ---- one shard -----------------------------------------------------------------------------

class TokenBatch:
    """One record batch's rows: row r is values[offsets[r]:offsets[r+1]] (int64 offsets, int32 values).

    The values are read from the file on first use (and checked against the vocabulary then), so a
    reader that only walks past rows (another rank's batches) reads their offsets, not their tokens;
    value_at(i) reads one token alone. `types` (uint8, parallel to values: 0 text, 1 image) is None
    when the shard has no token_type_ids column, else read and checked on first use too."""

    def __init__(self, rows: int, offsets: np.ndarray, continuation: Optional[np.ndarray], values=None,
                 load=None, load_one=None, load_types=None):
        self.rows, self.offsets, self.continuation = rows, offsets, continuation
        self._values, self._load, self._load_one = values, load, load_one
        self._types, self._load_types = None, load_types

    @property
    def values(self) -> np.ndarray:
        if self._values is None:
            self._values = self._load()
        return self._values

    @property
    def types(self) -> Optional[np.ndarray]:
        if self._types is None and self._load_types is not None:
            self._types = self._load_types()
        return self._types

    def value_at(self, i: int) -> int:
        return int(self._values[i]) if self._values is not None else self._load_one(i)


@dataclass
class _Span:
    offset: int     # of the message's body in the file
    body: int       # body length
    length: int     # rows
    nodes: list
    buffers: list
    joins: Optional[bool]


_INT_DTYPES = {(8, True): "<i1", (16, True): "<i2", (32, True): "<i4", (64, True): "<i8",
               (8, False): "<u1", (16, False): "<u2", (32, False): "<u4", (64, False): "<u8"}
_TOKEN_DTYPES = {np.dtype(d) for d in ("<i4", "<i8", "<u2", "<u4")}


def _field_kind(f: _Table, path: str):
    """('list', item numpy dtype) for a list of integers | ('bool', None) | (other, None)."""
    kind = f.scalar(2, "B")
    if kind == _TYPE_LIST:
        children = f.tables(5)
        if len(children) != 1:
            raise ShardError(f"{path}: not a valid Arrow IPC file (a list field without one child)")
        child = children[0]
        if child.scalar(2, "B") != _TYPE_INT:
            return "other", None
        it = child.table(3)
        width, signed = it.scalar(0, "i"), bool(it.scalar(1, "B"))
        dtype = _INT_DTYPES.get((width, signed))
        return ("list", np.dtype(dtype)) if dtype else ("other", None)
    if kind == _TYPE_BOOL:
        return "bool", None
    return "other", None


def _field_buffers(f: _Table) -> int:
    """Buffers and field nodes a field takes in a record batch, pre-order (list: 2 + child's)."""
    kind = f.scalar(2, "B")
    if kind == _TYPE_LIST:
        b, n = _field_buffers(f.tables(5)[0])
        return 2 + b, 1 + n
    if kind in (_TYPE_INT, _TYPE_BOOL):
        return 2, 1
    raise ShardError("unsupported column type")


class ShardReader:
    """Random access to the record batches of one Arrow IPC stream file (one record batch in memory)."""

    def __init__(self, path: str, vocab_size: int):
        self.path, self.vocab_size = path, vocab_size
        self.followed_by_continuation = False  # set by whoever knows (split_joins)
        self.spans: List[_Span] = []
        self.token_field = self.flag_field = self.type_field = -1
        self.token_dtype = self.type_dtype = None
        self.layout: List[tuple] = []  # per field: (first node, first buffer)
        self.joins: Optional[List[bool]] = None

    @classmethod
    def open(cls, path: str, vocab_size: int, head_only: bool = False) -> "ShardReader":
        r = cls(path, vocab_size)
        try:
            with open(path, "rb") as f:
                data_size = os.fstat(f.fileno()).st_size
                r._scan(f, data_size, head_only)
        except OSError as err:
            raise ShardError(f"{path}: cannot read ({err.strerror})") from None
        r._chain(min(1, len(r.spans)) if head_only else len(r.spans))
        return r

    def _bad(self, why: str) -> ShardError:
        return ShardError(f"{self.path}: not a valid Arrow IPC file ({why})")

    def _scan(self, f, size: int, head_only: bool) -> None:
        head = f.read(8)
        if head[:6] == b"ARROW1":
            raise ShardError(f"{self.path}: Arrow file (ARROW1) format; this reader takes the stream format "
                             "mhmoe tokenize writes (mhmoe itself reads both)")
        pos, schema = 0, None
        while True:
            f.seek(pos)
            head = f.read(8)
            if len(head) < 8:
                raise ShardError(f"{self.path}: not a complete Arrow IPC file (truncated, or not Arrow at all)")
            cont, meta_len = struct.unpack("<Ii", head)
            if cont != 0xFFFFFFFF:
                raise self._bad(f"no Arrow message at byte {pos}")
            if meta_len == 0:
                break
            if meta_len < 0 or pos + 8 + meta_len > size:
                raise ShardError(f"{self.path}: not a complete Arrow IPC file (truncated, or not Arrow at all)")
            meta = f.read(meta_len)
            try:
                msg = _root(meta)
                kind, body_len = msg.scalar(1, "B"), msg.scalar(3, "q")
                header = msg.table(2)
            except struct.error:
                raise self._bad(f"bad message at byte {pos}") from None
            body = pos + 8 + meta_len
            if body + body_len > size:
                raise ShardError(f"{self.path}: not a complete Arrow IPC file (truncated, or not Arrow at all)")
            if kind == _HEADER_SCHEMA:
                schema = header
                self._read_schema(header)
            elif kind == _HEADER_RECORD_BATCH:
                if schema is None:
                    raise self._bad("record batch before the schema")
                if header.table(3) is not None:
                    raise self._bad("compressed record batches are not supported here")
                ns, nn = header.vector(1)
                bs, nb = header.vector(2)
                nodes = [struct.unpack_from("<qq", meta, ns + 16 * k) for k in range(nn)]
                bufs = [struct.unpack_from("<qq", meta, bs + 16 * k) for k in range(nb)]
                joins = None
                raw = _metadata(msg, 4).get(BATCH_METADATA_KEY)
                if raw is not None:
                    try:
                        j = json.loads(raw).get("joins_previous")
                        joins = j if isinstance(j, bool) else None
                    except (ValueError, AttributeError):
                        joins = None
                self.spans.append(_Span(body, body_len, header.scalar(0, "q"), nodes, bufs, joins))
                if head_only:
                    break
            elif kind == _HEADER_DICTIONARY:
                raise self._bad("dictionary batches are not supported")
            else:
                raise self._bad(f"unexpected message type {kind} at byte {pos}")
            pos = body + body_len
        if schema is None:
            raise self._bad("no schema")

    def _read_schema(self, schema: _Table) -> None:
        fields = schema.tables(1)
        node = buf = 0
        names = []
        for i, f in enumerate(fields):
            name = f.string(0) or ""
            names.append(name)
            kind, dtype = _field_kind(f, self.path)
            self.layout.append((node, buf))
            if name == TOKEN_COLUMN:
                if kind != "list" or dtype not in _TOKEN_DTYPES:
                    raise ShardError(f"{self.path}: column \"{TOKEN_COLUMN}\" is not a list of int32, int64, "
                                     "uint16 or uint32")
                self.token_field, self.token_dtype = i, dtype
            elif name == CONTINUATION_COLUMN and kind == "bool":
                self.flag_field = i
            elif name == TYPE_COLUMN:
                if kind != "list":
                    raise ShardError(f"{self.path}: column \"{TYPE_COLUMN}\" is not a list of integers")
                self.type_field, self.type_dtype = i, dtype
            try:
                b, n = _field_buffers(f)
            except ShardError:
                raise self._bad(f"column {name!r} has a type this reader does not walk") from None
            node, buf = node + n, buf + b
        if self.token_field < 0:
            raise ShardError(f"{self.path}: no \"{TOKEN_COLUMN}\" column (columns: {', '.join(names) or 'none'})")

    @property
    def record_batch_count(self) -> int:
        return len(self.spans)

    def _buffer(self, f, span: _Span, index: int, dtype, count: int, first: int = 0) -> np.ndarray:
        off, length = span.buffers[index]
        item = np.dtype(dtype).itemsize
        if (first + count) * item > length:
            raise self._bad("a buffer is shorter than its field says")
        f.seek(span.offset + off + first * item)
        raw = f.read(count * item)
        if len(raw) != count * item:
            raise ShardError(f"{self.path}: truncated (file ended inside an Arrow message)")
        return np.frombuffer(raw, dtype=dtype)

    def _bits(self, f, span: _Span, index: int, n: int) -> Optional[np.ndarray]:
        off, length = span.buffers[index]
        if length == 0:
            return None
        f.seek(span.offset + off)
        return np.unpackbits(np.frombuffer(f.read((n + 7) // 8), dtype=np.uint8), bitorder="little")[:n]

    def read(self, k: int) -> TokenBatch:
        """Record batch k (file order): its offsets and continuation flags now, its tokens when used."""
        span = self.spans[k]
        node, buf = self.layout[self.token_field]
        rows, nulls = span.nodes[node]
        with open(self.path, "rb") as f:
            raw = self._buffer(f, span, buf + 1, "<i4", rows + 1).astype(np.int64)
            start, end = int(raw[0]), int(raw[-1])
            offsets = raw - start
            values = None
            if nulls > 0:  # null rows are empty documents: compact the values now
                valid = self._bits(f, span, buf, rows)
                if valid is not None and not valid.all():
                    values = self._buffer(f, span, buf + 3, self.token_dtype, end - start, start)
                    lengths = np.diff(offsets) * valid
                    values = self._checked(values[np.repeat(valid.astype(bool), np.diff(offsets))], k, None)
                    offsets = np.concatenate([[0], np.cumsum(lengths)])
            flags = None
            if self.flag_field >= 0:
                fnode, fbuf = self.layout[self.flag_field]
                bits = self._bits(f, span, fbuf + 1, rows)
                flags = np.zeros(rows, np.uint8) if bits is None else bits.astype(np.uint8)
                if span.nodes[fnode][1] > 0:
                    valid = self._bits(f, span, fbuf, rows)
                    if valid is not None:
                        flags = flags & valid
        if self.joins is not None and flags is not None and rows > 0 and bool(flags[0]) != self.joins[k]:
            raise ShardError(f"{self.path}: record batch {k}: its metadata and its continuation column disagree "
                             "(corrupt shard)")

        def load():
            with open(self.path, "rb") as f:
                return self._checked(self._buffer(f, span, buf + 3, self.token_dtype, end - start, start), k, offsets)

        def load_one(i: int) -> int:
            with open(self.path, "rb") as f:
                return int(self._checked(self._buffer(f, span, buf + 3, self.token_dtype, 1, start + i), k, None)[0])

        load_types = None
        if self.type_field >= 0:
            def load_types():
                with open(self.path, "rb") as f:
                    return self._types(f, span, k, offsets)

        return TokenBatch(rows, offsets, flags, values, load, load_one, load_types)

    def _types(self, f, span: _Span, k: int, offsets: np.ndarray) -> np.ndarray:
        """token_type_ids laid out like input_ids (null rows empty); lengths and values checked."""
        node, buf = self.layout[self.type_field]
        rows, nulls = span.nodes[node]
        raw = self._buffer(f, span, buf + 1, "<i4", rows + 1).astype(np.int64)
        spans = np.diff(raw)
        valid = np.ones(rows, bool)
        if nulls > 0:
            bits = self._bits(f, span, buf, rows)
            if bits is not None:
                valid = bits.astype(bool)
        lengths = spans * valid
        want = np.diff(offsets)
        if rows != len(want) or (lengths != want).any():
            r = int(np.nonzero(lengths != want)[0][0]) if rows == len(want) else 0
            raise ShardError(f"{self.path}: column \"{TYPE_COLUMN}\" (record batch {k}, row {r}) has {int(lengths[r])} "
                             f"values but \"{TOKEN_COLUMN}\" has {int(want[r])}")
        values = self._buffer(f, span, buf + 3, self.type_dtype, int(raw[-1] - raw[0]), int(raw[0]))
        if not valid.all():
            values = values[np.repeat(valid, spans)]
        bad = np.nonzero((values != 0) & (values != 1))[0]
        if bad.size:
            r = int(np.searchsorted(offsets, bad[0], side="right") - 1)
            raise ShardError(f"{self.path}: token type {int(values[bad[0]])} (record batch {k}, row {r}) is not 0 (text) "
                             "or 1 (image)")
        return values.astype(np.uint8)

    def _checked(self, values: np.ndarray, k: int, offsets: Optional[np.ndarray]) -> np.ndarray:
        if values.size and (values.min() < 0 or values.max() >= self.vocab_size):
            bad = int(np.nonzero((values < 0) | (values >= self.vocab_size))[0][0])
            where = f"record batch {k}" + (f", row {int(np.searchsorted(offsets, bad, side='right') - 1)}"
                                           if offsets is not None else "")
            raise ShardError(f"{self.path}: token id {int(values[bad])} ({where}) is outside the vocabulary of "
                             f"{self.vocab_size}")
        return values.astype(np.int32, copy=False)

    def _chain(self, count: int) -> None:
        if self.flag_field < 0:
            return
        known = [s.joins for s in self.spans[:count]]
        if all(j is not None for j in known):
            self.joins = known
            return
        self.joins = [bool(b.continuation[0]) if b.rows else False for b in (self.read(k) for k in range(count))]

    def joins_previous(self, k: int) -> bool:
        return self.joins is not None and k < len(self.joins) and self.joins[k]

    def joins_next(self, k: int) -> bool:
        return self.joins_previous(k + 1) if k + 1 < len(self.spans) else self.followed_by_continuation

    def continues(self, batch: TokenBatch, k: int, r: int) -> bool:
        if r > 0:
            return batch.continuation is not None and batch.continuation[r] == 1
        return self.joins_previous(k)

    def ends_document(self, batch: TokenBatch, k: int, r: int) -> bool:
        return not self.continues(batch, k, r + 1) if r + 1 < batch.rows else not self.joins_next(k)


def is_empty_document(length: int, continuation: bool, ends: bool) -> bool:
    return length == 0 and not continuation and ends


# ---- the shard set ---------------------------------------------------------------------------

@dataclass
class ShardInfo:
    file: str
    split: str
    documents: int
    tokens: int
    bytes: int
    sha256: str
    path: str


@dataclass
class ShardSet:
    dir: str
    tokenizer: str
    vocab_size: int
    eot: int
    shards: List[ShardInfo]
    splits: Dict[str, List[ShardInfo]]
    fingerprint: str
    verified: set = field(default_factory=set)
    # index.json's "images" object as stored (codebook, codebook_sha256, patch, size, codes,
    # image_token_offset, mask_token_id, type_column); None for text-only sets
    images: Optional[dict] = None


def image_vocab(text_vocab: int, codes: int) -> Dict[str, int]:
    """The id rules of a shard set with images: text ids (EOT included) first, then the mask id, then
    one id per codebook entry (code c is image_token_offset + c)."""
    return {"mask_token_id": text_vocab, "image_token_offset": text_vocab + 1, "vocab_size": text_vocab + 1 + codes}


def _check_images(index_path: str, images, text_vocab: int) -> int:
    """The vocab_size an index.json `images` object implies; a bad object is one ShardError line."""
    def bad(name: str, why: str) -> ShardError:
        return ShardError(f'{index_path}: field "images.{name}" {why}')
    if not isinstance(images, dict):
        raise ShardError(f'{index_path}: field "images" must be an object')
    if not isinstance(images.get("codebook"), str):
        raise bad("codebook", "must be a string")
    sha = images.get("codebook_sha256")
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise bad("codebook_sha256", "must be 64 hex digits or null")
    for k in ("patch", "size", "codes"):
        v = images.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise bad(k, "must be a positive integer")
    if images["size"] % images["patch"]:
        raise bad("size", f"({images['size']}) must be a multiple of images.patch ({images['patch']})")
    ids = image_vocab(text_vocab, images["codes"])
    for k in ("mask_token_id", "image_token_offset"):
        if images.get(k) != ids[k]:
            raise bad(k, f"must be {ids[k]}")
    if images.get("type_column") != TYPE_COLUMN:
        raise bad("type_column", f'must be "{TYPE_COLUMN}"')
    return ids["vocab_size"]


def _fingerprint(shards: List[ShardInfo]) -> str:
    h = hashlib.sha256()
    for s in shards:
        h.update(f"{s.split}\0{s.file}\0{s.sha256}\n".encode("utf-8"))
    return h.hexdigest()[:16]


def open_shard_set(directory: str, tokenizer: Optional[str] = None) -> ShardSet:
    """An mhmoe shard set (index.json); sizes are compared now, checksums when a shard is opened."""
    index_path = os.path.join(directory, INDEX_FILE)
    try:
        with open(index_path, "r", encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise ShardError(f"{directory}: no {INDEX_FILE} (not a shard set made by mhmoe tokenize)") from None
    except OSError as err:
        raise ShardError(f"{index_path}: cannot read ({err.strerror})") from None
    except ValueError as err:
        raise ShardError(f"{index_path}: invalid JSON ({err})") from None
    if not isinstance(raw, dict) or raw.get("format") != INDEX_FORMAT:
        raise ShardError(f'{index_path}: field "format" is not "{INDEX_FORMAT}"')
    if raw.get("version") not in READABLE_VERSIONS:
        raise ShardError(f'{index_path}: field "version" is {raw.get("version")}; this reader reads 1 and 2')
    name = raw.get("tokenizer")
    images = raw.get("images")
    if name not in TOKENIZERS:
        raise ShardError(f'{index_path}: fields "tokenizer"/"vocab_size" must be byte/257 or gpt2/50257')
    vocab = TOKENIZERS[name][0] if images is None else _check_images(index_path, images, TOKENIZERS[name][0])
    if raw.get("vocab_size") != vocab:
        what = "byte/257 or gpt2/50257" if images is None else f"{vocab} (images.image_token_offset + images.codes)"
        raise ShardError(f'{index_path}: fields "tokenizer"/"vocab_size" must be {what}')
    if tokenizer is not None and tokenizer != name:
        raise ShardError(f'tokenizer mismatch: {directory} was tokenized with "{name}" but "{tokenizer}" was asked for')
    shards = []
    for i, s in enumerate(raw.get("shards") or []):
        try:
            info = ShardInfo(s["file"], s["split"], int(s["documents"]), int(s["tokens"]), int(s["bytes"]),
                             str(s["sha256"]), os.path.join(directory, s["file"]))
        except (KeyError, TypeError, ValueError):
            raise ShardError(f'{index_path}: field "shards[{i}]" is incomplete') from None
        if info.file != os.path.basename(info.file) or info.split not in ("train", "val"):
            raise ShardError(f'{index_path}: field "shards[{i}]" names a bad file or split')
        try:
            size = os.path.getsize(info.path)
        except OSError as err:
            raise ShardError(f"{info.path}: cannot read ({err.strerror}) (listed in {index_path})") from None
        if size != info.bytes:
            raise ShardError(f"{info.path}: {size} bytes but {index_path} says {info.bytes} (truncated or replaced)")
        shards.append(info)
    eot = TOKENIZERS[name][1]
    return ShardSet(directory, name, vocab, eot, shards,
                    {sp: [s for s in shards if s.split == sp] for sp in ("train", "val")}, _fingerprint(shards),
                    images=images)


def verify_shard(shard_set: ShardSet, shard: ShardInfo) -> None:
    """sha256 of the whole file against index.json, once per process and shard."""
    if shard.path in shard_set.verified:
        return
    h = hashlib.sha256()
    try:
        with open(shard.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as err:
        raise ShardError(f"{shard.path}: cannot read ({err.strerror})") from None
    actual = h.hexdigest()
    if actual != shard.sha256:
        raise ShardError(f"{shard.path}: checksum mismatch (sha256 {actual[:12]}..., index.json says "
                         f"{shard.sha256[:12]}...): the shard is corrupt or was changed")
    shard_set.verified.add(shard.path)


def split_joins(shards: List[ShardInfo], vocab_size: int) -> List[bool]:
    """Per shard of a split: it starts with a row that continues the previous shard's last document."""
    return [i > 0 and ShardReader.open(s.path, vocab_size, head_only=True).joins_previous(0)
            for i, s in enumerate(shards)]


def read_rows(shard_set: ShardSet, split: str = "train", with_types: bool = False):
    """Every row of a split in stored order: (ids, continuation, ends), or with_types (ids, types,
    continuation, ends) where types is None for a shard without token_type_ids; checksums verified."""
    shards = shard_set.splits[split]
    joins = split_joins(shards, shard_set.vocab_size)
    for i, shard in enumerate(shards):
        verify_shard(shard_set, shard)
        reader = ShardReader.open(shard.path, shard_set.vocab_size)
        reader.followed_by_continuation = joins[i + 1] if i + 1 < len(joins) else False
        for k in range(reader.record_batch_count):
            b = reader.read(k)
            for r in range(b.rows):
                ids = b.values[b.offsets[r]:b.offsets[r + 1]]
                if with_types:
                    types = None if b.types is None else b.types[b.offsets[r]:b.offsets[r + 1]]
                    yield ids, types, reader.continues(b, k, r), reader.ends_document(b, k, r)
                else:
                    yield ids, reader.continues(b, k, r), reader.ends_document(b, k, r)
