"""The package as a user meets it: import, public API, what the wheel holds, quiet loading."""
import logging
import os
import subprocess
import sys
import zipfile

import _install
import pytest


def test_import_configures_no_logging():
    # A library must not install handlers or change levels at import time.
    code = (
        "import logging; root = logging.getLogger(); before = (list(root.handlers), root.level);"
        "import hybridrag; assert (list(root.handlers), root.level) == before;"
        "hs = logging.getLogger('hybridrag').handlers;"
        "assert all(isinstance(h, logging.NullHandler) for h in hs), hs"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_errors_are_documented_builtin_subclasses():
    import hybridrag

    assert issubclass(hybridrag.ConfigError, ValueError)
    assert issubclass(hybridrag.IndexFormatError, ValueError)
    assert issubclass(hybridrag.ModelLoadError, OSError)
    assert issubclass(hybridrag.IndexLockedError, RuntimeError)
    assert logging.getLogger("hybridrag").level == logging.NOTSET


# --------------------------------------------------------------------------- the public API


def test_public_api_from_the_package_root():
    import hybridrag
    from hybridrag import (AddResult, Chunk, ConfigError, Document, DocumentError, Hit, HybridIndex,
                           HybridRAGError, IndexFormatError, IndexLockedError, ModelLoadError,
                           PipelineConfig, load_pipeline)
    from hybridrag import config, errors, index, types

    assert (HybridIndex, AddResult) == (index.HybridIndex, index.AddResult)
    assert (PipelineConfig, load_pipeline) == (config.PipelineConfig, config.load_pipeline)
    assert (Hit, Document, Chunk) == (types.Hit, types.Document, types.Chunk)
    assert (ConfigError, DocumentError, HybridRAGError, IndexFormatError, IndexLockedError, ModelLoadError) == (
        errors.ConfigError, errors.DocumentError, errors.HybridRAGError, errors.IndexFormatError,
        errors.IndexLockedError, errors.ModelLoadError)
    assert set(hybridrag.__all__) <= set(dir(hybridrag))
    with pytest.raises(AttributeError, match="no_such_name"):
        hybridrag.no_such_name  # noqa: B018


def test_import_hybridrag_stays_light():
    # The engine (numpy, faiss, numba: ~0.8 s of imports, python -X importtime) loads on first
    # use of HybridIndex, not on `import hybridrag`; torch only when a model is loaded.
    code = ("import sys, hybridrag; heavy = [m for m in ('numpy', 'torch', 'hybridrag.index') if m in sys.modules];"
            "assert not heavy, heavy; from hybridrag import HybridIndex; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- packaging


def test_pyproject_lists_every_package():
    # pyproject lists its packages (to map pipelines/ into the wheel): a new subpackage
    # left off the list would be missing from the wheel.
    import tomllib

    declared = set(tomllib.loads((_install.ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(_install.ROOT).parts)
             for p in (_install.ROOT / "hybridrag").rglob("__init__.py")}
    assert found <= declared
    assert declared - found == {"hybridrag.data", "hybridrag.pipelines"}


def test_wheel_ships_pipelines_and_demo_data(installed_wheel):
    with zipfile.ZipFile(installed_wheel.wheel) as whl:
        names = set(whl.namelist())
        for toml in sorted((_install.ROOT / "pipelines").glob("*.toml")):
            assert whl.read(f"hybridrag/pipelines/{toml.name}") == toml.read_bytes()
    sample = _install.ROOT / "hybridrag" / "data" / "scifact-sample"
    files = [p.relative_to(_install.ROOT).as_posix() for p in sample.rglob("*") if p.is_file()]
    assert files and set(files) <= names
    assert {"hybridrag/pipelines/offline.toml", "hybridrag/pipelines/m3.toml", "hybridrag/pipelines/bm25-dense.toml",
            "hybridrag/pipelines/milvus.toml", "hybridrag/py.typed"} <= names


def _readme_library_example() -> str:
    readme = (_install.ROOT / "README.md").read_text()
    section = readme.split("## Use it as a library", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_installed_wheel_runs_the_readme_example(installed_wheel, tmp_path):
    """As a new user after `pip install hybridrag`: from a folder that is not the checkout, the
    README's library example runs (a named pipeline, "offline", resolves from the package)."""
    venv = installed_wheel.python.parents[1]
    prelude = ("import hybridrag, pathlib\n"
               f"assert pathlib.Path(hybridrag.__file__).is_relative_to({str(venv)!r}), hybridrag.__file__\n")
    (tmp_path / "example.py").write_text(prelude + _readme_library_example())
    r = subprocess.run([str(installed_wheel.python), "example.py"], cwd=tmp_path, env=_install.clean_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    assert "doc_id='doc-2'" in r.stdout and (tmp_path / "my-index" / "manifest.json").is_file()
    assert r.stderr == ""   # no load report, no progress bar


def test_editable_install_resolves_named_pipelines(tmp_path):
    # `make setup` installs editable: the pipelines then come from the checkout's pipelines/
    src = _install.copy_source(tmp_path / "src")
    py = _install.fresh_venv(tmp_path / "venv")
    _install.pip_install(py, "-e", str(src))
    code = ("import hybridrag; from pathlib import Path; from hybridrag.config import load_pipeline, shipped_pipelines;"
            "from hybridrag.demo import SAMPLE;"
            f"assert Path(hybridrag.__file__).parent == Path({str(src / 'hybridrag')!r}), hybridrag.__file__;"
            f"assert shipped_pipelines()['offline'] == Path({str(src / 'pipelines' / 'offline.toml')!r});"
            "assert load_pipeline('offline').name and (SAMPLE / 'corpus.jsonl').is_file()")
    subprocess.run([str(py), "-c", code], cwd=tmp_path, env=_install.clean_env(), check=True, timeout=300)
