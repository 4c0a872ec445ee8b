"""Dense encoder for any Hugging Face / sentence-transformers model folder.

Pooling (cls, mean or max), normalisation and the default max length are read
from the folder's sentence-transformers files (``modules.json``,
``1_Pooling/config.json``, a ``Normalize`` module, ``sentence_bert_config.json``)
when present; otherwise the arguments decide (default cls + normalise, as the
bge-*-v1.5 models are used). ``colbert=True`` returns the L2-normalised last
hidden states of the non-special tokens, so a dense-only model can also serve
late interaction.

Covered by ``tests/test_encoders_dense.py`` (parity with ``SentenceTransformer``).
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Sequence

import numpy as np

from hybridrag.encoders.base import (
    MAX_LENGTH_LIMIT,
    QUERY_CACHE_SIZE,
    EncodeOutput,
    QueryCache,
    check_batch_size,
    check_max_length,
    check_query_cache,
    check_texts,
    dtype_name,
    host_copy,
    is_int8,
    l2_normalize,
    load_body,
    load_tokenizer,
    model_capacity,
    pad_batch,
    resolve_device,
    resolve_dtype,
    resolve_model_folder,
    run_sorted_batches,
    tokenize,
)
from hybridrag.encoders.onnx import check_runtime
from hybridrag.errors import ModelLoadError

__all__ = ["DenseEncoder", "POOLING_MODES"]

#: Pooling modes this encoder implements.
POOLING_MODES = ("cls", "mean", "max")


def read_st_settings(folder: str) -> dict[str, Any]:
    """Read pooling / normalize / max_seq_length from a sentence-transformers folder.

    Returns only the keys the folder defines (``pooling``, ``normalize``, ``max_length``);
    ``{}`` for a plain Hugging Face folder. Raises ModelLoadError for a pooling mode
    this encoder does not implement.
    """
    found: dict[str, Any] = {}
    modules_path = os.path.join(folder, "modules.json")
    if not os.path.isfile(modules_path):
        return found
    try:
        with open(modules_path, encoding="utf-8") as fh:
            modules = json.load(fh)
        found["normalize"] = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
        for m in modules:
            if str(m.get("type", "")).endswith("Pooling"):
                with open(os.path.join(folder, m.get("path", ""), "config.json"), encoding="utf-8") as fh:
                    found["pooling"] = _pooling_from_st(json.load(fh), folder)
        st_cfg = os.path.join(folder, "sentence_bert_config.json")
        if os.path.isfile(st_cfg):
            with open(st_cfg, encoding="utf-8") as fh:
                max_seq = json.load(fh).get("max_seq_length")
            if max_seq is not None:
                found["max_length"] = int(max_seq)
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise ModelLoadError(f"unreadable sentence-transformers config in {folder}: {exc}") from exc
    return found


def _pooling_from_st(cfg: dict[str, Any], folder: str) -> str:
    if isinstance(cfg.get("pooling_mode"), str):
        modes = [cfg["pooling_mode"]]
    else:
        modes = [k[len("pooling_mode_"):] for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True]
    aliases = {"cls_token": "cls", "mean_tokens": "mean", "max_tokens": "max", "cls": "cls", "mean": "mean", "max": "max"}
    if len(modes) != 1 or modes[0] not in aliases:
        raise ModelLoadError(f"{folder}: pooling {modes} is not supported; DenseEncoder implements {POOLING_MODES}")
    return aliases[modes[0]]


def _requested(dtype: Any, torch_dtype: Any) -> str | None:
    """The dtype setting as persisted: None (the device's default), ``"int8"`` or a torch dtype name."""
    if dtype is None:
        return None
    return "int8" if is_int8(dtype) else dtype_name(torch_dtype)


class DenseEncoder:
    """A single-vector encoder (optionally also token vectors) over any encoder-only model."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str, device: str, dtype: Any, pooling: str,
                 normalize: bool, query_instruction: str | None, max_length: int,
                 requested_dtype: str | None = None, query_cache: int = QUERY_CACHE_SIZE,
                 runtime: str = "torch") -> None:
        """Wrap loaded parts; prefer :meth:`from_pretrained`."""
        self.model = model
        #: ``"torch"`` or ``"onnx"`` (the model is a :class:`hybridrag.encoders.onnx.OnnxModel`).
        self.runtime = runtime
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        self.dtype = dtype
        self.pooling = pooling
        self.normalize = normalize
        self.query_instruction = query_instruction
        self.max_length = max_length
        self.capacity = model_capacity(model.config)
        self._requested_dtype = requested_dtype
        #: Linear layers run in int8 (``dtype="int8"``, the CPU path).
        self.int8 = is_int8(requested_dtype)
        #: Cache of :meth:`encode_queries` results (``query_cache`` entries; 0 = off).
        self.query_cache = QueryCache(query_cache)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str], device: str | None = None, dtype: Any = None,
                        pooling: str | None = None, normalize: bool | None = None,
                        query_instruction: str | None = None, max_length: int | None = None,
                        query_cache: int = QUERY_CACHE_SIZE, runtime: str = "torch",
                        onnx_cache: str | os.PathLike[str] | None = None, **kw: Any) -> "DenseEncoder":
        """Load a model folder (local path or Hugging Face id).

        ``pooling``/``normalize``/``max_length``: None reads them from the folder's
        sentence-transformers config, falling back to cls, True and the model's limit
        (capped at 8192). An explicit value overrides the folder. ``query_instruction``
        is prepended to every query by :meth:`encode_queries` (e.g. ``"query: "`` for e5,
        ``"Represent this sentence for searching relevant passages: "`` for bge-en-v1.5).
        ``dtype="int8"`` is the CPU path: the model's Linear layers are quantized to int8 after
        loading (``device`` None then means the CPU; CUDA raises ConfigError). ``query_cache``:
        how many query encodings to keep (0 = off; see :class:`QueryCache`). ``runtime="onnx"``
        runs the model in ONNX Runtime on the CPU (fp32, or int8 with ``dtype="int8"``), exported
        on first use and kept in ``onnx_cache`` (see :mod:`hybridrag.encoders.onnx`).
        """
        if kw:
            raise TypeError(f"unexpected arguments for DenseEncoder.from_pretrained: {sorted(kw)}")
        if pooling is not None and pooling not in POOLING_MODES:
            raise ValueError(f"pooling {pooling!r} is not supported; choose one of {POOLING_MODES}")
        if normalize is not None and not isinstance(normalize, bool):
            raise TypeError(f"normalize must be a bool or None, got {normalize!r}")
        if query_instruction is not None and not isinstance(query_instruction, str):
            raise TypeError(f"query_instruction must be a str or None, got {type(query_instruction).__name__}")
        name = os.fspath(name_or_path) if isinstance(name_or_path, os.PathLike) else name_or_path
        query_cache = check_query_cache(query_cache)
        runtime = check_runtime(runtime, device, dtype)
        dev = resolve_device("cpu" if device is None and runtime == "onnx" else device, dtype)
        torch_dtype = resolve_dtype(dtype, dev)
        folder = resolve_model_folder(name)
        st = read_st_settings(folder)
        tokenizer = load_tokenizer(folder, name)
        model = load_body(folder, name, dtype, dev, runtime=runtime, onnx_cache=onnx_cache)
        capacity = model_capacity(model.config)
        if max_length is None:
            max_length = min(st.get("max_length", MAX_LENGTH_LIMIT), capacity, MAX_LENGTH_LIMIT)
        max_length = check_max_length(max_length, capacity)
        return cls(model, tokenizer, name=str(name), device=dev, dtype=torch_dtype,
                   pooling=pooling if pooling is not None else st.get("pooling", "cls"),
                   normalize=normalize if normalize is not None else st.get("normalize", True),
                   query_instruction=query_instruction, max_length=max_length,
                   requested_dtype=_requested(dtype, torch_dtype), query_cache=query_cache, runtime=runtime)

    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings of this encoder, a record that an index writes into its
        manifest (``models.encoder.config``). An index is reopened from its pipeline, not from this."""
        return {"type": "dense", "name_or_path": self.name, "dtype": self._requested_dtype, "runtime": self.runtime,
                "pooling": self.pooling, "normalize": self.normalize,
                "query_instruction": self.query_instruction, "max_length": self.max_length, "dim": self.dim}

    @property
    def dim(self) -> int:
        """Dense vector dimension (the model's hidden size)."""
        return int(self.model.config.hidden_size)

    @property
    def colbert_dim(self) -> int:
        """Token vector dimension for ``colbert=True`` (the hidden size)."""
        return self.dim

    def encode(self, texts: str | Sequence[str], *, max_length: int | None = None, batch_size: int = 32,
               dense: bool = True, sparse: bool = False, colbert: bool = False) -> EncodeOutput:
        """Encode passages: dense ``[n, dim]`` float32 and, with ``colbert=True``, one
        ``[n_tokens_i, dim]`` array of L2-normalised non-special token states per text.

        ``texts``: list/tuple of str (a bare str is one text). ``max_length``: None uses
        the encoder's default (sentence-transformers ``max_seq_length`` when the folder has one).
        """
        if sparse:
            raise ValueError("DenseEncoder has no sparse output; pass sparse=False (use BM25 or M3 for lexical weights)")
        texts = check_texts(texts)
        max_length = check_max_length(self.max_length if max_length is None else max_length, self.capacity)
        batch_size = check_batch_size(batch_size)
        out = EncodeOutput(dense=np.zeros((0, self.dim), dtype=np.float32) if dense else None,
                           colbert=[] if colbert else None)
        if not texts or not (dense or colbert):
            return out
        features = tokenize(self.tokenizer, texts, max_length, return_special_tokens_mask=colbert)
        results = run_sorted_batches(features, batch_size, lambda b: self._run(b, dense, colbert))
        if dense:
            out.dense = np.stack([r[0] for r in results]).astype(np.float32, copy=False)
        if colbert:
            out.colbert = [r[1] for r in results]
        return out

    def encode_queries(self, texts: str | Sequence[str], *, max_length: int | None = None, batch_size: int = 32,
                       dense: bool = True, sparse: bool = False, colbert: bool = False) -> EncodeOutput:
        """As :meth:`encode`, with ``query_instruction`` (if any) prepended to each text.

        Results are cached per exact text and settings (:attr:`query_cache`); the arrays
        returned are the caller's own copies."""
        if sparse:
            raise ValueError("DenseEncoder has no sparse output; pass sparse=False (use BM25 or M3 for lexical weights)")
        texts = check_texts(texts)
        check_batch_size(batch_size)
        if self.query_instruction:
            texts = [self.query_instruction + t for t in texts]
        settings = (self.max_length if max_length is None else max_length, dense, colbert)
        return self.query_cache.encode(
            texts, settings, (dense, False, colbert),
            lambda todo: self.encode(todo, max_length=max_length, batch_size=batch_size, dense=dense,
                                     colbert=colbert))

    def _run(self, features: list[dict[str, list[int]]], dense: bool,
             colbert: bool) -> Callable[[], list[tuple[Any, Any]]]:
        """Queue one forward pass; the returned function gives per example
        (pooled vector [dim], token vectors [t, dim]) once the pass is done."""
        import torch

        special = [f.get("special_tokens_mask") for f in features] if colbert else None
        features = [{k: v for k, v in f.items() if k != "special_tokens_mask"} for f in features]
        batch = pad_batch(self.tokenizer, features, self.device)
        with torch.inference_mode():
            hidden = self.model(**batch, return_dict=True).last_hidden_state
            mask = batch["attention_mask"]
            parts = {}
            if dense:
                parts["dense"] = self._pool(hidden, mask).float()
            if colbert:
                parts["tokens"] = l2_normalize(hidden).float()
            wait = host_copy(parts)

        def finish() -> list[tuple[Any, Any]]:
            got = wait()
            out = []
            for i in range(len(features)):
                tok = None
                if colbert and special is not None:
                    keep = np.asarray(special[i], dtype=bool) == 0
                    tok = got["tokens"][i, : len(keep)][keep]  # boolean indexing copies
                out.append((np.array(got["dense"][i]) if dense else None, tok))
            return out

        return finish

    def _pool(self, hidden: Any, mask: Any) -> Any:
        """Pool ``hidden`` [b, t, h] with ``mask`` [b, t] -> [b, h], then normalise if configured."""
        import torch

        m = mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "mean":
            pooled = (hidden * m).sum(dim=1) / torch.clamp(m.sum(dim=1), min=1e-9)
        else:  # max
            pooled = hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
        return l2_normalize(pooled) if self.normalize else pooled
