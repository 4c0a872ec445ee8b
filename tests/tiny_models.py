"""Build tiny, random-weight model folders on the fly, in the layouts users download.

Nothing here is downloaded: the tokenizer is trained with ``tokenizers`` on a few
sentences, the transformer weights are random (seeded), and the folders are saved
exactly as Hugging Face / FlagEmbedding / sentence-transformers save them, so the
engine's real loading code path is exercised.

* :func:`make_m3_folder`      - XLM-RoBERTa + ``colbert_linear.pt`` + ``sparse_linear.pt`` (BGE-M3 layout)
* :func:`make_reranker_folder` - XLM-RoBERTa sequence classifier with one label (bge-reranker layout)
* :func:`make_bert_folder`    - tiny BERT with a sentence-transformers mean-pooling config
"""
from __future__ import annotations

import json
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


def _train_tokenizer(vocab_size: int = 600):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        unk_token="<unk>",
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    from tokenizers import decoders

    tok.decoder = decoders.Metaspace()
    return tok


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
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED + 2)
    raw = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    raw.normalizer = normalizers.BertNormalizer(lowercase=True)
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    raw.train_from_iterator(
        CORPUS, trainer=trainers.WordPieceTrainer(vocab_size=500, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    )
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
