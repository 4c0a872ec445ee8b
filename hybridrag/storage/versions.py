"""Versions of an index's pipeline: the search settings it answers with, changed without re-indexing.

What a pipeline says about the stored data (models, chunking, analyser, index types) is fixed
when the index is created; the settings a search reads (:data:`SEARCH_SETTINGS`: fusion method,
weights and ``rrf_k``, each first stage's depth, rerank on/off, its depth and budget) are not.
Changing them makes a new **version** of the pipeline, a commit of its own: the manifest keeps
every version (``pipeline_versions``: number, time, note, settings) and which one is active
(``pipeline_version``; ``pipeline`` is the full pipeline with the active settings). The old
versions stay selectable: per call (:meth:`PipelineVersion.options`, as ``search(...,
options=...)``) or for everyone (:meth:`HybridIndex.use_pipeline_version`, a commit).
``hybridrag tune`` adds the version it chose; ``hybridrag pipeline DIR`` lists them.

An index written before versions existed reads as one version, 1, with its pipeline's settings.
Tested in ``tests/test_tune.py``.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hybridrag.config import STORED_DEFAULTS, PipelineConfig, pipeline_differences
from hybridrag.errors import ConfigError, IndexFormatError

#: The pipeline settings a version may change, as ``section.key`` (what a search reads, never
#: what the stored data depends on). A search call can override each of them too.
SEARCH_SETTINGS: tuple[str, ...] = (
    "fusion.method", "fusion.weights", "fusion.rrf_k", "dense.depth", "sparse.depth", "bm25.depth",
    "rerank.enabled", "rerank.k", "rerank.budget_ms")


def settings_of(cfg: PipelineConfig) -> dict[str, Any]:
    """The :data:`SEARCH_SETTINGS` of ``cfg`` (depths of its enabled first stages only)."""
    out: dict[str, Any] = {}
    for dotted in SEARCH_SETTINGS:
        section, key = dotted.split(".")
        if key == "depth" and section not in cfg.first_stage_modes:
            continue
        value = getattr(getattr(cfg, section), key)
        out[dotted] = dict(value) if isinstance(value, Mapping) else value
    return out


def with_settings(cfg: PipelineConfig, settings: Mapping[str, Any]) -> PipelineConfig:
    """``cfg`` with ``settings`` (``section.key`` -> value) applied and checked; ``ConfigError``
    names a key that is not a search setting or a value the pipeline refuses."""
    if not isinstance(settings, Mapping):
        raise ConfigError(f"settings must be a dict of 'section.key' -> value, got {type(settings).__name__}")
    bad = [k for k in settings if k not in SEARCH_SETTINGS]
    if bad:
        raise ConfigError(f"{bad}: a pipeline version changes only search settings {list(SEARCH_SETTINGS)}; "
                          "the others decide what is stored (create a new index for them)")
    for dotted in settings:
        section = dotted.split(".")[0]
        if dotted.endswith(".depth") and section not in cfg.first_stage_modes:
            raise ConfigError(f"{dotted!r}: {section} is not a first stage of this index "
                              f"(first stages: {cfg.first_stage_modes})")
    return cfg.replace(**dict(settings))


@dataclass(frozen=True)
class PipelineVersion:
    """One version of an index's pipeline: ``settings`` (``section.key`` -> value, every
    :data:`SEARCH_SETTINGS` entry of the index), when and why it was made, whether it is active."""

    version: int
    created: str
    note: str
    settings: dict[str, Any]
    active: bool = False

    def options(self, k: int = 10, filters: Mapping[str, Any] | None = None) -> Any:
        """A :class:`~hybridrag.search.options.SearchOptions` that searches with this version's
        settings whichever version is active: ``index.search(q, options=v.options(k=5))``."""
        from hybridrag.search.options import SearchOptions

        s = self.settings
        depth = {dotted.split(".")[0]: d for dotted, d in s.items() if dotted.endswith(".depth")}
        return SearchOptions(k=k, filters=filters, fusion=s["fusion.method"], weights=s["fusion.weights"],
                             rrf_k=s["fusion.rrf_k"], depth=depth or None, rerank=s["rerank.enabled"],
                             rerank_k=s["rerank.k"], budget_ms=s["rerank.budget_ms"])


def history(manifest: Mapping[str, Any] | None, cfg: PipelineConfig) -> tuple[list[dict[str, Any]], int]:
    """The versions a manifest records and the active one; a manifest from before versions (or
    none yet) has one, 1, with the settings of ``cfg``."""
    m = manifest or {}
    versions = m.get("pipeline_versions")
    if versions is not None:
        ok = isinstance(versions, list) and versions and all(
            isinstance(v, dict) and type(v.get("version")) is int and isinstance(v.get("settings"), dict)
            for v in versions)
        active = m.get("pipeline_version")
        if not ok or active not in [v["version"] for v in versions]:
            raise IndexFormatError(f"the manifest's pipeline_versions / pipeline_version are malformed "
                                   f"({str(versions)[:200]!r}, active {active!r})")
        return [dict(v) for v in versions], int(active)
    return [{"version": 1, "created": m.get("created") or _now(), "note": "as created",
             "settings": settings_of(cfg)}], 1


def carried(manifest: Mapping[str, Any] | None, cfg: PipelineConfig) -> tuple[list[dict[str, Any]], int]:
    """What a commit of an index with pipeline ``cfg`` records: the versions of ``manifest``, and a
    new one for ``cfg``'s settings when they are not the active version's (a rebuild given another
    pipeline)."""
    versions, active = history(manifest, cfg)
    mine = settings_of(cfg)
    if next((v["settings"] for v in versions if int(v["version"]) == active), None) != mine:
        versions.append(new_version(versions, mine, "the pipeline given"))
        active = versions[-1]["version"]
    return versions, active


def as_versions(manifest: Mapping[str, Any] | None, cfg: PipelineConfig) -> list[PipelineVersion]:
    versions, active = history(manifest, cfg)
    return [PipelineVersion(int(v["version"]), str(v.get("created", "")), str(v.get("note", "")),
                            dict(v["settings"]), int(v["version"]) == active) for v in versions]


def new_version(versions: list[dict[str, Any]], settings: Mapping[str, Any], note: str) -> dict[str, Any]:
    return {"version": max(int(v["version"]) for v in versions) + 1, "created": _now(), "note": note,
            "settings": dict(settings)}


def search_differences(stored: PipelineConfig, given: PipelineConfig,
                       versions: list[PipelineVersion]) -> list[str]:
    """:func:`~hybridrag.config.pipeline_differences` of an index's pipeline and one a user gave,
    less the search settings when the given pipeline's equal one of the index's versions (a
    pipeline file an index was created with still names it after ``hybridrag tune``)."""
    diff = [d for d in pipeline_differences(stored, given) if not _only_a_newer_default(d, given)]
    mine = settings_of(given)
    if any(v.settings == mine for v in versions):
        diff = [d for d in diff if d.split(" ")[0] not in SEARCH_SETTINGS]
    return diff


def _only_a_newer_default(diff: str, given: PipelineConfig) -> bool:
    """Whether ``diff`` (``"section.key (...)"``) is a setting whose default changed since the
    index was made (:data:`~hybridrag.config.STORED_DEFAULTS`) and which the given pipeline
    leaves at today's default: it asks for nothing the index lacks (the index keeps what it was
    made with), so the pipeline an older index was made with still names it."""
    section, _, key = diff.split(" ")[0].partition(".")
    if (section, key) not in STORED_DEFAULTS:
        return False
    return getattr(getattr(given, section), key) == getattr(getattr(PipelineConfig(), section), key)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
