"""ONNX Runtime as a CPU inference path (``runtime = "onnx"``; issue 25).

A loaded torch transformer is exported once to ONNX (``torch.onnx.export`` with its
``dynamo`` exporter: the older tracing exporter bakes transformers' attention-mask code into
constants and gives hidden states off by more than 1) and then run by ONNX Runtime's CPU
kernels, which on this project's 2-core CPU run a MiniLM query in about half torch's time
(docs/BENCHMARKS.md section 10). :class:`OnnxModel` is called as the torch model is (keyword
tensors in, an object with ``last_hidden_state`` or ``logits`` out), so the encoders and the
reranker keep one code path around it; their heads (pooling, M3's sparse and ColBERT linears)
stay in torch.

Exporting takes seconds to minutes (12 s for MiniLM on 2 cores), so exported models are kept in
a cache directory: the ``onnx_cache`` argument, else ``$HYBRIDRAG_ONNX_CACHE`` (``off``: no
cache; every load exports again into a temporary directory removed once ONNX Runtime has read
the model), else ``onnx/`` under the user's hybridrag cache (``$HYBRIDRAG_CACHE_DIR``, else
``$XDG_CACHE_HOME/hybridrag`` or ``~/.cache/hybridrag``, where the rerank budget keeps its
measurements). Never a place an index directory names. A cache entry is keyed by a hash of the
exported weights, the model's config, the graph's inputs and output and the torch /
transformers / ONNX Runtime versions; it is built in a temporary folder inside the cache and
moved into place by renames, the ``.onnx`` file last, so processes sharing a cache never read
a half-written file; an entry ONNX Runtime cannot read (a file cut short) is removed and
exported again, and the folders of exports killed more than six hours ago are removed. With ``dtype = "int8"``
the exported model is quantized by ONNX Runtime (dynamic int8, one scale per output channel)
and kept beside the fp32 one.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import numpy as np

from hybridrag.config import RUNTIMES  # the values of encoder.runtime and rerank.runtime
from hybridrag.errors import ConfigError, ModelLoadError

__all__ = ["RUNTIMES", "OnnxModel", "check_runtime", "onnx_cache_dir", "to_onnx"]

#: Environment variable naming the directory exported models are kept in.
CACHE_ENV = "HYBRIDRAG_ONNX_CACHE"
_OPSET = 18
_PROTOBUF_LIMIT = 2_000_000_000  # bytes: a larger model is saved with its weights beside the graph


def check_runtime(runtime: Any, device: Any = None, dtype: Any = None) -> str:
    """``runtime`` as a lower-case name (None or "" mean ``"torch"``). :class:`ConfigError` for
    anything but ``RUNTIMES``, and for ``"onnx"`` on a device other than the CPU (only ONNX
    Runtime's CPU kernels are used) or with a dtype other than fp32 and int8."""
    if runtime is None or runtime == "":
        return "torch"
    if not isinstance(runtime, str) or runtime.strip().lower() not in RUNTIMES:
        raise ConfigError(f"runtime {runtime!r} is not supported; choose one of {RUNTIMES}")
    runtime = runtime.strip().lower()
    if runtime == "onnx":
        if device is not None and not str(device).startswith("cpu"):
            raise ConfigError(f"runtime 'onnx' runs on the CPU only (ONNX Runtime's CPU kernels), not on device "
                              f"{str(device)!r}; use runtime 'torch' on a GPU")
        name = str(dtype).strip().lower().replace("torch.", "") if dtype is not None else ""
        if name not in ("", "fp32", "float32", "int8"):
            raise ConfigError(f"runtime 'onnx' runs fp32 or int8 models, not dtype {dtype!r}")
    return runtime


def onnx_cache_dir(cache: str | os.PathLike[str] | None = None) -> Path | None:
    """The directory exported models are kept in: ``cache``; else ``$HYBRIDRAG_ONNX_CACHE``
    (``off``: none, export at every load); else ``onnx/`` in the directory where the rerank
    budget keeps its measurements (``$HYBRIDRAG_CACHE_DIR``, else ``$XDG_CACHE_HOME/hybridrag``
    or ``~/.cache/hybridrag``)."""
    if cache is not None:
        return Path(os.fspath(cache)).expanduser()
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() == "off":
        return None
    if value:
        return Path(value).expanduser()
    from hybridrag.search.budget import cache_file

    return cache_file().parent / "onnx"


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ConfigError("runtime 'onnx' needs ONNX Runtime and the ONNX exporter: "
                          "pip install 'hybridrag[onnx]' (onnxruntime, onnx, onnxscript)") from exc
    return onnxruntime


class OnnxModel:
    """A transformer exported to ONNX and run by ONNX Runtime on the CPU, called like the torch
    model: ``model(input_ids=..., attention_mask=..., [token_type_ids=...])`` returns an object
    whose ``output`` attribute (``"last_hidden_state"`` or ``"logits"``) is a float32 tensor."""

    def __init__(self, session: Any, config: Any, inputs: list[str], output: str, source: str,
                 path: Path | None = None) -> None:
        self.session = session
        #: The ONNX file in the cache (None: exported into a temporary directory, now removed).
        self.path = path
        self.config = config
        self.inputs = inputs
        self.output = output
        #: ``"cache"`` (read from the cache), ``"export"`` (exported by this load).
        self.source = source

    def eval(self) -> "OnnxModel":
        return self

    def __call__(self, return_dict: bool = True, **batch: Any) -> Any:
        import torch

        ids = batch["input_ids"]
        feed = {}
        for name in self.inputs:
            value = batch.get(name)
            if value is None:  # token_type_ids the caller does not pass: one segment
                value = torch.zeros_like(ids)
            feed[name] = value.detach().cpu().numpy().astype(np.int64, copy=False)
        out = self.session.run([self.output], feed)[0]
        return SimpleNamespace(**{self.output: torch.from_numpy(out)})

    def __repr__(self) -> str:
        return f"OnnxModel(output={self.output!r}, inputs={self.inputs}, source={self.source!r})"


def _input_names(model: Any) -> list[str]:
    import inspect

    params = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in params:
        names.append("token_type_ids")
    return names


class _Wrapped:
    """The torch model with positional inputs and one output, as the exporter wants it."""

    def __new__(cls, model: Any, names: list[str], output: str) -> Any:
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
                kw = {"input_ids": input_ids, "attention_mask": attention_mask}
                if token_type_ids is not None:
                    kw["token_type_ids"] = token_type_ids
                return getattr(self.model(**kw, return_dict=True), output)

        return Wrapped()


def _weights_key(model: Any, names: list[str], output: str) -> str:
    """The cache entry of ``model``: a hash of what its graph is made from, the weights, the
    architecture's settings (its config: two models with the same weights but other heads or
    activations are other graphs) and the code that builds and runs it (torch, transformers,
    ONNX Runtime versions)."""
    import json

    import onnxruntime
    import torch
    import transformers

    config = model.config.to_dict()
    config.pop("_name_or_path", None)   # where it was loaded from does not change the graph
    h = hashlib.sha256()
    h.update(f"{torch.__version__}|{transformers.__version__}|{onnxruntime.__version__}|{_OPSET}|{names}|"
             f"{output}|{type(model).__name__}|{json.dumps(config, sort_keys=True, default=str)}".encode())
    for key, tensor in model.state_dict().items():
        h.update(key.encode())
        h.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())  # no copy
    return h.hexdigest()[:32]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter logs warnings (torchvision, deprecations) and ONNX Runtime's quantizer
    would configure the root logger: a library is quiet, so both are held back (its steps on
    stdout are switched off by ``verbose=False``; stdout itself is left alone, as other threads
    of the process print to it); an export that fails still raises."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "torch._dynamo", "torch.export",
                                              "torch._export", "onnx_ir", "torchvision", "onnxruntime")]
    levels = [lg.level for lg in loggers]
    root = logging.getLogger()
    # ONNX Runtime's quantizer calls logging.warning(), which would configure the root logger
    # (logging.basicConfig) when it has no handler: a handler that drops everything prevents it.
    sink = logging.NullHandler()
    root.addHandler(sink)
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeHandler(sink)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export(model: Any, names: list[str], output: str, target: Path) -> None:
    """Export ``model`` to the ONNX file ``target`` (its weights in a file beside it when the
    model is over 2 GB, protobuf's limit)."""
    import torch

    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it; imported here: 1.7 s)
    except ImportError as exc:
        raise ConfigError("runtime 'onnx' exports the model with torch.onnx's dynamo exporter, which needs "
                          "onnxscript: pip install 'hybridrag[onnx]'") from exc
    vocab = int(getattr(model.config, "vocab_size", 2) or 2)
    ids = torch.randint(low=min(5, vocab - 1), high=vocab, size=(2, 8))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    sample = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    args = tuple(sample[n] for n in names)
    axes = {n: {0: "batch", 1: "tokens"} for n in names}
    axes[output] = {0: "batch", 1: "tokens"} if output == "last_hidden_state" else {0: "batch"}
    with _quiet():
        program = torch.onnx.export(_Wrapped(model, names, output).eval(), args, None, input_names=names,
                                    output_names=[output], dynamic_axes=axes, opset_version=_OPSET, dynamo=True,
                                    verbose=False)
        program.save(str(target), external_data=_nbytes(model) >= _PROTOBUF_LIMIT)


