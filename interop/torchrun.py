"""`torchrun` with the Python 3.11 fix of torch_compat.py: the same arguments, e.g.

    python3 interop/torchrun.py --standalone --nproc_per_node 2 interop/train_torch.py --data SHARDS ...

Where plain torchrun works (PyTorch >= 2.0, or Python <= 3.10) this is the same as calling it.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import require_torch  # noqa: E402,F401
import torch_compat  # noqa: E402

torch_compat.fix_launcher()
from torch.distributed.run import main  # noqa: E402

if __name__ == "__main__":
    main()
