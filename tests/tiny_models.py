"""Build tiny, random-weight model folders on the fly, in the layouts users download.

Nothing here is downloaded: the tokenizers are built with ``tokenizers`` from a few
sentences (the same pieces and ids in every process), the transformer weights are random
(seeded), and the folders are saved exactly as Hugging Face / FlagEmbedding / sentence-transformers save them, so the
engine's real loading code path is exercised.

* :func:`make_m3_folder`      - XLM-RoBERTa + ``colbert_linear.pt`` + ``sparse_linear.pt`` (BGE-M3 layout)
* :func:`make_reranker_folder` - XLM-RoBERTa sequence classifier with one label (bge-reranker layout)
* :func:`make_bert_folder`    - tiny BERT with a sentence-transformers mean-pooling config
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Retrieval augmented generation combines search with language models.",
    "Dense vectors, sparse lexical weights and ColBERT token vectors.",
    "FAISS stores dense vectors; an inverted index stores sparse weights.",
    "Vitamin D deficiency is associated with bone fractures in older adults.",
    "Aspirin reduces the risk of heart attack in some patients.",
    "混合检索结合了稠密向量和稀疏词权重。",
    "中文文本没有空格分隔单词。",
    "الاسترجاع الهجين يجمع بين المتجهات الكثيفة والأوزان المتفرقة",
    "Emoji test 🚀🔥 retrieval is fun 😀 👍",
    "Les modèles de langue répondent aux questions en français.",
    "日本語のテキストには単語の区切りがありません。",
] * 4

SEED = 1234


def _word_counts(normalizer, pre_tokenizer) -> Counter:
    """How often each pre-tokenized word of :data:`CORPUS` occurs."""
    words: Counter = Counter()
    for text in CORPUS:
        for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)):
            words[w] += 1
    return words


def _frequent_substrings(words: Counter, n: int, max_len: int = 8) -> list[tuple[str, int]]:
    """The ``n`` substrings (2..``max_len`` characters, seen at least twice) that cover the
    most characters of the corpus, ties by the string: a fixed order in every process."""
    subs: Counter = Counter()
    for w, c in words.items():
        for size in range(2, min(len(w), max_len) + 1):
            for i in range(len(w) - size + 1):
                subs[w[i:i + size]] += c
    ranked = sorted((s for s, c in subs.items() if c >= 2), key=lambda s: (-subs[s] * len(s), s))
    return [(s, subs[s]) for s in ranked[:n]]


def _train_tokenizer(vocab_size: int = 200):
    """A Unigram tokenizer (XLM-R's model type) over :data:`CORPUS`: every character plus its
    most frequent substrings, scored by log frequency. Built in Python rather than by the
    library's ``UnigramTrainer``, whose pieces (and so every tiny model's outputs) differed
    from one process to the next (its hash maps are randomly seeded)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    normalizer, pre_tokenizer = normalizers.NFKC(), pre_tokenizers.Metaspace()
    words = _word_counts(normalizer, pre_tokenizer)
    chars: Counter = Counter()
    for w, c in words.items():
        for ch in w:
            chars[ch] += c
    pieces = dict(chars)
    pieces.update(_frequent_substrings(words, vocab_size - len(specials) - len(chars)))
    total = sum(pieces.values())
    scored = sorted(((p, math.log(c / total)) for p, c in pieces.items()), key=lambda x: (-x[1], x[0]))
    tok = Tokenizer(models.Unigram([(sp, 0.0) for sp in specials] + scored, unk_id=3))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    tok.decoder = decoders.Metaspace()
    return tok


def _wordpiece_tokenizer(vocab_size: int = 300):
    """A lower-casing BERT WordPiece tokenizer over :data:`CORPUS`, built in a fixed order
    (specials, characters, ``##`` characters, frequent substrings as word starts and as
    ``##`` continuations) instead of by ``WordPieceTrainer``, whose ids varied by process."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = _word_counts(normalizer, pre_tokenizer)
    chars = sorted({ch for w in words for ch in w})
    vocab = specials + chars + ["##" + ch for ch in chars]
    n_subs = max(0, (vocab_size - len(vocab)) // 2)
    for sub, _ in _frequent_substrings(words, n_subs):
        vocab += [sub, "##" + sub]
    raw = Tokenizer(models.WordPiece({p: i for i, p in enumerate(dict.fromkeys(vocab))}, unk_token="[UNK]"))
    raw.normalizer = normalizer
    raw.pre_tokenizer = pre_tokenizer
    return raw


def _xlmr_tokenizer(model_max_length: int = 8192):
    from transformers import XLMRobertaTokenizerFast

    return XLMRobertaTokenizerFast(
        tokenizer_object=_train_tokenizer(),
        bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
        model_max_length=model_max_length,
    )


def _xlmr_config(vocab_size: int, hidden: int = 32, layers: int = 2, max_pos: int = 1024, **kw):
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=max_pos + 2,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1, **kw,
    )


def make_m3_folder(path: str | Path, hidden: int = 32, max_pos: int = 1024) -> Path:
    """A BGE-M3-layout folder: XLM-RoBERTa weights, tokenizer, colbert/sparse heads."""
    import torch
    from transformers import XLMRobertaModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    tok = _xlmr_tokenizer()
    model = XLMRobertaModel(_xlmr_config(len(tok), hidden=hidden, max_pos=max_pos), add_pooling_layer=False)
    model.eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    torch.save(torch.nn.Linear(hidden, hidden).state_dict(), path / "colbert_linear.pt")
    torch.save(torch.nn.Linear(hidden, 1).state_dict(), path / "sparse_linear.pt")
    return path


def make_reranker_folder(path: str | Path, hidden: int = 32, max_pos: int = 1024) -> Path:
    """A bge-reranker-layout folder: XLMRobertaForSequenceClassification with one label."""
    import torch
    from transformers import XLMRobertaForSequenceClassification

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED + 1)
    tok = _xlmr_tokenizer()
    model = XLMRobertaForSequenceClassification(_xlmr_config(len(tok), hidden=hidden, max_pos=max_pos, num_labels=1))
    model.eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_bert_folder(path: str | Path, hidden: int = 32, pooling: str = "mean", normalize: bool = True) -> Path:
    """A tiny BERT saved as a sentence-transformers folder (modules.json, 1_Pooling, 2_Normalize)."""
    import torch
    from tokenizers import processors
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED + 2)
    raw = _wordpiece_tokenizer()
    cls_id, sep_id = raw.token_to_id("[CLS]"), raw.token_to_id("[SEP]")
    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok = BertTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=512)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(path)
    tok.save_pretrained(path)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (path / "2_Normalize").mkdir(exist_ok=True)
    (path / "modules.json").write_text(json.dumps(modules, indent=2))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }))
    return path
