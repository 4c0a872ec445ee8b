"""Shared encoder machinery: output type, device/dtype choice (and the CPU int8 path),
input checks, model-folder resolution, length-sorted dynamic-padding batching and the
query-encoding cache.

Covered by ``tests/test_encoders_m3.py``, ``tests/test_encoders_dense.py`` and
``tests/test_cpu_path.py`` (int8 parity, query cache).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from hybridrag.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Hard upper bound on ``max_length`` (tokens) accepted by every encoder.
MAX_LENGTH_LIMIT = 8192

_DTYPE_NAMES = {
    "fp32": "float32", "float32": "float32", "float": "float32",
    "fp16": "float16", "float16": "float16", "half": "float16",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
}

# Model types whose position ids start after the padding index (RoBERTa family):
# they can embed ``max_position_embeddings - pad_token_id - 1`` tokens.
_OFFSET_POSITION_TYPES = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "data2vec-text"}

_HUB_IGNORE = ["*.msgpack", "*.h5", "*.ot", "onnx/*", "*.onnx", "openvino/*", "flax_model*", "tf_model*", "rust_model*"]


@dataclass
class EncodeOutput:
    """What an encoder returns for ``n`` texts.

    * ``dense``: float32 array ``[n, d]`` (L2-normalised when the model says so), or None.
    * ``sparse``: one ``{token_id: weight}`` dict per text, or None.
    * ``colbert``: one float32 array ``[tokens_i, d_colbert]`` per text, or None.
    """

    dense: np.ndarray | None = None
    sparse: list[dict[int, float]] | None = None
    colbert: list[np.ndarray] | None = None


# --------------------------------------------------------------------------- devices


def resolve_device(device: Any, dtype: Any = None) -> str:
    """``None`` -> ``"cuda"`` when CUDA is available, else ``"cpu"``; otherwise checked as given.

    With ``dtype="int8"`` (the CPU path, :func:`quantize_int8`) ``None`` means ``"cpu"``,
    and a CUDA device raises :class:`ConfigError`: int8 dynamic quantization has CPU kernels only.
    """
    if is_int8(dtype):
        if device is None:
            return "cpu"
        name = str(device)
        if not name.startswith("cpu"):
            raise _int8_off_cpu(name)
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(f"device must be a str such as 'cpu' or 'cuda:0', got {type(device).__name__}")
    try:
        parsed = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device {device!r} is not a valid torch device (use 'cpu', 'cuda', 'cuda:N')") from exc
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return device


def resolve_dtype(dtype: Any, device: str) -> "torch.dtype":
    """Pick the compute dtype: fp16 on CUDA and fp32 on CPU by default.

    ``dtype`` may be None, a ``torch.dtype`` or one of ``fp32``/``fp16``/``bf16``
    (also ``float32``/``float16``/``bfloat16``), or ``int8``: float32 for the model, whose
    Linear layers :func:`quantize_int8` then replaces (CPU only: :class:`ConfigError` elsewhere).
    """
    import torch

    if is_int8(dtype):
        if not str(device).startswith("cpu"):
            raise _int8_off_cpu(device)
        return torch.float32  # what the layers int8 leaves alone (embeddings, norms, heads) compute in
    if dtype is None:
        return torch.float16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype {dtype} is not supported; choose float32, float16 or bfloat16")
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPE_NAMES:
        return getattr(torch, _DTYPE_NAMES[dtype.lower()])
    raise ValueError(f"dtype {dtype!r} is not supported; choose one of 'fp32', 'fp16', 'bf16', 'int8' "
                     "or a torch.dtype")


def _int8_off_cpu(device: str) -> ConfigError:
    return ConfigError(f"dtype 'int8' (dynamic int8 quantization) runs on the CPU only, not on device "
                       f"{device!r}; use dtype 'fp16' or 'bf16' on a GPU, or device 'cpu'")


def is_int8(dtype: Any) -> bool:
    """True for the dtype setting ``"int8"`` (any case): the CPU path of :func:`quantize_int8`."""
    return isinstance(dtype, str) and dtype.strip().lower() == "int8"


def quantize_int8(model: "torch.nn.Module") -> "torch.nn.Module":
    """Replace every ``torch.nn.Linear`` inside ``model`` by a dynamically quantized int8 one.

    Weights are stored as int8 with one scale per output channel (with one scale per tensor,
    all-MiniLM-L6-v2's cosine to fp32 fell to 0.72 on the texts of ``tests/test_cpu_path.py``;
    per channel, 0.92); each call quantizes its activations on the
    fly and runs an int8 matrix product (fbgemm/oneDNN kernels), returning float32. Embeddings,
    layer norms and ``model`` itself when it is a bare Linear stay float32. CPU only. Returns
    the quantized module (``model`` is left unchanged). Used right after loading by the M3 and
    dense encoders (:func:`load_transformer`) and by the cross-encoder reranker.

    ``torch.ao.quantization.quantize_dynamic`` is deprecated in favour of torchao's
    ``quantize_``, but torchao 0.18's int8 dynamic path gave no speed-up on a CPU in eager
    mode (benchmarks/results/cpu-int8_torchao-vs-torch-ao.txt), so this keeps torch's kernels
    and silences their deprecation notices for this call only.
    """
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r"(?s).*quantized tensor creation functions")
        try:
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
        except ImportError as exc:  # pragma: no cover - a future torch without it
            raise ConfigError(f"dtype 'int8' needs torch.ao.quantization.quantize_dynamic, which torch "
                              f"{torch.__version__} lacks; use dtype 'fp32'") from exc
        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8,
                                inplace=False)


def dtype_name(dtype: "torch.dtype") -> str:
    """``torch.float16`` -> ``"float16"`` (JSON-friendly)."""
    return str(dtype).replace("torch.", "")


# --------------------------------------------------------------------------- inputs


def check_texts(texts: str | Sequence[str]) -> list[str]:
    """Validate encoder input and return a list of texts.

    A bare ``str`` counts as one text. Anything else must be a list or tuple of
    ``str``; a non-str item raises ``TypeError`` naming its index. Lone UTF-16
    surrogates (which tokenizers reject) are replaced by U+FFFD; control
    characters pass through unchanged.
    """
    if isinstance(texts, str):
        texts = [texts]
    elif not isinstance(texts, (list, tuple)):
        raise TypeError(f"texts must be a str or a list/tuple of str, got {type(texts).__name__}")
    out: list[str] = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be str, got {type(text).__name__}: {text!r:.80}")
        out.append(_fix_surrogates(text))
    return out


def _fix_surrogates(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        # Valid surrogate pairs are re-joined; lone halves become U+FFFD.
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def check_max_length(max_length: Any, capacity: int, name: str = "max_length") -> int:
    """Check ``max_length`` is an int in ``[1, 8192]`` and at most ``capacity`` (the model's limit)."""
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(max_length).__name__}: {max_length!r}")
    max_length = int(max_length)
    if not 1 <= max_length <= MAX_LENGTH_LIMIT:
        raise ValueError(f"{name}={max_length} is out of range; it must be in [1, {MAX_LENGTH_LIMIT}]")
    if max_length > capacity:
        raise ValueError(f"{name}={max_length} exceeds the {capacity} tokens this model can embed")
    return max_length


