"""Two fixes for Debian's PyTorch 1.13 on Python 3.11, applied only where they are needed.

1. torchrun / `python -m torch.distributed.run` fail before starting any rank with
   `AttributeError: 'NoneType' object has no attribute 'get'` in `to_map`. Cause: the launcher turns
   `--redirects 0` and `--tee 0` (the defaults) into `Std` flags by iterating `for s in Std` and picking the
   member equal to the number; since Python 3.11, iterating an IntFlag yields only its canonical
   (single-bit) members, so `Std.NONE` (0) and `Std.ALL` (3) are never found and `from_str` returns None.
   `fix_launcher()` makes `Std.from_str` build the flag directly (`Std(int(v))`), which is what the
   regex-checked input means; interop/torchrun.py is the launcher with that fix (same arguments).
   PyTorch 2.0's launcher has its own fix; with it, or with Python <= 3.10, plain torchrun works.

2. `import torch.distributed.fsdp` fails with `ValueError: mutable default <class 'TensorProperties'>
   for field tensor_properties is not allowed: use default_factory`: Python 3.11's dataclasses refuse a
   default whose class is unhashable, and torch 1.13's ShardedTensorMetadata has
   `tensor_properties: TensorProperties = field(default=TensorProperties())`. `allow_fsdp_import()`
   imports FSDP while such a default is turned into an equal `default_factory` (a fresh copy per
   instance, which is what the field means), then restores dataclasses.
"""
from __future__ import annotations

import dataclasses
import re
import sys


def fix_launcher() -> None:
    from torch.distributed.elastic.multiprocessing import api
    if sys.version_info < (3, 11) or api.Std.from_str("0") is not None:
        return
    std = api.Std

    def from_str(vm: str):
        if re.match(api._VALUE_REGEX, vm):
            return std(int(vm))
        if re.match(api._MAPPING_REGEX, vm):
            return {int(i): std(int(v)) for i, v in (m.split(":") for m in vm.split(","))}
        raise ValueError(f"{vm} does not match: <{api._VALUE_REGEX}> or <{api._MAPPING_REGEX}>")

    std.from_str = staticmethod(from_str)


def allow_fsdp_import() -> None:
    if "torch.distributed.fsdp" in sys.modules:
        return
    original = dataclasses._get_field

    def get_field(cls, name, annotation, *rest):
        default = cls.__dict__.get(name, dataclasses.MISSING)
        if isinstance(default, dataclasses.Field) and default.default is not dataclasses.MISSING \
                and dataclasses.is_dataclass(default.default) and type(default.default).__hash__ is None:
            value = default.default
            setattr(cls, name, dataclasses.field(default_factory=lambda v=value: dataclasses.replace(v)))
        return original(cls, name, annotation, *rest)

    dataclasses._get_field = get_field
    try:
        import torch.distributed.fsdp  # noqa: F401
    finally:
        dataclasses._get_field = original
