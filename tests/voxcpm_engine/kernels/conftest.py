"""On a CUDA machine every kernel test here runs its kernels compiled on the GPU: mark them ``gpu``.

These modules pick their device themselves (``interpret.DEVICE``): the Triton interpreter on the
CPU, the compiled kernels on CUDA. Without the mark, ``pytest -m gpu`` (the device's test command)
would deselect the one place the fused kernels are checked compiled.
"""

from __future__ import annotations

import pytest
import torch


def pytest_itemcollected(item: pytest.Item) -> None:
    """Add the ``gpu`` mark to each test of this folder when CUDA is present (before ``-m`` selects)."""
    if torch.cuda.is_available():
        item.add_marker(pytest.mark.gpu)
