"""Writes mhmoe token shard sets from Python without pyarrow (docs/data.md, "Shard set format" and
"Image-text shards"): Arrow IPC stream files with input_ids list<int32>, continuation bool and, for
image-text pairs, token_type_ids list<int8>, plus index.json with sizes and SHA-256. mhmoe reads
them as it reads its own (`mhmoe train --data DIR`, `mhmoe inspect DIR`).

With a pretrained visual tokenizer (BEiT v2 style: an image becomes a grid of codebook indices):

    from shard_writer import image_text_document, write_shard_set
    docs = [image_text_document(codes, list(caption.encode("utf-8")), text_vocab=257)  # byte captions
            for codes, caption in my_pairs]   # codes: the patch grid's indices, row-major
    write_shard_set("my-image-shards", docs, tokenizer="byte", val_fraction=0.05,
                    images={"codebook": "beitv2-base-patch16-224", "codebook_sha256": None,
                            "patch": 16, "size": 224, "codes": 8192})

Each document is one split unit (it goes whole to train or val by the rule mhmoe uses:
unit i is val when floor(i*F + 0.5) < floor((i+1)*F + 0.5)). mhmoe tokenize cuts long *text*
documents into 256-token units instead; this writer never does. A document longer than ROW_TOKENS
ids becomes continuation rows, as mhmoe writes them.

The Arrow messages are flatbuffers written by hand (Message.fbs, Schema.fbs), front to back: a table
is preceded by its vtable and followed by what it refers to, so every offset points forward.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from arrow_shards import (BATCH_METADATA_KEY, CONTINUATION_COLUMN, INDEX_FILE, INDEX_FORMAT, TOKEN_COLUMN,
                          TOKENIZERS, TYPE_COLUMN, ShardError, image_vocab)

INDEX_VERSION = 2
ROW_TOKENS = 1 << 16
ROWS_PER_RECORD_BATCH = 1000
TOKENS_PER_RECORD_BATCH = 1 << 18
DEFAULT_SHARD_TOKENS = 50_000_000
TEXT_TYPE, IMAGE_TYPE = 0, 1

_HEADER_SCHEMA, _HEADER_RECORD_BATCH = 1, 3
_TYPE_INT, _TYPE_BOOL, _TYPE_LIST = 2, 6, 12
_METADATA_V5 = 4


# ---- flatbuffers, front to back ----------------------------------------------------------------

class _Table:
    """A table to write: slots[i] is None (absent) or (kind, value); kinds: 'u8', 'bool', 'i16',
    'i32', 'i64' (inline scalars), 'table', 'string', 'tables' (vector of tables), 'structs'
    ((bytes, element alignment): a vector of structs given as raw little-endian bytes and count)."""

    def __init__(self, *slots):
        self.slots = slots


_SCALAR = {"u8": ("<B", 1), "bool": ("<B", 1), "i16": ("<h", 2), "i32": ("<i", 4), "i64": ("<q", 8)}


class _Builder:
    def __init__(self):
        self.buf = bytearray(4)  # the root offset, patched by finish

    def _pad(self, align: int, extra: int = 0) -> None:
        self.buf.extend(b"\0" * ((-(len(self.buf) + extra)) % align))

    def finish(self, root: _Table) -> bytes:
        struct.pack_into("<I", self.buf, 0, self._table(root))
        self._pad(8)
        return bytes(self.buf)

    def _table(self, t: _Table) -> int:
        # inline layout: the soffset to the vtable, then the fields, largest first, each aligned
        layout, end = {}, 4
        sized = [(i, 4 if s[0] in ("table", "string", "tables", "structs") else _SCALAR[s[0]][1])
                 for i, s in enumerate(t.slots) if s is not None]
        for i, size in sorted(sized, key=lambda x: -x[1]):
            end += (-end) % size
            layout[i] = end
            end += size
        vtable = struct.pack(f"<HH{len(t.slots)}H", 4 + 2 * len(t.slots), end, *[layout.get(i, 0) for i in range(len(t.slots))])
        self._pad(2)
        vt_pos = len(self.buf)
        self.buf.extend(vtable)
        self._pad(8)
        pos = len(self.buf)
        self.buf.extend(b"\0" * end)
        struct.pack_into("<i", self.buf, pos, pos - vt_pos)
        refs = []
        for i, at in layout.items():
            kind, value = t.slots[i]
            if kind in _SCALAR:
                struct.pack_into(_SCALAR[kind][0], self.buf, pos + at, int(value))
            else:
                refs.append((pos + at, kind, value))
        for at, kind, value in refs:
            self._patch(at, self._child(kind, value))
        return pos

    def _patch(self, at: int, target: int) -> None:
        struct.pack_into("<I", self.buf, at, target - at)

    def _child(self, kind: str, value) -> int:
        if kind == "table":
            return self._table(value)
        if kind == "string":
            data = value.encode("utf-8")
            self._pad(4)
            pos = len(self.buf)
            self.buf.extend(struct.pack("<I", len(data)) + data + b"\0")
            return pos
        if kind == "tables":
            self._pad(4)
            pos = len(self.buf)
            self.buf.extend(struct.pack("<I", len(value)) + b"\0" * (4 * len(value)))
            for k, t in enumerate(value):
                self._patch(pos + 4 + 4 * k, self._table(t))
            return pos
        if kind == "structs":
            data, align, count = value
            self._pad(align, 4)  # the elements, after the u32 count, are aligned
            pos = len(self.buf)
            self.buf.extend(struct.pack("<I", count) + data)
            return pos
        raise ValueError(kind)


def _key_values(pairs: dict) -> Tuple[str, List[_Table]]:
    return "tables", [_Table(("string", k), ("string", v)) for k, v in pairs.items()]


def _int_type(bits: int) -> _Table:
    return _Table(("i32", bits), ("bool", 1))


def _field(name: str, type_id: int, type_table: _Table, children: Sequence[_Table] = ()) -> _Table:
    # Field: name, nullable, type_type, type, dictionary, children, custom_metadata
    return _Table(("string", name), ("bool", 1), ("u8", type_id), ("table", type_table), None, ("tables", list(children)), None)


def _list_of_int(name: str, bits: int) -> _Table:
    return _field(name, _TYPE_LIST, _Table(), [_field("item", _TYPE_INT, _int_type(bits))])


def _message(header_type: int, header: _Table, body_length: int, metadata: Optional[dict] = None) -> bytes:
    # Message: version, header_type, header, bodyLength, custom_metadata
    meta = _key_values(metadata) if metadata else None
    fb = _Builder().finish(_Table(("i16", _METADATA_V5), ("u8", header_type), ("table", header), ("i64", body_length), meta))
    fb += b"\0" * ((-len(fb)) % 8)
    return struct.pack("<Ii", 0xFFFFFFFF, len(fb)) + fb


def schema_message(tokenizer: str, vocab_size: int, types: bool) -> bytes:
    """The stream's schema message: the columns and metadata mhmoe's shards have."""
    features = {TOKEN_COLUMN: {"feature": {"dtype": "int32", "_type": "Value"}, "_type": "Sequence"},
                CONTINUATION_COLUMN: {"dtype": "bool", "_type": "Value"}}
    fields = [_list_of_int(TOKEN_COLUMN, 32), _field(CONTINUATION_COLUMN, _TYPE_BOOL, _Table())]
    if types:
        features[TYPE_COLUMN] = {"feature": {"dtype": "int8", "_type": "Value"}, "_type": "Sequence"}
        fields.append(_list_of_int(TYPE_COLUMN, 8))
    metadata = {"huggingface": json.dumps({"info": {"features": features}}, separators=(",", ":")),
                "mhmoe": json.dumps({"tokenizer": tokenizer, "vocab_size": vocab_size}, separators=(",", ":"))}
    # Schema: endianness, fields, custom_metadata, features
    return _message(_HEADER_SCHEMA, _Table(("i16", 0), ("tables", fields), _key_values(metadata), None), 0)


def record_batch_message(rows: List[Tuple[np.ndarray, bool, Optional[np.ndarray]]], types: bool) -> bytes:
    """One record batch of rows (ids int32, continuation, types uint8 or None = all text)."""
    n = len(rows)
    offsets = np.zeros(n + 1, np.int32)
    offsets[1:] = np.cumsum([len(r[0]) for r in rows])
    values = np.concatenate([np.asarray(r[0], np.int32) for r in rows]) if n else np.zeros(0, np.int32)
    flags = np.packbits(np.array([r[1] for r in rows], bool), bitorder="little")
    nodes = [(n, 0), (len(values), 0), (n, 0)]
    buffers = [b"", offsets.tobytes(), b"", values.astype("<i4").tobytes(), b"", flags.tobytes()]
    if types:
        tv = np.concatenate([np.zeros(len(r[0]), np.int8) if r[2] is None else np.asarray(r[2], np.int8)
                             for r in rows]) if n else np.zeros(0, np.int8)
        nodes += [(n, 0), (len(tv), 0)]
        buffers += [b"", offsets.tobytes(), b"", tv.tobytes()]
    body, spans = bytearray(), []
    for b in buffers:
        spans.append((len(body), len(b)))
        body.extend(b)
        body.extend(b"\0" * ((-len(body)) % 8))
    node_bytes = b"".join(struct.pack("<qq", *x) for x in nodes)
    buffer_bytes = b"".join(struct.pack("<qq", *x) for x in spans)
    # RecordBatch: length, nodes, buffers, compression
    header = _Table(("i64", n), ("structs", (node_bytes, 8, len(nodes))), ("structs", (buffer_bytes, 8, len(spans))), None)
    joins = json.dumps({"joins_previous": bool(rows[0][1]) if n else False}, separators=(",", ":"))
    return _message(_HEADER_RECORD_BATCH, header, len(body), {BATCH_METADATA_KEY: joins}) + bytes(body)


END_OF_STREAM = struct.pack("<Ii", 0xFFFFFFFF, 0)


# ---- shards and shard sets ------------------------------------------------------------------

class _ShardFile:
    """One shard being written: record batches flushed as they fill, hashed on the way."""

    def __init__(self, path: str, tokenizer: str, vocab_size: int, types: bool):
        self.path, self.types = path, types
        self.f = open(path, "xb")
        self.hash = hashlib.sha256()
        self.bytes = self.documents = self.tokens = 0
        self.pending: list = []
        self.pending_tokens = 0
        self._write(schema_message(tokenizer, vocab_size, types))

    def _write(self, data: bytes) -> None:
        self.f.write(data)
        self.hash.update(data)
        self.bytes += len(data)

    @property
    def token_count(self) -> int:
        return self.tokens + self.pending_tokens

    def add(self, ids: np.ndarray, continuation: bool, types: Optional[np.ndarray]) -> None:
        self.pending.append((ids, continuation, types))
        self.pending_tokens += len(ids)
        if len(self.pending) >= ROWS_PER_RECORD_BATCH or self.pending_tokens >= TOKENS_PER_RECORD_BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        self._write(record_batch_message(self.pending, self.types))
        self.documents += sum(1 for r in self.pending if not r[1])
        self.tokens += self.pending_tokens
        self.pending, self.pending_tokens = [], 0

    def finish(self) -> dict:
        self._flush()
        self._write(END_OF_STREAM)
        self.f.close()
        return {"documents": self.documents, "tokens": self.tokens, "bytes": self.bytes, "sha256": self.hash.hexdigest()}


def is_val_unit(i: int, val_fraction: float) -> bool:
    return math.floor(i * val_fraction + 0.5) < math.floor((i + 1) * val_fraction + 0.5)


def image_text_document(codes: Sequence[int], caption_ids: Sequence[int], text_vocab: int) -> Tuple[np.ndarray, np.ndarray]:
    """(ids, types) of one image-text pair: the image's codes (its patch grid, row-major) offset past
    the text ids and the mask id, type 1, then the caption's text ids, type 0 (no EOT: readers add it)."""
    codes = np.asarray(codes, np.int64)
    text = np.asarray(caption_ids, np.int64)
    if codes.size and codes.min() < 0:
        raise ShardError("image codes must be non-negative")
    if text.size and (text.min() < 0 or text.max() >= text_vocab):
        raise ShardError(f"caption ids must be below the text vocabulary's {text_vocab}")
    ids = np.concatenate([codes + text_vocab + 1, text]).astype(np.int32)
    types = np.concatenate([np.full(codes.size, IMAGE_TYPE, np.uint8), np.full(text.size, TEXT_TYPE, np.uint8)])
    return ids, types


