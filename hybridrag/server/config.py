"""Limits and batching settings of ``hybridrag serve`` (each has a command-line flag);
kept apart from the engine so that building the CLI parser imports nothing heavy."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Limits:
    """What one request may ask for (each has a ``hybridrag serve`` flag)."""

    max_body_bytes: int = 8 * 1024 * 1024   # --max-body-bytes
    max_k: int = 1000                       # --max-k
    max_depth: int = 10000                  # --max-depth (first-stage depth and rerank_k)
    max_queries: int = 256                  # --max-queries (queries in one request)
    max_documents: int = 10000              # --max-documents (documents in one write request)
    max_queue: int = 4096                   # --max-queue (queries waiting; more gets 503)
    max_query_chars: int = 65536            # --max-query-chars (one query's text; a 7.6 MB one held every search 23 s)


@dataclass
class BatchConfig:
    wait_ms: float = 2.0     # --batch-wait-ms: longest wait for more requests after the first
    max_batch: int = 64      # --max-batch: queries per search_batch call (one bigger request runs alone)
