"""Hand-written safetensors reader/writer and mhmoe checkpoint load/save (spec section 4).

File layout: u64 little-endian header length N, N bytes of JSON (padded with spaces so the
data starts 8-byte aligned), then the raw little-endian tensor bytes. The JSON maps each
name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data
start) plus "__metadata__": {"format": "pt"}.
"""
from __future__ import annotations

import json
import math
import os
import struct
import sys
from typing import Dict, Optional, Tuple

import torch

from mhmoe_config import ConfigError, MHMoEConfig

DTYPES: Dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
# Declaration order of the reference crate's Dtype enum (its derived Ord), stored types only.
_DTYPE_RANK = {DTYPES[name]: rank for rank, name in enumerate(
    ["BOOL", "U8", "I8", "I16", "F16", "BF16", "I32", "F32", "F64", "I64"])}
MAX_HEADER_BYTES = 100 * 1024 * 1024
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

if sys.byteorder != "little":  # tensor bytes are copied as-is
    raise ImportError("safetensors_io supports little-endian hosts only")


class CheckpointError(ValueError):
    """A user-caused problem with a checkpoint or tensor file; the message names the file."""


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# ---- raw safetensors ---------------------------------------------------------------------

def encode_safetensors(tensors: Dict[str, torch.Tensor],
                       metadata: Optional[Dict[str, str]] = None) -> bytes:
    header: Dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    chunks = []
    offset = 0
    # The reference crate's layout (its `prepare`): dtype enum order descending, then name.
    # Wider types come first, so every tensor starts at a multiple of its element size.
    order = sorted(tensors, key=lambda n: (-_DTYPE_RANK.get(tensors[n].dtype, -1), n))
    for name in order:
        tensor = tensors[name]
        if tensor.dtype not in DTYPE_NAMES:
            raise CheckpointError(f"tensor {name}: dtype {tensor.dtype} cannot be stored")
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        raw = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        header[name] = {"dtype": DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)  # 8 + len(text) is then a multiple of 8
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def write_safetensors(path: str, tensors: Dict[str, torch.Tensor],
                      metadata: Optional[Dict[str, str]] = None) -> None:
    """Write atomically: a crash never leaves a half-written file under `path`."""
    _write_atomic(path, encode_safetensors(tensors, metadata))


