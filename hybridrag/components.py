"""The models and text tools an index uses, built from its pipeline: the neural encoder (M3
or any dense model), the cross-encoder reranker, the BM25 analyser and vocabulary, and the
token-aware chunker. :class:`hybridrag.index.HybridIndex` builds each on first use."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from hybridrag.config import PipelineConfig, resolve_model_path
from hybridrag.errors import ConfigError, IndexFormatError
from hybridrag.storage.commit import model_fingerprint

__all__ = ["load_encoder", "load_reranker", "make_bm25", "make_chunker"]


def load_encoder(pipeline: PipelineConfig, device: str | None, manifest: Mapping[str, Any] | None,
                 runtime: str | None = None) -> Any:
    """The pipeline's encoder; refused when its files are not those the index was built with.
    ``runtime``: in place of the pipeline's ``encoder.runtime``."""
    e = pipeline.encoder
    runtime = runtime or e.runtime
    path = resolve_model_path(e.model)
    dtype = e.dtype or None
    if e.kind == "m3":
        from hybridrag.encoders.m3 import M3Encoder

        enc: Any = M3Encoder.from_pretrained(path, device=device, dtype=dtype, query_cache=e.query_cache,
                                             runtime=runtime)
    else:
        from hybridrag.encoders.dense import DenseEncoder

        enc = DenseEncoder.from_pretrained(path, device=device, dtype=dtype, pooling=e.pooling or None,
                                           normalize=e.normalize, query_instruction=e.query_instruction or None,
                                           query_cache=e.query_cache, runtime=runtime)
    if manifest is not None:
        saved = manifest.get("models", {}).get("encoder", {})
        now = model_fingerprint(path)
        if saved.get("fingerprint") and now.get("fingerprint") and saved["fingerprint"] != now["fingerprint"]:
            raise IndexFormatError(
                f"the encoder at {path!r} is not the one this index was built with "
                f"({saved.get('resolved')!r}, revision {saved.get('revision', 'unknown')}); "
                "queries would not match the stored vectors")
    return enc


def load_reranker(pipeline: PipelineConfig, device: str | None, runtime: str | None = None) -> Any:
    """The pipeline's cross-encoder; ``runtime``: in place of its ``rerank.runtime``."""
    r = pipeline.rerank
    from hybridrag.rerankers.cross_encoder import CrossEncoderReranker

    return CrossEncoderReranker.from_pretrained(resolve_model_path(r.model), device=device, dtype=r.dtype or None,
                                                max_length=r.max_length, runtime=runtime or r.runtime)


def make_bm25(pipeline: PipelineConfig, encoder: Callable[[], Any], vocabulary: Mapping[str, int] | None) -> Any:
    """The BM25 encoder with the pipeline's analyser and the index's vocabulary (``encoder()``
    gives the neural encoder, whose tokenizer the ``subword`` analyser uses)."""
    from hybridrag.analysis import SubwordAnalyzer, UnicodeAnalyzer, WordAnalyzer
    from hybridrag.encoders.bm25 import BM25Encoder

    c = pipeline.bm25
    if c.analyzer == "subword":
        analyzer: Any = SubwordAnalyzer(encoder().tokenizer)
    elif c.analyzer == "unicode":
        analyzer = UnicodeAnalyzer(lowercase=True, language=c.language or c.stemmer or None,
                                   stopwords=c.stopwords or None, normalization=c.normalization)
    else:
        analyzer = WordAnalyzer(lowercase=True, stopwords=c.stopwords or None, stemmer=c.stemmer or None)
    enc = BM25Encoder(analyzer, variant=c.variant, k1=c.k1, b=c.b, epsilon=c.epsilon)
    if vocabulary is not None:
        enc.vocabulary = dict(vocabulary)
    return enc


def make_chunker(pipeline: PipelineConfig, encoder: Callable[[], Any]) -> Any:
    from hybridrag.chunking import Chunker

    c = pipeline.chunking
    tok = encoder().tokenizer if pipeline.encoder.kind != "none" else None
    if tok is not None and c.max_tokens + 2 > pipeline.encoder.max_length:
        raise ConfigError(f"chunking.max_tokens = {c.max_tokens} does not fit encoder.max_length = "
                          f"{pipeline.encoder.max_length} (2 positions go to special tokens)")
    return Chunker(tokenizer=tok, max_tokens=c.max_tokens, overlap=c.overlap)
