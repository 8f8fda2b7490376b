"""``leapi_server.engine.restoration_spec``, importable from the training environment too.

The training environment (``make train``) has PyTorch but not the project's packages: there the module is
loaded straight from its file, which is kept free of heavy imports for this. In the project's own
environment (tests, benchmark) it is the ordinary import.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SPEC_FILE = (
    Path(__file__).resolve().parents[1]
    / "packages"
    / "leapi-server"
    / "src"
    / "leapi_server"
    / "engine"
    / "restoration_spec.py"
)

try:
    from leapi_server.engine import restoration_spec
except ImportError:  # leapi-server not installed here (its __init__ reads its distribution's version)
    _loader = importlib.util.spec_from_file_location("restoration_spec", SPEC_FILE)
    assert _loader is not None and _loader.loader is not None
    restoration_spec = importlib.util.module_from_spec(_loader)
    sys.modules["restoration_spec"] = restoration_spec
    _loader.loader.exec_module(restoration_spec)

__all__ = ["restoration_spec"]