def decode_safetensors(data: bytes, source: str = "<bytes>"
                       ) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    if len(data) < 8:
        raise CheckpointError(f"{source}: too short to be a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > MAX_HEADER_BYTES or 8 + header_len > len(data):
        raise CheckpointError(f"{source}: header length {header_len} does not fit the file")
    try:
        header = json.loads(data[8:8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{source}: header is not valid JSON ({err})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{source}: header is not a JSON object")
    metadata = header.pop("__metadata__", {}) or {}
    body = memoryview(data)[8 + header_len:]
    tensors: Dict[str, torch.Tensor] = {}
    spans = []
    for name, info in header.items():
        where = f"{source}: tensor {name}"
        try:
            dtype = DTYPES[info["dtype"]]
            shape = [int(s) for s in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{where}: bad header entry {info!r}") from None
        if any(s < 0 for s in shape):
            raise CheckpointError(f"{where}: negative dimension in shape {shape}")
        expected = math.prod(shape) * _element_size(dtype)
        if not 0 <= begin <= end <= len(body) or end - begin != expected:
            raise CheckpointError(f"{where}: data_offsets {[begin, end]} do not match shape "
                                  f"{shape} {info['dtype']} within {len(body)} data bytes")
        raw = bytearray(body[begin:end])
        flat = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        tensors[name] = flat.view(dtype).reshape(shape)
        spans.append((begin, end))
    covered = 0
    for begin, end in sorted(spans):
        if begin != covered:
            raise CheckpointError(f"{source}: tensor data overlaps or leaves a gap at byte {covered}")
        covered = end
    if covered != len(body):
        raise CheckpointError(f"{source}: {len(body) - covered} trailing bytes after tensor data")
    return tensors, metadata


def read_safetensors(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror})") from None
    return decode_safetensors(data, path)


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ---- checkpoints -------------------------------------------------------------------------

def read_config(directory: str) -> MHMoEConfig:
    path = os.path.join(directory, "config.json")
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    try:
        return MHMoEConfig.from_dict(data, source=path)
    except ConfigError as err:
        raise CheckpointError(str(err)) from None


def read_checkpoint_tensors(directory: str) -> Dict[str, torch.Tensor]:
    """All tensors of model.safetensors, or of the shards named by model.safetensors.index.json."""
    single = os.path.join(directory, WEIGHTS_FILE)
    index_path = os.path.join(directory, INDEX_FILE)
    if os.path.exists(single):
        return read_safetensors(single)[0]
    if not os.path.exists(index_path):
        raise CheckpointError(f"{directory}: neither {WEIGHTS_FILE} nor {INDEX_FILE} found")
    try:
        with open(index_path, "r", encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise CheckpointError(f"{index_path}: expected JSON with a 'weight_map' object") from None
    tensors: Dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if os.path.basename(str(shard)) != shard:
            raise CheckpointError(f"{index_path}: shard name {shard!r} must be a plain file name")
        shard_path = os.path.join(directory, shard)
        for name, tensor in read_safetensors(shard_path)[0].items():
            if weight_map.get(name) != shard:
                raise CheckpointError(f"{shard_path}: tensor {name} is not mapped to this shard "
                                      f"in {INDEX_FILE}")
            tensors[name] = tensor
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise CheckpointError(f"{index_path}: tensor {missing[0]} is mapped to "
                              f"{weight_map[missing[0]]} but not stored there")
    return tensors


def load_state_into(model: torch.nn.Module, tensors: Dict[str, torch.Tensor], source: str) -> None:
    """Copy tensors into the model's parameters, refusing any name or shape mismatch."""
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{source}: missing tensor {missing[0]}{more}")
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{source}: unexpected tensor {unexpected[0]}{more} "
                              "for this config.json")
    for name, p in params.items():
        t = tensors[name]
        if tuple(t.shape) != tuple(p.shape):
            raise CheckpointError(f"{source}: tensor {name} has shape {list(t.shape)}, "
                                  f"config.json implies {list(p.shape)}")
        if not t.is_floating_point():
            raise CheckpointError(f"{source}: tensor {name} has integer dtype {t.dtype}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name].to(p.dtype))


def load_pretrained(directory: str, dtype: torch.dtype = torch.float32):
    """config.json + weights -> MHMoEForCausalLM (parameters cast to `dtype`)."""
    from mhmoe_torch import MHMoEForCausalLM  # late import: mhmoe_torch is the heavier module
    config = read_config(directory)
    model = MHMoEForCausalLM(config).to(dtype)
    load_state_into(model, read_checkpoint_tensors(directory), directory)
    return model


def save_pretrained(model, directory: str, dtype: torch.dtype = torch.float32,
                    max_shard_bytes: Optional[int] = None) -> None:
    """Write config.json and model.safetensors (or shards + index when the weights exceed
    max_shard_bytes) with the spec's names; each file is written atomically."""
    os.makedirs(directory, exist_ok=True)
    tensors = {name: p.detach().to(dtype) for name, p in model.named_parameters()}
    shards = _split_shards(tensors, max_shard_bytes)
    if len(shards) == 1:
        write_safetensors(os.path.join(directory, WEIGHTS_FILE), shards[0])
        stale = os.path.join(directory, INDEX_FILE)
        if os.path.exists(stale):
            os.remove(stale)
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            file_name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(os.path.join(directory, file_name), shard)
            weight_map.update({name: file_name for name in shard})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        _write_atomic(os.path.join(directory, INDEX_FILE),
                      (json.dumps(index, indent=2) + "\n").encode("utf-8"))
        stale = os.path.join(directory, WEIGHTS_FILE)
        if os.path.exists(stale):
            os.remove(stale)
    config_text = json.dumps(model.config.to_dict(), indent=2) + "\n"
    _write_atomic(os.path.join(directory, "config.json"), config_text.encode("utf-8"))


def _split_shards(tensors: Dict[str, torch.Tensor], max_bytes: Optional[int]):
    if not max_bytes:
        return [tensors]
    shards, current, size = [], {}, 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = t
        size += nbytes
    shards.append(current)
    return shards
