"""Import guard: fail with one clear sentence when a dependency of this integration is missing.

Covered by ``tests/test_connectors.py::test_missing_framework_gives_install_hint``.
"""
from __future__ import annotations

INSTALL_HINT = "pip install 'hybridrag[langchain]'"

try:
    import langchain_core  # noqa: F401
except ImportError as exc:
    raise ImportError(f"langchain_hybridrag needs langchain-core, which is not installed: {INSTALL_HINT}") from exc

try:
    import hybridrag  # noqa: F401
except ImportError as exc:
    raise ImportError("langchain_hybridrag needs hybridrag, which is not installed: pip install hybridrag") from exc
