"""BGE-M3 encoder: one forward pass gives a dense vector, lexical weights and
ColBERT token vectors, numerically equal to FlagEmbedding's ``BGEM3FlagModel``.

Reads a FlagEmbedding-layout folder (XLM-RoBERTa weights + tokenizer +
``colbert_linear.pt`` + ``sparse_linear.pt``), locally or by Hugging Face id.
Covered by ``tests/test_encoders_m3.py`` (parity tests marked ``parity``).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence, cast

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

__all__ = ["M3Encoder", "colbert_score", "dense_score", "lexical_score"]


def dense_score(q: np.ndarray, p: np.ndarray) -> float:
    """Inner product of two dense vectors ``[d]`` (cosine when both are normalised)."""
    return float(np.dot(np.asarray(q, dtype=np.float32), np.asarray(p, dtype=np.float32)))


def lexical_score(q_weights: dict[int, float], p_weights: dict[int, float]) -> float:
    """Sum over token ids present in both dicts of the product of their weights."""
    if len(p_weights) < len(q_weights):
        q_weights, p_weights = p_weights, q_weights
    return float(sum(w * p_weights[t] for t, w in q_weights.items() if t in p_weights))


def colbert_score(q_vecs: np.ndarray, p_vecs: np.ndarray) -> float:
    """ColBERT MaxSim: for each query row ``[n_q, d]`` the max inner product over passage
    rows ``[n_p, d]``, summed and divided by ``n_q``. 0.0 when either side has no rows."""
    q = np.asarray(q_vecs, dtype=np.float32)
    p = np.asarray(p_vecs, dtype=np.float32)
    if q.shape[0] == 0 or p.shape[0] == 0:
        return 0.0
    return float((q @ p.T).max(axis=1).sum() / q.shape[0])


class M3Encoder:
    """BGE-M3 (or any FlagEmbedding M3-layout folder) as a tri-modal encoder.

    Build with :meth:`from_pretrained`. Outputs (see :class:`EncodeOutput`):

    * dense: CLS hidden state, L2-normalised, float32 ``[n, dim]``;
    * sparse: ``relu(sparse_linear(h))`` per token with cls/eos/pad/unk ids dropped,
      weights > 0 only, a repeated id keeping its max weight: ``{token_id: weight}``;
    * colbert: ``colbert_linear(h[:, 1:])`` over the text's tokens after ``<s>``
      (the trailing ``</s>`` row included), each row L2-normalised: ``[n_tokens - 1, colbert_dim]``.
    """

    def __init__(self, model: Any, tokenizer: Any, colbert_linear: Any, sparse_linear: Any, *,
                 name: str, device: str, dtype: Any, requested_dtype: str | None = None,
                 query_cache: int = QUERY_CACHE_SIZE, runtime: str = "torch") -> None:
        """Wrap loaded parts; prefer :meth:`from_pretrained`."""
        self.model = model
        #: ``"torch"`` or ``"onnx"`` (XLM-R runs in ONNX Runtime; the two heads stay in torch).
        self.runtime = runtime
        self.tokenizer = tokenizer
        self.colbert_linear = colbert_linear
        self.sparse_linear = sparse_linear
        self.name = name
        self.device = device
        self.dtype = dtype
        self._requested_dtype = requested_dtype
        #: XLM-R's Linear layers run in int8 (``dtype="int8"``, the CPU path; the two heads stay fp32).
        self.int8 = is_int8(requested_dtype)
        #: Cache of :meth:`encode_queries` results (``query_cache`` entries; 0 = off).
        self.query_cache = QueryCache(query_cache)
        self.capacity = model_capacity(model.config)
        ids = [tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id]
        self._unused_ids = frozenset(int(i) for i in ids if i is not None)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str] = "BAAI/bge-m3", device: str | None = None,
                        dtype: Any = None, query_cache: int = QUERY_CACHE_SIZE, runtime: str = "torch",
                        onnx_cache: str | os.PathLike[str] | None = None, **kw: Any) -> "M3Encoder":
        """Load an M3 folder (local path or Hugging Face id).

        ``device``: None picks CUDA when available. ``dtype``: None gives fp16 on CUDA
        and fp32 on CPU; ``"bf16"``/``"fp16"``/``"fp32"`` or a torch dtype choose. ``"int8"`` is
        the CPU path: XLM-R's Linear layers are quantized to int8 after loading (the small
        colbert/sparse heads stay fp32; ``device`` None then means the CPU, CUDA raises
        ConfigError). ``query_cache``: how many query encodings to keep (0 = off).
        ``runtime="onnx"`` runs XLM-R in ONNX Runtime on the CPU (fp32, or int8 with
        ``dtype="int8"``; the heads stay in torch, fp32), exported on first use and kept in
        ``onnx_cache`` (see :mod:`hybridrag.encoders.onnx`).
        Raises :class:`ModelLoadError` when the folder, weights or a head file is missing.
        """
        if kw:
            raise TypeError(f"unexpected arguments for M3Encoder.from_pretrained: {sorted(kw)}")
        name = os.fspath(name_or_path) if isinstance(name_or_path, os.PathLike) else name_or_path
        query_cache = check_query_cache(query_cache)
        runtime = check_runtime(runtime, device, dtype)
        dev = resolve_device("cpu" if device is None and runtime == "onnx" else device, dtype)
        torch_dtype = resolve_dtype(dtype, dev)
        folder = resolve_model_folder(name)
        for head in ("colbert_linear.pt", "sparse_linear.pt"):
            if not os.path.isfile(os.path.join(folder, head)):
                raise ModelLoadError(
                    f"{name!r} is not a BGE-M3 folder: missing {head} in {folder} "
                    f"(an M3 folder holds the XLM-R weights plus colbert_linear.pt and sparse_linear.pt)"
                )
        tokenizer = load_tokenizer(folder, name)
        model = load_body(folder, name, dtype, dev, runtime=runtime, onnx_cache=onnx_cache)
        colbert_linear = _load_linear(os.path.join(folder, "colbert_linear.pt"), name, torch_dtype, dev)
        sparse_linear = _load_linear(os.path.join(folder, "sparse_linear.pt"), name, torch_dtype, dev)
        hidden = model.config.hidden_size
        if colbert_linear.in_features != hidden or sparse_linear.in_features != hidden or sparse_linear.out_features != 1:
            raise ModelLoadError(
                f"{name!r}: head shapes do not fit hidden size {hidden} (colbert {colbert_linear.in_features}->"
                f"{colbert_linear.out_features}, sparse {sparse_linear.in_features}->{sparse_linear.out_features})"
            )
        return cls(model, tokenizer, colbert_linear, sparse_linear, name=str(name), device=dev, dtype=torch_dtype,
                   requested_dtype=None if dtype is None else "int8" if is_int8(dtype) else dtype_name(torch_dtype),
                   query_cache=query_cache, runtime=runtime)

    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings of this encoder, a record that an index writes into its
        manifest (``models.encoder.config``). An index is reopened from its pipeline, not from this."""
        return {"type": "m3", "name_or_path": self.name, "dtype": self._requested_dtype, "runtime": self.runtime,
                "dim": self.dim, "colbert_dim": self.colbert_dim}

    @property
    def dim(self) -> int:
        """Dense vector dimension (1024 for BAAI/bge-m3)."""
        return int(self.model.config.hidden_size)

    @property
    def colbert_dim(self) -> int:
        """ColBERT token vector dimension."""
        return int(self.colbert_linear.out_features)

    # ------------------------------------------------------------------ encoding

    def encode(self, texts: str | Sequence[str], *, max_length: int | None = None, batch_size: int = 16,
               dense: bool = True, sparse: bool = True, colbert: bool = True) -> EncodeOutput:
        """Encode passages. ``texts``: a list/tuple of str (a bare str is one text).

        ``max_length`` (tokens, special tokens included): None means the model's limit
        capped at 8192 (8192 for BAAI/bge-m3); a value above what the model can embed
        raises ValueError. Texts are tokenized once, sorted by length and batched with
        dynamic padding; outputs come back in input order.
        """
        texts = check_texts(texts)
        if max_length is None:
            max_length = min(MAX_LENGTH_LIMIT, self.capacity)
        max_length = check_max_length(max_length, self.capacity)
        batch_size = check_batch_size(batch_size)
        out = EncodeOutput(
            dense=np.zeros((0, self.dim), dtype=np.float32) if dense else None,
            sparse=[] if sparse else None,
            colbert=[] if colbert else None,
        )
        if not texts or not (dense or sparse or colbert):
            return out
        features = tokenize(self.tokenizer, texts, max_length, return_token_type_ids=False)
        results = run_sorted_batches(features, batch_size, lambda b: self._run(b, dense, sparse, colbert))
        if dense:
            out.dense = np.stack([r[0] for r in results]).astype(np.float32, copy=False)
        if sparse:
            out.sparse = [r[1] for r in results]
        if colbert:
            out.colbert = [r[2] for r in results]
        return out

    def encode_queries(self, texts: str | Sequence[str], *, max_length: int = 512, batch_size: int = 16,
                       dense: bool = True, sparse: bool = True, colbert: bool = True) -> EncodeOutput:
        """Encode queries: as :meth:`encode` with ``max_length=512`` (BGE-M3 uses no query instruction).

        Results are cached per exact text and settings (:attr:`query_cache`); the arrays
        returned are the caller's own copies."""
        texts = check_texts(texts)
        check_batch_size(batch_size)
        return self.query_cache.encode(
            texts, (max_length, dense, sparse, colbert), (dense, sparse, colbert),
            lambda todo: self.encode(todo, max_length=max_length, batch_size=batch_size, dense=dense,
                                     sparse=sparse, colbert=colbert))

    def _run(self, features: list[dict[str, list[int]]], dense: bool, sparse: bool,
             colbert: bool) -> Callable[[], list[tuple[Any, Any, Any]]]:
        """Queue one forward pass over a padded batch; the returned function gives
        per-example (dense [d], sparse dict, colbert [t, c]) once the pass is done."""
        import torch

        batch = pad_batch(self.tokenizer, features, self.device)
        with torch.inference_mode():
            hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                return_dict=True).last_hidden_state
            mask = batch["attention_mask"]
            parts = {"lengths": mask.sum(dim=1)}
            if dense:
                parts["dense"] = l2_normalize(hidden[:, 0]).float()
            if sparse:
                parts["sparse"] = torch.relu(self.sparse_linear(hidden)).squeeze(-1).float()
                parts["ids"] = batch["input_ids"]
            if colbert:
                vecs = self.colbert_linear(hidden[:, 1:]) * mask[:, 1:, None].to(hidden.dtype)
                parts["colbert"] = l2_normalize(vecs).float()
            wait = host_copy(parts)

        def finish() -> list[tuple[Any, Any, Any]]:
            got = wait()
            out = []
            for i, n in enumerate(got["lengths"].tolist()):
                lex = self._lexical(got["ids"][i, :n], got["sparse"][i, :n]) if sparse else None
                col = np.array(got["colbert"][i, : max(n - 1, 0)]) if colbert else None
                out.append((np.array(got["dense"][i]) if dense else None, lex, col))
            return out

        return finish

    def _lexical(self, ids: np.ndarray, weights: np.ndarray) -> dict[int, float]:
        """Token ids and their relu weights ``[n]`` -> {id: max weight}, special ids and zeros dropped."""
        result: dict[int, float] = {}
        unused = self._unused_ids
        for tok, w in zip(ids.tolist(), weights.tolist()):
            if w > 0 and tok not in unused and w > result.get(tok, 0.0):
                result[tok] = w
        return result

    # ------------------------------------------------------------------ scoring

    def compute_score(self, pairs: Sequence[tuple[str, str]] | tuple[str, str],
                      weights: Sequence[float] = (0.4, 0.2, 0.4), max_query_length: int = 512,
                      max_passage_length: int | None = None, batch_size: int = 256) -> dict[str, Any]:
        """Score (query, passage) pairs in every mode, as FlagEmbedding's
        ``BGEM3FlagModel.compute_score`` defines them.

        ``weights`` = (dense, sparse, colbert). Returns ``{"dense", "sparse", "colbert",
        "sparse+dense", "colbert+sparse+dense"}`` -> list of floats (floats for one bare pair).
        ``max_passage_length`` None means the model's limit capped at 8192.

        Reference quirk kept for parity: FlagEmbedding pads the passages of each group
        of ``batch_size`` pairs together and its MaxSim also sees the zero vectors of
        padding, so a passage shorter than the longest in its group gets a per-query-token
        maximum of at least 0. (Trained BGE-M3 maxima are positive, so this rarely matters.)
        """
        single = isinstance(pairs, tuple) and len(pairs) == 2 and all(isinstance(s, str) for s in pairs)
        if single:
            pairs = [pairs]  # type: ignore[list-item]
        if not isinstance(pairs, (list, tuple)):
            raise TypeError(f"pairs must be a list of (query, passage) tuples, got {type(pairs).__name__}")
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise TypeError(f"pairs[{i}] must be a (query, passage) pair of str, got {pair!r:.80}")
        w = _check_weights(weights)
        batch_size = check_batch_size(batch_size)
        keys = ("dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense")
        scores: dict[str, list[float]] = {k: [] for k in keys}
        if not pairs:
            return scores
        q = self.encode([p[0] for p in pairs], max_length=max_query_length)
        p = self.encode([p[1] for p in pairs], max_length=max_passage_length)
        qd, qs, qc = cast(np.ndarray, q.dense), cast(list, q.sparse), cast(list, q.colbert)
        pd, ps, pc = cast(np.ndarray, p.dense), cast(list, p.sparse), cast(list, p.colbert)
        for start in range(0, len(pairs), batch_size):
            group = range(start, min(start + batch_size, len(pairs)))
            longest = max(pc[i].shape[0] for i in group)
            for i in group:
                d = dense_score(qd[i], pd[i])
                s = lexical_score(qs[i], ps[i])
                c = _colbert_padded(qc[i], pc[i], pc[i].shape[0] < longest)
                scores["dense"].append(d)
                scores["sparse"].append(s)
                scores["colbert"].append(c)
                scores["sparse+dense"].append((s * w[1] + d * w[0]) / (w[0] + w[1]))
                scores["colbert+sparse+dense"].append((c * w[2] + s * w[1] + d * w[0]) / sum(w))
        if single:
            return {k: v[0] for k, v in scores.items()}
        return scores


