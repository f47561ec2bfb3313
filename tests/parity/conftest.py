"""Parity tests against the reference implementation (PyPI ``voxcpm==2.0.3``).

They run only where ``voxcpm`` is importable (see ``tests/parity/run.sh``, which makes a throwaway
venv for them) and are skipped otherwise. torchaudio and librosa are imported by the reference at
module level but not needed on the tested paths, so small stubs stand in when they are missing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_STUBS = Path(__file__).parent / "_stubs"
for _name in ("torchaudio", "librosa"):
    if importlib.util.find_spec(_name) is None:
        sys.path.insert(0, str(_STUBS))
        break

HAVE_REFERENCE = importlib.util.find_spec("voxcpm") is not None and importlib.util.find_spec("transformers") is not None


def pytest_collection_modifyitems(config, items):
    if HAVE_REFERENCE:
        return
    skip = pytest.mark.skip(reason="reference implementation voxcpm==2.0.3 not importable (tests/parity/run.sh)")
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(skip)