Document = Union[Sequence[int], np.ndarray, Tuple[Sequence[int], Optional[Sequence[int]]]]


def write_shard_set(directory: str, documents: Iterable[Document], tokenizer: str = "byte", val_fraction: float = 0.0,
                    shard_tokens: int = DEFAULT_SHARD_TOKENS, images: Optional[dict] = None,
                    row_tokens: int = ROW_TOKENS) -> dict:
    """Writes a shard set mhmoe reads; returns its index.json. `documents`: ids, or (ids, types) pairs
    (types: 0 text / 1 image per id, None for all text). `images`: {"codebook", "codebook_sha256",
    "patch", "size", "codes"} for image-text sets (the id fields and the type column are added here);
    without it the set is text only and has no token_type_ids column. `directory` must not exist or be
    empty; the set is written under DIR.partial-PID and renamed when complete."""
    if tokenizer not in TOKENIZERS:
        raise ShardError(f'unknown tokenizer "{tokenizer}" (expected one of: {", ".join(TOKENIZERS)})')
    if not 0 <= val_fraction < 1:
        raise ShardError(f"val_fraction must be at least 0 and below 1, got {val_fraction}")
    text_vocab, eot = TOKENIZERS[tokenizer]
    vocab = text_vocab
    if images is not None:
        missing = [k for k in ("codebook", "codebook_sha256", "patch", "size", "codes") if k not in images]
        if missing:
            raise ShardError(f"images: missing {', '.join(missing)}")
        ids_info = image_vocab(text_vocab, int(images["codes"]))
        images = {"codebook": images["codebook"], "codebook_sha256": images["codebook_sha256"], "patch": int(images["patch"]),
                  "size": int(images["size"]), "codes": int(images["codes"]),
                  "image_token_offset": ids_info["image_token_offset"], "mask_token_id": ids_info["mask_token_id"],
                  "type_column": TYPE_COLUMN}
        vocab = ids_info["vocab_size"]
    out = os.path.abspath(directory)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ShardError(f"{directory}: already exists and is not empty")
    tmp = f"{out}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    types_column = images is not None
    shards: dict = {"train": [], "val": []}
    current: dict = {"train": None, "val": None}
    try:

        def add(split: str, ids: np.ndarray, continuation: bool, types: Optional[np.ndarray]) -> None:
            shard = current[split]
            if shard is not None and (shard.pending or shard.tokens) and shard.token_count + len(ids) > shard_tokens:
                shards[split].append(shard.finish() | {"file": os.path.basename(shard.path), "split": split})
                shard = current[split] = None
            if shard is None:
                name = f"{split}-{len(shards[split]):05d}.arrow"
                shard = current[split] = _ShardFile(os.path.join(tmp, name), tokenizer, vocab, types_column)
            shard.add(ids, continuation, types)

        unit = 0
        for doc in documents:
            ids, types = doc if isinstance(doc, tuple) else (doc, None)
            ids = np.asarray(ids, np.int64)
            if ids.size == 0:
                continue
            if ids.min() < 0 or ids.max() >= vocab:
                raise ShardError(f"document {unit}: ids must be in 0..{vocab - 1}")
            if types is not None:
                types = np.asarray(types, np.uint8)
                if types.shape != ids.shape or ((types != 0) & (types != 1)).any():
                    raise ShardError(f"document {unit}: types must be 0 or 1, one per id")
                if not types_column and types.any():
                    raise ShardError(f"document {unit}: image tokens (type 1) need images=...")
            split = "val" if is_val_unit(unit, val_fraction) else "train"
            unit += 1
            for at in range(0, ids.size, row_tokens):
                add(split, ids[at:at + row_tokens].astype(np.int32), at > 0,
                    None if types is None or not types_column else types[at:at + row_tokens])
        for split in ("train", "val"):
            if current[split] is not None:
                shards[split].append(current[split].finish() | {"file": os.path.basename(current[split].path), "split": split})
        if not shards["train"]:
            raise ShardError("no documents in the train split (an empty corpus, or val_fraction too high)")
        listed = [{"file": s["file"], "split": s["split"], "documents": s["documents"], "tokens": s["tokens"],
                   "bytes": s["bytes"], "sha256": s["sha256"]} for s in shards["train"] + shards["val"]]
        index = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "tokenizer": tokenizer, "vocab_size": vocab, "eot": eot,
                 "column": TOKEN_COLUMN, "eot_stored": False, "val_fraction": val_fraction, "shard_tokens": shard_tokens}
        if images is not None:
            index["images"] = images
        index["splits"] = {sp: {"documents": sum(s["documents"] for s in shards[sp]), "tokens": sum(s["tokens"] for s in shards[sp]),
                                "shards": len(shards[sp])} for sp in ("train", "val")}
        index["shards"] = listed
        with open(os.path.join(tmp, INDEX_FILE), "w", encoding="utf-8") as f:
            f.write(json.dumps(index, indent=2) + "\n")
        if os.path.isdir(out):
            os.rmdir(out)
        os.rename(tmp, out)
        return index
    except BaseException:
        for sp in ("train", "val"):
            if current[sp] is not None and not current[sp].f.closed:
                current[sp].f.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
