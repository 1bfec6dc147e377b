"""Small Hugging Face tokenizers built with the `tokenizers` library, shaped like the real ones of
open_clip's multilingual and SigLIP models (hubs are unreachable here, so the real files are not):

- ``xlmr``: SentencePiece-style Unigram with XLM-R's special ids (<s>=0, <pad>=1, </s>=2,
  <unk>=3, <mask> last), tokenizer_config of ``XLMRobertaTokenizer``;
- ``t5``: Unigram with T5's special ids (<pad>=0, </s>=1, <unk>=2) and SigLIP's settings
  (pad = eos = "</s>"), tokenizer_config of ``T5Tokenizer``;
- ``gemma``: byte-fallback BPE without a pre-tokenizer, Gemma's special ids (<pad>=0, <eos>=1,
  <bos>=2, <unk>=3), tokenizer_config of ``GemmaTokenizer`` (SigLIP2);
- ``bert``: lower-casing WordPiece with BERT's specials, tokenizer_config of ``BertTokenizer``;
- ``roberta``: byte-level BPE (GPT-2 style, no prefix space) with RoBERTa's special ids (<s>=0,
  <pad>=1, </s>=2, <unk>=3, <mask> last) and its post-processor, tokenizer_config of
  ``RobertaTokenizer``;
- ``nllb``: SentencePiece-style BPE (Metaspace; NLLB's ``sentencepiece.bpe.model`` is a BPE
  model, and transformers' ``NllbTokenizer`` rebuilds a BPE from the file's vocabulary and
  merges) with NLLB's special ids (<s>=0, <pad>=1, </s>=2, <unk>=3), tokenizer_config of
  ``NllbTokenizer`` (``src_lang`` eng_Latn; transformers appends the language codes and <mask>).

Each is trained on the same deterministic text (templates, class names, several scripts
including Chinese), so every id is far below the real vocabulary sizes (250002, 32000,
256000, 30522, 50265, 256206) and the real architectures can embed them.
"""

from __future__ import annotations

import json
from pathlib import Path

from clip_rt.templates import IMAGENET

LABELS = Path(__file__).resolve().parent / "data" / "tokenizer_labels.txt"
MULTILINGUAL = [
    "一只猫的照片",
    "一只狗的照片",
    "一辆汽车的照片",
    "一架飞机的照片",
    "猫",
    "狗",
    "汽车",
    "飞机",
    "宇航员",
    "咖啡杯",
    "火箭",
    "摩托车",
    "这是一张照片",
    "猫の写真",
    "고양이 사진",
    "صورة قطة",
    "фотография кошки",
    "une photo d'un chat",
    "ein Foto einer Katze",
    "una foto de un gato",
    "Ελλάδα",
    "รูปแมว",
    "तस्वीर एक बिल्ली की",
    "Việt Nam",
]


def training_text() -> list[str]:
    labels = [line.strip() for line in LABELS.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [t.format(lab) for lab in labels[:400] for t in IMAGENET[::10]]
    return texts + MULTILINGUAL * 20 + labels


def _train_unigram(specials: list[str], vocab_size: int):  # noqa: ANN202
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(training_text(), trainer)
    return tok


def build(kind: str, folder: Path) -> Path:
    """Write the *kind* tokenizer (tokenizer.json + tokenizer_config.json) into *folder*."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    folder.mkdir(parents=True, exist_ok=True)
    if kind == "xlmr":
        tok = _train_unigram(["<s>", "<pad>", "</s>", "<unk>"], 3000)
        tok.add_special_tokens(["<mask>"])
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
        )
        config = {
            "tokenizer_class": "XLMRobertaTokenizer",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "sep_token": "</s>",
            "cls_token": "<s>",
            "unk_token": "<unk>",
            "pad_token": "<pad>",
            "mask_token": "<mask>",
            "model_max_length": 512,
        }
    elif kind == "t5":
        tok = _train_unigram(["<pad>", "</s>", "<unk>"], 3000)
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
        config = {
            "tokenizer_class": "T5Tokenizer",
            "eos_token": "</s>",
            "pad_token": "</s>",
            "unk_token": "<unk>",
            "extra_ids": 0,
            "legacy": False,
            "model_max_length": 64,
        }
    elif kind == "gemma":
        tok = Tokenizer(models.BPE(byte_fallback=True, fuse_unk=True, unk_token="<unk>"))
        tok.normalizer = normalizers.Replace(" ", "\u2581")
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
        byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
        trainer = trainers.BpeTrainer(
            vocab_size=3000, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>", *byte_tokens], show_progress=False
        )
        tok.train_from_iterator(training_text(), trainer)
        config = {
            "tokenizer_class": "GemmaTokenizer",
            "bos_token": "<bos>",
            "eos_token": "<eos>",
            "pad_token": "<pad>",
            "unk_token": "<unk>",
            "add_bos_token": False,
            "add_eos_token": True,
            "padding_side": "right",
            "model_max_length": 64,
        }
    elif kind == "bert":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=3000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False
        )
        tok.train_from_iterator(training_text(), trainer)
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": True,
            "unk_token": "[UNK]",
            "sep_token": "[SEP]",
            "pad_token": "[PAD]",
            "cls_token": "[CLS]",
            "mask_token": "[MASK]",
            "model_max_length": 512,
        }
    elif kind == "roberta":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=3000,
            special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(training_text(), trainer)
        tok.add_special_tokens(["<mask>"])
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False)
        config = {
            "tokenizer_class": "RobertaTokenizer",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "sep_token": "</s>",
            "cls_token": "<s>",
            "unk_token": "<unk>",
            "pad_token": "<pad>",
            "mask_token": "<mask>",
            "add_prefix_space": False,
            "model_max_length": 512,
        }
    elif kind == "nllb":
        tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
        trainer = trainers.BpeTrainer(
            vocab_size=3000, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], show_progress=False
        )
        tok.train_from_iterator(training_text(), trainer)
        tok.add_special_tokens(["eng_Latn", "<mask>"])
        tok.post_processor = processors.TemplateProcessing(
            single="eng_Latn $A </s>", special_tokens=[("eng_Latn", tok.token_to_id("eng_Latn")), ("</s>", 2)]
        )
        config = {
            "tokenizer_class": "NllbTokenizer",
            "src_lang": "eng_Latn",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "sep_token": "</s>",
            "cls_token": "<s>",
            "unk_token": "<unk>",
            "pad_token": "<pad>",
            "mask_token": "<mask>",
            "model_max_length": 1024,
        }
    else:
        raise ValueError(kind)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


KINDS = ("xlmr", "t5", "gemma", "bert", "roberta", "nllb")