def check_batch_size(batch_size: Any) -> int:
    """Check ``batch_size`` is a positive int."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return int(batch_size)


def model_capacity(config: Any) -> int:
    """How many tokens a Hugging Face model config can embed (position table size)."""
    max_pos = int(getattr(config, "max_position_embeddings", MAX_LENGTH_LIMIT) or MAX_LENGTH_LIMIT)
    if getattr(config, "model_type", "") in _OFFSET_POSITION_TYPES:
        max_pos -= int(getattr(config, "pad_token_id", 1) or 0) + 1
    return max_pos


# --------------------------------------------------------------------------- loading


def resolve_model_folder(name_or_path: str | os.PathLike[str], revision: str | None = None) -> str:
    """Return a local folder for ``name_or_path``: the folder itself, or a Hub snapshot.

    A Hugging Face id (``org/name``) is fetched with ``huggingface_hub``, or taken from its
    cache: only from the cache when ``HF_HUB_OFFLINE`` is set, and from the cache when the
    Hub cannot be reached (which ``snapshot_download`` finds out in one request, where
    transformers' own downloads retry each file for about 25 s). Raises
    :class:`ModelLoadError` at once, naming the path or id and how to fix it, when the model
    is neither a local folder nor available (``tests/test_package.py::test_uncached_hub_id_fails_at_once``).
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a str or path, got {type(name_or_path).__name__}")
    name = os.fspath(name_or_path)
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return expanded
    looks_local = (
        os.path.isabs(expanded) or name.startswith((".", "~")) or os.path.exists(expanded)
        or name.count("/") > 1 or "\\" in name or not name
    )
    if looks_local:
        raise ModelLoadError(f"model folder {name!r} does not exist or is not a directory")
    from huggingface_hub import constants, snapshot_download

    offline = bool(constants.HF_HUB_OFFLINE) or _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE")
    try:
        return snapshot_download(repo_id=name, revision=revision, ignore_patterns=_HUB_IGNORE,
                                 local_files_only=offline)
    except Exception as exc:  # hub errors have many types (offline, 404, gated, bad id)
        raise ModelLoadError(_hub_failure(name, exc, offline, constants.HF_HUB_CACHE)) from exc


def _env_flag(key: str) -> bool:
    return os.environ.get(key, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_failure(name: str, exc: Exception, offline: bool, cache: str) -> str:
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError

    fix = (f"Pass the path of a local model folder instead, or download the model once where the Hub "
           f"is reachable (`hf download {name}`, into {cache}; HF_HOME moves it).")
    detail = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    if isinstance(exc, HFValidationError):
        return f"model {name!r} is neither a local folder nor a valid Hugging Face id ({detail})"
    if offline:
        return (f"model {name!r} is not a local folder and not in the Hugging Face cache, and HF_HUB_OFFLINE "
                f"is set, so it was not downloaded. {fix}")
    if isinstance(exc, (RepositoryNotFoundError, RevisionNotFoundError)):
        return (f"model {name!r} is not a local folder, and the Hugging Face Hub has no such model or revision "
                f"(or it is private or gated: log in with `hf auth login`) ({detail})")
    return (f"model {name!r} is not a local folder and not in the Hugging Face cache, and the Hugging Face Hub "
            f"could not provide it ({detail}). {fix}")


def load_tokenizer(folder: str, name: str) -> Any:
    """Load a fast tokenizer from ``folder``; ModelLoadError names ``name`` on failure."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, use_fast=True)
    except Exception as exc:
        raise ModelLoadError(f"could not load a tokenizer for {name!r} from {folder}: {exc}") from exc


def load_transformer(folder: str, name: str, dtype: "torch.dtype", device: str, int8: bool = False) -> Any:
    """Load an ``AutoModel`` (no task head) from ``folder`` in eval mode on ``device``;
    ``int8=True`` then quantizes its Linear layers (:func:`quantize_int8`).

    Checkpoint weights the body does not use (a pooler, a pre-training or task head) are
    expected here and not reported; missing or mismatched weights are (see :func:`load_pretrained`).
    """
    from transformers import AutoModel

    try:
        try:  # BERT/XLM-R carry an unused pooler; skip building it when the class allows
            model = load_pretrained(AutoModel, folder, expected_unused=".", dtype=dtype, add_pooling_layer=False)
        except TypeError:
            model = load_pretrained(AutoModel, folder, expected_unused=".", dtype=dtype)
    except Exception as exc:
        raise ModelLoadError(f"could not load model weights for {name!r} from {folder}: {exc}") from exc
    model = model.to(device).eval()
    return quantize_int8(model) if int8 else model


def load_body(folder: str, name: str, dtype: Any, device: str, *, runtime: str = "torch",
              onnx_cache: str | os.PathLike[str] | None = None) -> Any:
    """The encoder body for ``runtime``: :func:`load_transformer` (``"torch"``; ``dtype`` the
    setting as given, ``"int8"`` quantizing its Linear layers) or, for ``"onnx"``, the fp32
    model exported and run by ONNX Runtime (:func:`hybridrag.encoders.onnx.to_onnx`; int8 by
    ONNX Runtime's quantizer)."""
    if runtime == "onnx":
        import torch

        from hybridrag.encoders.onnx import to_onnx

        model = load_transformer(folder, name, torch.float32, "cpu")
        return to_onnx(model, "last_hidden_state", name=name, int8=is_int8(dtype), cache=onnx_cache)
    return load_transformer(folder, name, resolve_dtype(dtype, device), device, int8=is_int8(dtype))


# The functions that log transformers' weight-loading report: 5.x's table ("LOAD REPORT"),
# 4.x's "Some weights of ... were not used / not initialized" messages.
_LOAD_REPORT_FUNCS = frozenset({"log_state_dict_report", "_load_pretrained_model"})


class _HoldLoadReport(logging.Filter):
    """Holds back this thread's load-report records, to be shown only if the load was not clean."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.funcName in _LOAD_REPORT_FUNCS and threading.get_ident() == self.thread:
            self.held.append(record)
            return False
        return True


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    """No transformers progress bar ("Loading weights") in this thread while the block runs."""
    from transformers.utils import logging as hf_logging

    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    if set_hook is None:  # older transformers: only a global switch, restored afterwards
        was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            if was_on:
                hf_logging.enable_progress_bar()
        return
    me = threading.get_ident()

    def hook(factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if threading.get_ident() == me:
            return hf_logging.EmptyTqdm(*args, **kwargs)
        return previous(factory, args, kwargs) if previous is not None else factory(*args, **kwargs)

    previous = set_hook(hook)
    try:
        yield
    finally:
        set_hook(previous)


def load_pretrained(loader: Any, source: str, *, expected_unused: str, **kw: Any) -> Any:
    """``loader.from_pretrained(source, **kw)``, quiet when the load holds no surprise.

    transformers reports every checkpoint weight the model does not use, every model weight
    the checkpoint lacks (left random) and every shape mismatch, and shows a progress bar.
    A library keeps that off the user's terminal when it is expected: here when the only
    unused weights match the regex ``expected_unused`` (``"."``: any, for an encoder body;
    a pooler for a classifier that has none) and nothing is missing or mismatched. Otherwise
    transformers' own report is shown as it would have been. Only this call, in this thread,
    is affected: transformers' verbosity and progress-bar settings are left as they were.
    Covered by ``tests/test_package.py``: ``test_model_loading_is_quiet``,
    ``test_missing_weights_are_still_reported``.
    """
    report_logger = logging.getLogger("transformers.modeling_utils")
    hold = _HoldLoadReport()
    report_logger.addFilter(hold)
    try:
        with _no_progress_bar():
            model, info = loader.from_pretrained(source, output_loading_info=True, **kw)
    except BaseException:
        report_logger.removeFilter(hold)
        _release(report_logger, hold.held)  # the report explains the failure
        raise
    report_logger.removeFilter(hold)
    unused = [k for k in info.get("unexpected_keys") or () if not re.search(expected_unused, k)]
    if unused or info.get("missing_keys") or info.get("mismatched_keys") or info.get("error_msgs"):
        _release(report_logger, hold.held)
    return model


def _release(target: logging.Logger, records: list[logging.LogRecord]) -> None:
    for record in records:
        target.handle(record)


# --------------------------------------------------------------------------- tokenizing


def tokenize(tokenizer: Any, texts: list[str], max_length: int, **kw: Any) -> list[dict[str, list[int]]]:
    """Tokenize each text once, truncated to ``max_length`` tokens (special tokens included).

    Very long texts are cut to a character window before tokenizing (the window is
    doubled until the first ``max_length`` tokens are provably unchanged), so a
    10 MB line costs about as much as a long paragraph.
    """
    if not texts:
        return []
    texts = [_cut_long_text(tokenizer, t, max_length) for t in texts]
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=False, **kw)
    keys = list(enc.keys())
    return [{k: enc[k][i] for k in keys} for i in range(len(texts))]


def _cut_long_text(tokenizer: Any, text: str, max_length: int) -> str:
    """``text``, or a prefix of it whose first ``max_length`` tokens are the text's (so that
    right truncation gives the same ids without tokenizing the whole of a very long text).
    ``tokenizer``: a Hugging Face tokenizer, or a ``tokenizers.Tokenizer`` without truncation."""
    window = 8 * max_length + 256
    if len(text) <= 2 * window:
        return text
    if callable(getattr(tokenizer, "encode_batch", None)) and not hasattr(tokenizer, "backend_tokenizer"):
        def ids(t: str) -> list[int]:
            return tokenizer.encode(t, add_special_tokens=False).ids
    else:
        def ids(t: str) -> list[int]:   # (verbose=False: a prefix may be over the model's length, on purpose)
            return tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"]
    while 2 * window < len(text):
        short = ids(text[:window])
        longer = ids(text[: 2 * window])
        if len(short) >= max_length and short[:max_length] == longer[:max_length]:
            return text[:window]
        window *= 2
    return text


def pad_batch(tokenizer: Any, features: list[dict[str, list[int]]], device: str) -> dict[str, "torch.Tensor"]:
    """Pad tokenized examples on the right to the batch's longest; int64 tensors on ``device``.

    Always right padding (the encoders slice ``[:length]`` per row), whatever the
    tokenizer's ``padding_side``. Filled with numpy, faster than
    ``tokenizer.pad`` on the Python lists, which took a large share of ``encode`` on a GPU
    (docs/CHANGELOG-performance.md, engine change 7). ``attention_mask`` is added when missing; keys
    other than ``input_ids``, ``attention_mask``, ``token_type_ids`` and
    ``special_tokens_mask`` (padded with 1) are padded with 0.
    """
    import torch

    keys = list(features[0].keys())
    pad_id = getattr(tokenizer, "pad_token_id", None)
    fill = {"input_ids": 0 if pad_id is None else int(pad_id), "attention_mask": 0, "special_tokens_mask": 1,
            "token_type_ids": int(getattr(tokenizer, "pad_token_type_id", 0) or 0)}
    lengths = [len(f["input_ids"]) for f in features]
    width = max(lengths)
    if "attention_mask" not in keys:
        keys.append("attention_mask")
    arrays = {k: np.full((len(features), width), fill.get(k, 0), dtype=np.int64) for k in keys}
    for i, (f, n) in enumerate(zip(features, lengths)):
        for k in keys:
            if k == "attention_mask" and k not in f:
                arrays[k][i, :n] = 1
            else:
                arrays[k][i, :n] = f[k]
    return {k: torch.from_numpy(a).to(device) for k, a in arrays.items()}


def run_sorted_batches(
    features: list[dict[str, list[int]]],
    batch_size: int,
    launch: Callable[[list[dict[str, list[int]]]], Callable[[], list[Any]]],
) -> list[Any]:
    """Run ``launch`` over length-sorted batches and return its per-item results in input order.

    ``launch`` gets a list of tokenized examples, queues the work (on a GPU it
    returns before the work is done) and returns a function that waits for it and
    gives one result per example. Batch ``i``'s results are collected after batch
    ``i + 1`` is launched, so the host's post-processing overlaps the device's next
    forward pass. On ``torch.cuda.OutOfMemoryError`` from ``launch`` the batch size
    is halved and the same batch retried (down to 1, then the error propagates);
    other errors propagate at once.
    """
    import torch

    order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
    results: list[Any] = [None] * len(features)
    pending: tuple[list[int], Callable[[], list[Any]]] | None = None

    def collect(done: tuple[list[int], Callable[[], list[Any]]]) -> None:
        for i, out in zip(done[0], done[1]()):
            results[i] = out

    start = 0
    while start < len(order):
        idx = order[start : start + batch_size]
        try:
            finish = launch([features[i] for i in idx])
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size = max(1, batch_size // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        if pending is not None:
            collect(pending)
        pending = (idx, finish)
        start += len(idx)
    if pending is not None:
        collect(pending)
    return results


def host_copy(tensors: dict[str, "torch.Tensor"]) -> Callable[[], dict[str, np.ndarray]]:
    """Start copying ``tensors`` to the host; the returned function waits and gives numpy arrays.

    On CUDA the copies go into page-locked buffers without blocking the host, so
    the caller can launch the next batch first (a blocking fp32 copy of the ColBERT
    vectors into pageable memory was, with ``tokenizer.pad``, most of ``encode``'s time on
    the benchmark GPU; docs/CHANGELOG-performance.md, engine change 7). The arrays may share
    memory with those buffers: copy what outlives the batch.
    """
    import torch

    if not any(t.is_cuda for t in tensors.values()):
        arrays = {k: t.detach().cpu().numpy() for k, t in tensors.items()}
        return lambda: arrays
    host = {}
    for k, t in tensors.items():
        host[k] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host[k].copy_(t, non_blocking=True)
    done = torch.cuda.Event()
    done.record()

    def finish() -> dict[str, np.ndarray]:
        done.synchronize()
        return {k: v.numpy() for k, v in host.items()}

    return finish


def l2_normalize(x: "torch.Tensor", eps: float = 1e-12) -> "torch.Tensor":
    """L2-normalise along the last axis (zero rows stay zero), as ``F.normalize``."""
    import torch.nn.functional as F

    return F.normalize(x, p=2.0, dim=-1, eps=eps)


# --------------------------------------------------------------------------- query cache

#: Default number of query encodings an encoder keeps (``[encoder] query_cache``).
QUERY_CACHE_SIZE = 1024
#: Bytes of arrays a query cache holds at most, whatever its entry count (long ColBERT
#: queries of a large model take up to ~2 MB each).
QUERY_CACHE_MAX_BYTES = 256 * 2**20


def check_query_cache(size: Any) -> int:
    """Check a query-cache size: an int >= 0 (0 switches the cache off)."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
        raise ValueError(f"query_cache must be an int >= 0 (0 = off), got {size!r}")
    return int(size)


class QueryCache:
    """A bounded, thread-safe LRU cache of query encodings, one per encoder.

    Keyed by the exact query text and the settings that change its encoding (max length and
    the requested outputs; the model, dtype and instruction are the encoder's own). At most
    ``size`` entries and :data:`QUERY_CACHE_MAX_BYTES` of arrays; the least recently used go
    first. Entries are stored read-only and handed out as copies, so a caller that writes into
    a result cannot change what the next caller gets. ``hits``/``misses`` count lookups.
    """

    def __init__(self, size: int = QUERY_CACHE_SIZE, max_bytes: int = QUERY_CACHE_MAX_BYTES) -> None:
        self.size = check_query_cache(size)
        self.max_bytes = int(max_bytes)
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[tuple[Any, ...], tuple[Any, Any, Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        """Drop every entry (and reset the counters)."""
        with self._lock:
            self._items.clear()
            self._bytes = 0
            self.hits = self.misses = 0

    def encode(self, texts: list[str], settings: tuple[Any, ...], flags: tuple[bool, bool, bool],
               encode: Callable[[list[str]], EncodeOutput]) -> EncodeOutput:
        """``encode(texts)``, with the texts seen before under ``settings`` taken from the cache.

        ``flags`` = (dense, sparse, colbert) as passed to ``encode``. Texts not cached are
        encoded together, once each even when repeated in ``texts``.
        """
        if self.size == 0 or not texts:
            return encode(texts)
        keys = [(t, settings) for t in texts]
        found: dict[tuple[Any, ...], tuple[Any, Any, Any, int]] = {}
        with self._lock:
            for k in keys:
                entry = self._items.get(k)
                if entry is not None:
                    self._items.move_to_end(k)
                    found[k] = entry
            self.hits += sum(1 for k in keys if k in found)
        missing = list(dict.fromkeys(t for t, k in zip(texts, keys) if k not in found))
        if missing:
            out = encode(missing)
            new = {}
            for i, text in enumerate(missing):
                new[(text, settings)] = _cache_entry(out, i)
            found.update(new)
            with self._lock:
                self.misses += len(missing)
                for k, entry in new.items():
                    self._put(k, entry)
        dense, sparse, colbert = flags
        entries = [found[k] for k in keys]
        return EncodeOutput(
            dense=np.stack([e[0] for e in entries]) if dense else None,
            sparse=[dict(e[1]) for e in entries] if sparse else None,
            colbert=[e[2].copy() for e in entries] if colbert else None,
        )

    def _put(self, key: tuple[Any, ...], entry: tuple[Any, Any, Any, int]) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= old[3]
        if entry[3] > self.max_bytes:
            return
        self._items[key] = entry
        self._bytes += entry[3]
        while len(self._items) > self.size or self._bytes > self.max_bytes:
            _, dropped = self._items.popitem(last=False)
            self._bytes -= dropped[3]


def _cache_entry(out: EncodeOutput, i: int) -> tuple[Any, Any, Any, int]:
    """Row ``i`` of ``out`` as read-only copies, with its size in bytes."""
    dense = None if out.dense is None else np.array(out.dense[i])
    sparse = None if out.sparse is None else dict(out.sparse[i])
    colbert = None if out.colbert is None else np.array(out.colbert[i])
    size = 0
    for arr in (dense, colbert):
        if arr is not None:
            arr.setflags(write=False)
            size += arr.nbytes
    if sparse is not None:
        size += 16 * len(sparse)
    return dense, sparse, colbert, size
