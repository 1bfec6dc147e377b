"""Write a HuggingFace ``tokenizers`` JSON that reproduces open_clip's ``SimpleTokenizer``.

Built from open_clip's own BPE file (``bpe_simple_vocab_16e6.txt.gz``), no network. What the
JSON does: pre-tokenise with open_clip's regex, map bytes to unicode (GPT-2 table, the same as
CLIP's ``bytes_to_unicode``), BPE with a ``</w>`` end-of-word suffix, add SOT/EOT, truncate and
pad to ``context_length`` as ``open_clip.tokenize``. What it does not do: text cleaning (ftfy,
HTML unescaping, whitespace, lower-casing) and recognising literal ``<start_of_text>`` in user
text; ``clip_rt.inputs.tokenizer`` does those in Python, exactly as open_clip does.

Why the regex is spelled out codepoint by codepoint: open_clip splits with the ``regex`` module
(its own, recent Unicode database, ``IGNORECASE``), ``tokenizers`` with Oniguruma (an older
Unicode database, and different case-folding of classes). ``\\p{L}`` differs between the two on
recently assigned codepoints, so the classes are evaluated here with open_clip's
own compiled pattern semantics and written as explicit ranges.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
# open_clip: merges[1:49152-256-2+1] of the BPE file.
NUM_MERGES = 49152 - 256 - 2
CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")
_MAX_CODEPOINT = 0x110000


def _all_codepoints() -> str:
    """Every codepoint but the surrogates, in order, as one string (to scan in one regex pass)."""
    return "".join(chr(cp) for cp in range(_MAX_CODEPOINT) if not 0xD800 <= cp < 0xE000)


def _ranges(pattern: Any, text: str) -> list[tuple[int, int]]:
    """Codepoint ranges of the single characters *pattern* matches in *text*."""
    out: list[tuple[int, int]] = []
    for m in pattern.finditer(text):
        cp = ord(m.group())
        if out and out[-1][1] == cp - 1:
            out[-1] = (out[-1][0], cp)
        else:
            out.append((cp, cp))
    return out


def _char_class(ranges: list[tuple[int, int]]) -> str:
    parts = []
    for lo, hi in ranges:
        parts.append(f"\\x{{{lo:X}}}" if lo == hi else f"\\x{{{lo:X}}}-\\x{{{hi:X}}}")
    return "[" + "".join(parts) + "]"


def split_pattern() -> str:
    """open_clip's pre-tokeniser regex (minus its special tokens) with explicit classes.

    ``'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`` under ``regex.IGNORECASE``,
    evaluated per codepoint with the ``regex`` module open_clip uses.
    """
    import regex

    flags = regex.IGNORECASE
    chars = _all_codepoints()

    def members(pattern: str) -> str:
        return _char_class(_ranges(regex.compile(pattern, flags), chars))

    # An IGNORECASE literal matches more than itself, e.g. 's' also matches 'S' and U+017F.
    contractions = ["'" + "".join(members(regex.escape(ch)) for ch in word) for word in CONTRACTIONS]
    return "|".join(contractions + [members(r"[\p{L}]") + "+", members(r"[\p{N}]"), members(r"[^\s\p{L}\p{N}]") + "+"])


def _open_clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges, built as ``SimpleTokenizer.__init__`` builds them."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe()) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += [SOT_TOKEN, EOT_TOKEN]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise RuntimeError("open_clip's BPE vocabulary has duplicate tokens; cannot build ids")
    return vocab, [(a, b) for a, b in merges]


def _id_to_token(vocab: dict[str, int], token_id: int) -> str:
    return next(tok for tok, i in vocab.items() if i == token_id)


def build_tokenizer_json(context_length: int) -> str:
    """The tokenizer JSON text (deterministic: same open_clip and regex versions, same bytes)."""
    if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 2:
        raise ValueError(f"context_length must be an int >= 2 (room for SOT and EOT), got {context_length!r}")
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    vocab, merges = _open_clip_vocab()
    model = BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>", fuse_unk=False)
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split_pattern()), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    # SOT/EOT are deliberately *not* added tokens: HF would then match them anywhere in the
    # text, open_clip only where its regex scan starts a match (see clip_rt.inputs.tokenizer).
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SOT_TOKEN} $A {EOT_TOKEN}",
        special_tokens=[(SOT_TOKEN, vocab[SOT_TOKEN]), (EOT_TOKEN, vocab[EOT_TOKEN])],
    )
    tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace("</w>", " ")])
    # For standalone use: truncation keeps SOT + the first context_length-2 tokens + EOT and
    # padding uses id 0, both exactly as open_clip.tokenize. clip_rt turns both off and does
    # them in numpy, because it reports the untruncated lengths.
    tok.enable_truncation(max_length=context_length)
    tok.enable_padding(length=context_length, pad_id=0, pad_token=_id_to_token(vocab, 0))
    # tokenizers rejects unknown top-level keys, so context_length lives in the manifest only;
    # re-serialising with sorted keys makes the bytes independent of map ordering in Rust.
    data = json.loads(tok.to_str())
    return json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def write_tokenizer(path: Path, context_length: int) -> None:
    """Write the tokenizer JSON to *path* atomically."""
    path = Path(path)
    text = build_tokenizer_json(context_length)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