def _quantize(source: Path, target: Path) -> None:
    """ONNX Runtime's dynamic int8 quantization of ``source`` into ``target``: MatMul weights
    int8 with one scale per output channel, activations quantized per call (as ``dtype="int8"``
    does in torch)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    big = sum(f.stat().st_size for f in source.parent.iterdir() if f.name.startswith(source.name)) >= _PROTOBUF_LIMIT
    with _quiet():
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                         use_external_data_format=big)


def _session(source: str, threads: int) -> Any:
    ort = _import_ort()
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])


def _nbytes(model: Any) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _build(model: Any, names: list[str], output: str, int8: bool, folder: Path, have: Path | None) -> Path:
    """Write the model's ONNX file(s) into ``folder`` (the int8 one quantized from ``have``, an
    fp32 export already at hand, or a new one); the path of the file to run."""
    fp32 = have if have is not None else folder / "model.onnx"
    if have is None:
        _export(model, names, output, fp32)
    if not int8:
        return fp32
    _quantize(fp32, folder / "model.int8.onnx")
    return folder / "model.int8.onnx"


_BUILDING = ".building-"   # the prefix of the folder an export is written into, inside the cache
_STALE_BUILD_S = 6 * 3600   # a folder that old is a killed export's (the M3-size export takes minutes)


def _remove_stale_builds(folder: Path) -> None:
    """Remove what killed exports left in the cache (their temporary folders, gigabytes for a
    large model); folders of exports that may still run (younger than ``_STALE_BUILD_S``) stay."""
    import time

    now = time.time()
    with contextlib.suppress(OSError):
        for d in folder.iterdir():
            with contextlib.suppress(OSError):
                if d.name.startswith(_BUILDING) and d.is_dir() and not d.is_symlink() \
                        and now - d.stat().st_mtime > _STALE_BUILD_S:
                    shutil.rmtree(d, ignore_errors=True)


def _publish(tmp: Path, entry: Path) -> None:
    """Move the files built in ``tmp`` into the cache entry, the ``.onnx`` files last (a reader
    looks for those), each by one rename."""
    entry.mkdir(parents=True, exist_ok=True)
    for f in sorted(tmp.iterdir(), key=lambda f: f.suffix == ".onnx"):
        os.replace(f, entry / f.name)


def to_onnx(model: Any, output: str, *, name: str, int8: bool = False, cache: str | os.PathLike[str] | None = None,
            threads: int | None = None) -> OnnxModel:
    """Export the torch ``model`` (float32, on the CPU) and open it in ONNX Runtime.

    ``output``: ``"last_hidden_state"`` (an encoder body) or ``"logits"`` (a cross-encoder).
    ``int8``: quantize the exported model (ONNX Runtime's dynamic int8). ``cache``: the
    directory to keep exported models in (else ``$HYBRIDRAG_ONNX_CACHE``; none: export into a
    temporary directory, removed once the session has read it). ``threads``: ONNX Runtime's
    intra-op threads (default: torch's). ``name`` names the model in errors.
    """
    import torch

    _import_ort()
    if threads is None:
        threads = torch.get_num_threads()
    names = _input_names(model)
    folder = onnx_cache_dir(cache)
    fname = "model.int8.onnx" if int8 else "model.onnx"
    try:
        if folder is None:
            with tempfile.TemporaryDirectory(prefix="hybridrag-onnx-") as tmp:
                session = _session(str(_build(model, names, output, int8, Path(tmp), None)), threads)
            return OnnxModel(session, model.config, names, output, "export")
        entry = folder / _weights_key(model, names, output)
        source, session = "cache", None
        if (entry / fname).is_file():
            try:
                session = _session(str(entry / fname), threads)
            except ConfigError:
                raise
            except Exception:  # a damaged entry (a disk that filled up, a file cut short): export again
                shutil.rmtree(entry, ignore_errors=True)
        if session is None:
            source = "export"
            try:
                folder.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(prefix=_BUILDING, dir=folder))
            except OSError as exc:
                raise ConfigError(f"the ONNX cache {str(folder)!r} cannot be written: {exc}. Set {CACHE_ENV} to a "
                                  f"folder you can write (or to 'off': export at every load)") from exc
            try:
                _remove_stale_builds(folder)
                have = entry / "model.onnx" if (entry / "model.onnx").is_file() else None
                try:
                    _build(model, names, output, int8, tmp, have)
                except Exception:
                    if have is None:
                        raise
                    # the entry's fp32 file cannot be quantized (cut short): export it again too
                    shutil.rmtree(tmp, ignore_errors=True)
                    tmp.mkdir()
                    _build(model, names, output, int8, tmp, None)
                _publish(tmp, entry)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            session = _session(str(entry / fname), threads)
    except ConfigError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"could not export {name!r} to ONNX for runtime 'onnx': "
                             f"{type(exc).__name__}: {exc}".strip()) from exc
    return OnnxModel(session, model.config, names, output, source, entry / fname)
