"""Encoding in several processes feeding one writer (``HybridIndex.encoding_pool``).

An index has one writer (its ``LOCK``), but the encoder pass is most of an ingest's time and
one model copy uses one device. :class:`EncoderPool` starts one process per device named
(``"cuda:0"``, ``"cuda:1"``, or ``"cpu"`` several times), each loading the pipeline's model
once (the manifest's fingerprint check included); :meth:`EncoderPool.encode` splits each
batch of texts into contiguous parts, one per process, and joins their outputs in order, so
the writer adds the same rows under the same slots as with one in-process encoder. Everything
else the writer asks of an encoder (its dimensions, its config, query encoding) goes to the
in-process encoder, loaded only if asked for.

Processes are started with ``spawn`` (CUDA cannot be used in a forked child), so the first
batch waits for every process to import torch and load the model, and a script that starts a
pool must do it under ``if __name__ == "__main__":`` (spawned processes import the script); a process that dies (out of
memory, killed) makes the next ``encode`` raise :class:`EncoderPoolError`, the write raising
it rolls back, and the pool is unusable (close it). On CPUs the processes share the cores:
each uses ``cores // processes`` threads.

Several machines: the index has one writer, so spread the encoding, not the writing: run the
encoder where the GPUs are (``M3Encoder.encode`` gives the rows ``HybridIndex`` stores) or
split the corpus between machines into separate indexes. Tested in ``tests/test_encode_pool.py``.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from hybridrag.encoders.base import EncodeOutput
from hybridrag.errors import ConfigError, EncoderPoolError

__all__ = ["EncoderPool"]

_ENCODER: Any = None   # in a pool process: its model, loaded by the first encode
_ARGS: tuple = ()       # in a pool process: how to load it


def _start(pipeline: Any, device: str, manifest: Mapping[str, Any] | None, threads: int) -> None:
    global _ARGS
    _ARGS = (pipeline, device, manifest, threads)


def _encode(texts: list[str], kwargs: dict[str, Any]) -> EncodeOutput:
    # The model is loaded here, not in the initializer: an error (a missing model, another
    # model than the index's) then reaches the writer as itself, not as a broken pool.
    global _ENCODER
    if _ENCODER is None:
        import torch

        from hybridrag.components import load_encoder

        pipeline, device, manifest, threads = _ARGS
        if device == "cpu":
            torch.set_num_threads(threads)
        _ENCODER = load_encoder(pipeline, device, manifest)
    return _ENCODER.encode(texts, **kwargs)


def _join(outs: list[EncodeOutput]) -> EncodeOutput:
    if len(outs) == 1:
        return outs[0]
    first = outs[0]
    return EncodeOutput(
        dense=None if first.dense is None else np.concatenate([o.dense for o in outs]),
        sparse=None if first.sparse is None else [r for o in outs for r in o.sparse],
        colbert=None if first.colbert is None else [r for o in outs for r in o.colbert])


class EncoderPool:
    """One encoder process per entry of ``devices``, for the model of ``pipeline`` (a
    :class:`~hybridrag.config.PipelineConfig`); ``manifest``: the index's, whose encoder
    fingerprint each process checks; ``local``: returns the in-process encoder, for everything
    but :meth:`encode`. Close it (or use it as a context manager)."""

    def __init__(self, pipeline: Any, devices: Sequence[str], manifest: Mapping[str, Any] | None = None,
                 local: Callable[[], Any] | None = None) -> None:
        if isinstance(devices, str) or not devices or not all(isinstance(d, str) and d for d in devices):
            raise ConfigError(f"devices must be a non-empty list of device names (e.g. ['cuda:0', 'cuda:1'] "
                              f"or ['cpu', 'cpu']), got {devices!r}")
        if pipeline.encoder.kind == "none":
            raise ConfigError(f"pipeline {pipeline.name!r} has no neural encoder to run in several processes")
        self._local = local
        ctx = multiprocessing.get_context("spawn")
        cpus = sum(d == "cpu" for d in devices)
        threads = max(1, (os.cpu_count() or 1) // max(cpus, 1))
        self._pools = [ProcessPoolExecutor(1, mp_context=ctx, initializer=_start,
                                           initargs=(pipeline, d, manifest, threads)) for d in devices]
        self.devices = list(devices)

    def encode(self, texts: Sequence[str], **kwargs: Any) -> EncodeOutput:
        """``texts`` encoded as the pipeline's encoder would, in contiguous parts, one per
        process (each at most ``ceil(len / processes)`` texts)."""
        texts = list(texts)
        if not self._pools:
            raise EncoderPoolError("the encoder pool is closed")
        step = -(-len(texts) // len(self._pools)) or 1
        parts = [texts[a:a + step] for a in range(0, len(texts), step)] or [[]]
        try:
            futures = [pool.submit(_encode, part, kwargs) for pool, part in zip(self._pools, parts)]
            return _join([f.result() for f in futures])
        except BrokenProcessPool as e:
            raise EncoderPoolError(f"an encoder process (devices {self.devices}) died or failed to start: {e}; "
                                   "close the pool (a script that starts one must run under "
                                   "`if __name__ == '__main__':`: its processes are spawned and import it)") from None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or self.__dict__.get("_local") is None:
            raise AttributeError(name)
        return getattr(self._local(), name)

    def close(self) -> None:
        """Stop the processes (waits for them to exit)."""
        pools, self._pools = self._pools, []
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "EncoderPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
