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
    # The engine (numpy, faiss, numba: ~1 s of imports, python -X importtime) loads on first
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


# --------------------------------------------------------------------------- quiet model loading
# In a child process, to see exactly what reaches the terminal: transformers' log handler
# writes to the stderr it found at import, which pytest's capfd does not see.

_LOAD_ALL = """
import sys
from transformers.utils import logging as hf_logging
from hybridrag import HybridIndex, load_pipeline
from hybridrag.encoders.dense import DenseEncoder
from hybridrag.encoders.m3 import M3Encoder
from hybridrag.rerankers.cross_encoder import CrossEncoderReranker

minilm, bert, m3, reranker, index = sys.argv[1:]
for folder in (minilm, bert):
    DenseEncoder.from_pretrained(folder, device="cpu")
M3Encoder.from_pretrained(m3, device="cpu")
CrossEncoderReranker.from_pretrained(reranker, device="cpu")
pipeline = load_pipeline("offline").to_dict()   # all-MiniLM-L6-v2, as minilm
pipeline["rerank"].update(enabled=True, model=reranker)
with HybridIndex.create(index, pipeline) as idx:
    idx.add([{"id": "a", "text": "hello world"}])
with HybridIndex.load(index) as idx:
    assert idx.search("hello", k=1)[0].doc_id == "a"
# the user's transformers settings are as they were: default verbosity, progress bars on
assert hf_logging.get_verbosity() == hf_logging.WARNING and hf_logging.is_progress_bar_enabled()
"""


def _run(code: str, *args: object) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE"))}
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    return r


def test_model_loading_is_quiet(tmp_path, minilm_dir, bert_dir, m3_dir, reranker_dir):
    """Checkpoints with weights the model does not build (the real MiniLM's pooler; the tiny
    BERT and M3 were saved with one) load without transformers' load report or progress bar,
    through the encoders, the reranker and the index."""
    r = _run(_LOAD_ALL, minilm_dir, bert_dir, m3_dir, reranker_dir, tmp_path / "idx")
    assert (r.stdout, r.stderr) == ("", "")


def _without_weight(src, dst, drop):
    """A copy of the model folder ``src`` whose checkpoint lacks the weights matching ``drop``."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    kept = {k: v for k, v in weights.items() if drop not in k}
    assert len(kept) < len(weights)
    save_file(kept, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_missing_weights_are_still_reported(tmp_path, bert_dir, reranker_dir):
    bert = _without_weight(bert_dir, tmp_path / "bert", "layer.0.attention.self.query")
    rr = _without_weight(reranker_dir, tmp_path / "rr", "classifier.out_proj")
    r = _run("import sys; from hybridrag.encoders.dense import DenseEncoder;"
             "from hybridrag.rerankers.cross_encoder import CrossEncoderReranker;"
             "DenseEncoder.from_pretrained(sys.argv[1], device='cpu'); print('--', file=sys.stderr, flush=True);"
             "CrossEncoderReranker.from_pretrained(sys.argv[2], device='cpu')", bert, rr)
    encoder_err, reranker_err = r.stderr.split("--\n")
    assert "layer.0.attention.self.query" in encoder_err
    assert "classifier.out_proj" in reranker_err


# --------------------------------------------------------------------------- models by Hub id

_LOAD_BY_ID = """
import sys
from hybridrag.encoders.dense import DenseEncoder
from hybridrag.errors import ModelLoadError
from hybridrag.rerankers.cross_encoder import CrossEncoderReranker

for load in (CrossEncoderReranker.from_pretrained, DenseEncoder.from_pretrained):
    try:
        load("hybridrag-test/no-such-model", device="cpu")
    except ModelLoadError as e:
        print(" ".join(str(e).split()))
    else:
        sys.exit("loaded a model that does not exist")
"""


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "hub-unreachable"])
def test_uncached_hub_id_fails_at_once(tmp_path, offline):
    """A Hub id that is not cached, with no way to fetch it, is a ModelLoadError naming the id and
    the fix, at once: not after transformers' retries (~25 s a file). The Hub is a closed local
    port here, so the test never reaches the network; the timeout is what fails a retrying load."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_ENDPOINT="http://127.0.0.1:9")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    r = subprocess.run([sys.executable, "-c", _LOAD_BY_ID], capture_output=True, text=True, env=env, timeout=40)
    assert r.returncode == 0, r.stderr
    messages = r.stdout.splitlines()
    assert len(messages) == 2
    for m in messages:
        assert "'hybridrag-test/no-such-model'" in m and "local model folder" in m and "hf download" in m
        assert ("HF_HUB_OFFLINE is set" in m) == offline