def _colbert_padded(q: np.ndarray, p: np.ndarray, padded: bool) -> float:
    """:func:`colbert_score`, with per-query-token maxima floored at 0 when ``padded``."""
    if q.shape[0] == 0:
        return 0.0
    if p.shape[0] == 0:
        return 0.0
    best = (q @ p.T).max(axis=1)
    if padded:
        best = np.maximum(best, 0.0)
    return float(best.sum() / q.shape[0])


def _check_weights(weights: Sequence[float]) -> tuple[float, float, float]:
    if not isinstance(weights, (list, tuple)) or len(weights) != 3:
        raise ValueError(f"weights must be three numbers (dense, sparse, colbert), got {weights!r}")
    out = []
    for x in weights:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not np.isfinite(x) or x < 0:
            raise ValueError(f"weights must be finite and >= 0, got {weights!r}")
        out.append(float(x))
    if out[0] + out[1] <= 0 or sum(out) <= 0:
        raise ValueError(f"weights {weights!r}: dense + sparse weights must be > 0")
    return out[0], out[1], out[2]


def _load_linear(path: str, name: str, dtype: Any, device: str) -> Any:
    """Rebuild a ``torch.nn.Linear`` from a saved state dict (``weight`` [out, in], ``bias`` [out])."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"{name!r}: could not read {os.path.basename(path)} ({exc})") from exc
    if not isinstance(state, dict) or "weight" not in state or getattr(state["weight"], "ndim", 0) != 2:
        raise ModelLoadError(f"{name!r}: {os.path.basename(path)} is not a Linear state dict with a 2-D 'weight'")
    out_f, in_f = state["weight"].shape
    layer = torch.nn.Linear(in_f, out_f, bias="bias" in state)
    layer.load_state_dict(state)
    return layer.to(device=device, dtype=dtype).eval()
