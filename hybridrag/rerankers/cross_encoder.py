"""Cross-encoder reranker (bge-reranker, bge-reranker-v2-m3, any one-logit sequence classifier).

Inputs are built the way FlagEmbedding's ``FlagReranker`` builds them, at the token level:
the query is tokenized alone and cut to ``3/4 * max_length`` tokens, the passage is tokenized
alone and cut to ``max_length`` tokens, then the pair gets the tokenizer's own special tokens
(``<s> q </s></s> p </s>`` for XLM-RoBERTa) and the passage alone is shortened so the pair
fits ``max_length`` (``only_second``). The score is the model's single logit, or its sigmoid.

Covered by ``tests/test_reranker.py`` (parity with ``FlagEmbedding.FlagReranker``).
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybridrag.encoders.base import (
    _cut_long_text,
    dtype_name,
    is_int8,
    load_pretrained,
    quantize_int8,
    resolve_device,
    resolve_dtype,
    resolve_model_folder,
)
from hybridrag.encoders.onnx import check_runtime, to_onnx
from hybridrag.errors import ModelLoadError

logger = logging.getLogger(__name__)

__all__ = ["CrossEncoderReranker"]

MAX_LENGTH_LIMIT = 8192
MIN_MAX_LENGTH = 8
_SURROGATES = re.compile("[\ud800-\udfff]")


def _resolve_device(device: str | torch.device | None, dtype: Any = None) -> torch.device:
    # The encoders' rule (None -> CUDA when available, the CPU for int8; CUDA asked for but
    # absent is an error); a torch.device is accepted too.
    return torch.device(resolve_device(str(device) if isinstance(device, torch.device) else device, dtype))


def _check_max_length(max_length: Any) -> int:
    if isinstance(max_length, bool) or not isinstance(max_length, int):
        raise TypeError(f"max_length must be an int, got {max_length!r}")
    if not MIN_MAX_LENGTH <= max_length <= MAX_LENGTH_LIMIT:
        raise ValueError(f"max_length={max_length} is out of range [{MIN_MAX_LENGTH}, {MAX_LENGTH_LIMIT}]")
    return max_length


def _clean(text: str) -> str:
    # Tokenizers cannot encode lone surrogates; U+FFFD keeps the string usable.
    return _SURROGATES.sub("\ufffd", text)


class CrossEncoderReranker:
    """Scores (query, passage) pairs with a cross-encoder.

    Build with :meth:`from_pretrained`. ``compute_score`` returns float32 ``[n]`` scores in
    input order; ``rerank`` sorts passages for one query.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        name_or_path: str = "",
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int = 512,
        runtime: str = "torch",
        onnx_cache: str | os.PathLike[str] | None = None,
    ) -> None:
        self.max_length = _check_max_length(max_length)
        #: ``"torch"`` or ``"onnx"`` (the model runs in ONNX Runtime on the CPU, fp32 or int8).
        self.runtime = check_runtime(runtime, device, dtype)
        self.device = _resolve_device("cpu" if device is None and self.runtime == "onnx" else device, dtype)
        self.dtype = resolve_dtype(dtype, str(self.device))
        #: Linear layers run in int8 (``dtype="int8"``, the CPU path; :func:`quantize_int8`).
        self.int8 = is_int8(dtype)
        self.name_or_path = str(name_or_path)
        self.tokenizer = tokenizer
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        if self.runtime == "onnx":
            self.model = to_onnx(self.model, "logits", name=self.name_or_path or type(model).__name__,
                                 int8=self.int8, cache=onnx_cache)
        elif self.int8:
            self.model = quantize_int8(self.model)
        self._backend = self._make_backend(tokenizer)
        pad_id = getattr(tokenizer, "pad_token_id", None)
        self._pad_id = int(pad_id) if pad_id is not None else 0
        names = list(getattr(tokenizer, "model_input_names", ["input_ids", "attention_mask"]))
        self._use_type_ids = "token_type_ids" in names

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str] = "BAAI/bge-reranker-v2-m3",
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int = 512,
        *,
        revision: str | None = None,
        trust_remote_code: bool = False,
        runtime: str = "torch",
        onnx_cache: str | os.PathLike[str] | None = None,
    ) -> CrossEncoderReranker:
        """Load a cross-encoder from a local folder or a Hugging Face id.

        ``dtype``: None gives fp16 on CUDA and fp32 on CPU; ``"int8"`` is the CPU path (the
        model's Linear layers quantized to int8 after loading; ``device`` None then means the
        CPU, a CUDA device raises ConfigError). ``runtime="onnx"``: the model runs in ONNX
        Runtime on the CPU (fp32, or int8 with ``dtype="int8"``), exported on first use and kept
        in ``onnx_cache`` (see :mod:`hybridrag.encoders.onnx`).

        Raises :class:`~hybridrag.errors.ModelLoadError` when the folder or id cannot be loaded.
        """
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not isinstance(name_or_path, (str, os.PathLike)):
            raise TypeError(f"name_or_path must be a str or path, got {type(name_or_path).__name__}")
        _check_max_length(max_length)
        name = os.fspath(name_or_path)
        runtime = check_runtime(runtime, device, dtype)
        dev = _resolve_device("cpu" if device is None and runtime == "onnx" else device, dtype)
        torch_dtype = resolve_dtype(dtype, str(dev))
        path = Path(name).expanduser()
        looks_local = path.is_absolute() or name.startswith((".", "~")) or path.exists()
        if looks_local and not path.is_dir():
            raise ModelLoadError(f"reranker folder {name!r} does not exist or is not a directory")
        # A Hub id goes through the encoders' resolution: from the cache, or one request that
        # fails at once when the Hub is unreachable (transformers would retry each file ~25 s).
        folder = path if looks_local else Path(resolve_model_folder(name, revision=revision))
        if not (folder / "config.json").is_file():
            raise ModelLoadError(
                f"reranker folder {name!r} has no config.json; expected a Hugging Face model folder "
                "(config.json, weights, tokenizer files)"
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
            # a checkpoint's pooler is unused by classifiers built without one (XLM-R): not worth a report
            model = load_pretrained(AutoModelForSequenceClassification, str(folder),
                                    expected_unused=r"(^|\.)pooler\.", dtype=torch_dtype,
                                    trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError, ImportError) as exc:
            raise ModelLoadError(f"could not load reranker {name!r} from {folder}: {exc}") from exc
        num_labels = getattr(model.config, "num_labels", 1)
        if num_labels != 1:
            raise ModelLoadError(
                f"reranker {name!r} has num_labels={num_labels}; a cross-encoder reranker needs exactly 1 logit"
            )
        return cls(model, tokenizer, name_or_path=name, device=dev, dtype="int8" if is_int8(dtype) else torch_dtype,
                   max_length=max_length, runtime=runtime, onnx_cache=onnx_cache)

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def _make_backend(tokenizer: Any) -> Any | None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            if not callable(getattr(tokenizer, "prepare_for_model", None)):
                raise TypeError(
                    f"{type(tokenizer).__name__} has neither a fast backend nor prepare_for_model; "
                    "a Hugging Face fast tokenizer is required"
                )
            return None
        from tokenizers import Tokenizer

        # A private copy: saved tokenizer.json files may switch truncation/padding on.
        own = Tokenizer.from_str(backend.to_str())
        own.no_truncation()
        own.no_padding()
        return own

    @staticmethod
    def _check_pairs(pairs: Any) -> list[tuple[str, str]]:
        if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
            raise TypeError(f"pairs must be a list of (query, passage) pairs, got {type(pairs).__name__}")
        out: list[tuple[str, str]] = []
        for i, pair in enumerate(pairs):
            if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
                raise TypeError(f"pairs[{i}] must be a (query, passage) pair of two str, got {pair!r:.80}")
            q, p = pair[0], pair[1]
            if not isinstance(q, str) or not isinstance(p, str):
                raise TypeError(
                    f"pairs[{i}] must hold two str, got ({type(q).__name__}, {type(p).__name__})"
                )
            out.append((q, p))
        return out

    def _encode_pairs(self, pairs: list[tuple[str, str]], max_length: int | None = None
                      ) -> list[tuple[list[int], list[int]]]:
        """Token ids and token type ids per pair, truncated as FlagReranker does (to
        ``max_length``, default the reranker's)."""
        max_len = self.max_length if max_length is None else max_length
        q_max = max_len * 3 // 4
        queries = [_clean(q) for q, _ in pairs]
        passages = [_clean(p) for _, p in pairs]
        side = getattr(self.tokenizer, "truncation_side", "right")
        out: list[tuple[list[int], list[int]]] = []
        if self._backend is not None:
            backend = self._backend
            n_special = backend.num_special_tokens_to_add(True)

            def cut(text: str, limit: int) -> str:
                # a very long text: only a prefix that holds its first tokens is tokenized
                return _cut_long_text(backend, text, limit) if side == "right" else text

            # each distinct query once (a rerank pairs one query with every passage)
            q_text = {q: cut(q, q_max) for q in dict.fromkeys(queries)}
            q_of = dict(zip(q_text, backend.encode_batch(list(q_text.values()), add_special_tokens=False)))
            for q_enc in q_of.values():
                q_enc.truncate(q_max, direction=side)
            p_encs = backend.encode_batch([cut(p, max_len) for p in passages], add_special_tokens=False)
            for q, p_enc in zip(queries, p_encs):
                q_enc = q_of[q]
                p_enc.truncate(max_len, direction=side)
                excess = len(q_enc.ids) + len(p_enc.ids) + n_special - max_len
                if excess > 0 and len(p_enc.ids) > excess:
                    p_enc.truncate(len(p_enc.ids) - excess, direction=side)
                elif excess > 0:
                    # Only reachable for tiny max_length: FlagReranker would overflow max_length
                    # here; cutting the query too keeps the pair within the model's limit (on
                    # a copy of the query's tokens: others share them).
                    p_enc.truncate(0, direction=side)
                    q_enc = backend.encode(q_text[q], add_special_tokens=False)
                    q_enc.truncate(min(q_max, max(max_len - n_special, 0)), direction=side)
                enc = backend.post_process(q_enc, p_enc, add_special_tokens=True)
                out.append((list(enc.ids), list(enc.type_ids)))
            return out
        tok = self.tokenizer
        q_ids = tok(queries, add_special_tokens=False, truncation=True, max_length=q_max)["input_ids"]
        p_ids = tok(passages, add_special_tokens=False, truncation=True, max_length=max_len)["input_ids"]
        for q, p in zip(q_ids, p_ids):
            item = tok.prepare_for_model(q, p, truncation="only_second", max_length=max_len,
                                         return_token_type_ids=True)
            ids = list(item["input_ids"])
            out.append((ids, list(item.get("token_type_ids", [0] * len(ids)))))
        return out

    def _collate(self, items: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(ids) for ids, _ in items)
        n = len(items)
        input_ids = torch.full((n, width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        types = torch.zeros((n, width), dtype=torch.long)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        for row, (ids, tt) in enumerate(items):
            sl = slice(width - len(ids), width) if left else slice(0, len(ids))
            input_ids[row, sl] = torch.tensor(ids, dtype=torch.long)
            mask[row, sl] = 1
            types[row, sl] = torch.tensor(tt, dtype=torch.long)
        batch = {"input_ids": input_ids, "attention_mask": mask}
        if self._use_type_ids:
            batch["token_type_ids"] = types
        return {k: v.to(self.device) for k, v in batch.items()}

    # ------------------------------------------------------------------ scoring
    def _call_max_length(self, max_length: Any) -> int | None:
        if max_length is None:
            return None
        if isinstance(max_length, bool) or not isinstance(max_length, int) \
                or not MIN_MAX_LENGTH <= max_length <= self.max_length:
            raise ValueError(f"max_length must be an int in [{MIN_MAX_LENGTH}, {self.max_length}] (the reranker's), "
                             f"got {max_length!r}")
        return max_length

    def pair_lengths(self, pairs: Sequence[tuple[str, str]], max_length: int | None = None) -> list[int]:
        """Tokens of each (query, passage) pair as :meth:`compute_score` would feed it (special
        tokens included, truncated to ``max_length``, default the reranker's)."""
        return [len(ids) for ids, _ in self._encode_pairs(self._check_pairs(pairs), self._call_max_length(max_length))]

    @torch.inference_mode()
    def compute_score(
        self, pairs: Sequence[tuple[str, str]], *, normalize: bool = False, batch_size: int = 32,
        max_length: int | None = None,
    ) -> np.ndarray:
        """Score each (query, passage) pair: float32 ``[n]`` in input order.

        Raw logits, or their sigmoid when ``normalize`` is true. Pairs are tokenized once
        (truncated to ``max_length`` tokens, at most and by default the reranker's own),
        sorted by length and run in dynamically padded batches; a CUDA out-of-memory error
        halves the batch and retries.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        max_length = self._call_max_length(max_length)
        checked = self._check_pairs(pairs)
        if not checked:
            return np.zeros(0, dtype=np.float32)
        items = self._encode_pairs(checked, max_length)
        # Longest first: an OOM shows up on the first batch, and padding stays small.
        order = np.argsort([-len(ids) for ids, _ in items], kind="stable")
        scores = np.empty(len(items), dtype=np.float32)
        start = 0
        while start < len(order):
            idx = order[start:start + batch_size]
            try:
                batch = self._collate([items[i] for i in idx])
                logits = self.model(**batch, return_dict=True).logits
            except torch.cuda.OutOfMemoryError:
                if batch_size == 1:
                    raise
                batch_size = max(1, batch_size // 2)
                logger.warning("CUDA out of memory in reranker; retrying with batch_size=%d", batch_size)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            scores[idx] = logits.reshape(-1).float().cpu().numpy()
            start += len(idx)
        if normalize:
            scores = (1.0 / (1.0 + np.exp(-scores.astype(np.float64)))).astype(np.float32)
        return scores

    def rerank(
        self,
        query: str,
        passages: Sequence[str],
        top_k: int | None = None,
        *,
        normalize: bool = False,
        batch_size: int = 32,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sort ``passages`` for ``query``: ``(indices int64 [k], scores float32 [k])``, best first.

        Ties keep input order. ``top_k=None`` returns all passages.
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        if isinstance(passages, (str, bytes)) or not isinstance(passages, Sequence):
            raise TypeError(f"passages must be a list of str, got {type(passages).__name__}")
        for i, p in enumerate(passages):
            if not isinstance(p, str):
                raise TypeError(f"passages[{i}] must be a str, got {type(p).__name__}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
            raise ValueError(f"top_k must be None or a non-negative int, got {top_k!r}")
        scores = self.compute_score([(query, p) for p in passages], normalize=normalize, batch_size=batch_size)
        order = np.argsort(-scores, kind="stable").astype(np.int64)
        if top_k is not None:
            order = order[:top_k]
        return order, scores[order]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name_or_path!r}, device={str(self.device)!r}, "
                f"dtype={'int8' if self.int8 else dtype_name(self.dtype)!r}, max_length={self.max_length}, "
                f"runtime={self.runtime!r})")

