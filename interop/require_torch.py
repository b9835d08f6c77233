"""Imported by the interop scripts before torch: without PyTorch they end with one line naming the
Python that lacks it and how to pick one that has it, instead of an ImportError traceback."""
import sys

try:
    import torch  # noqa: F401
except (ImportError, OSError) as err:  # OSError: torch found but a shared library it needs is not
    sys.exit(f"error: PyTorch cannot be imported by {sys.executable} ({err}); run this with a Python "
             "that has it (check: python3 -c 'import torch'; Debian: apt install python3-torch "
             "libopenblas0-pthread, then /usr/bin/python3)")
