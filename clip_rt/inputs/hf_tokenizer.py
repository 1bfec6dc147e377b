"""Tokenisation as open_clip's ``HFTokenizer`` runs a Hugging Face tokenizer (torch-free).

A bundle of kind ``hf`` (``text.tokenizer_kind``) carries the ``tokenizer.json`` that
transformers built for open_clip at export (normaliser, pre-tokeniser, model and the
post-processor that adds the special tokens), and the manifest says what open_clip does around
it: the cleaning (``text.clean``: ``whitespace``, ``lower`` or SigLIP's ``canonicalize``), the
context length, truncation and padding sides, the padding id, and ``strip_sep_token``. This
module reproduces ``HFTokenizer.__call__``: clean, encode with the special tokens, truncate to
the context length (transformers' ``truncation=True``: the text's tokens are cut so that they
and the special tokens fit), pad to the context length (``padding="max_length"``).

Texts longer than LONG_TEXT characters are cut before cleaning and tokenising, where the cut
provably changes none of the ids the context keeps (see :meth:`HfTokenizer._long_ids`).
"""

from __future__ import annotations

import html
import os
import string
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

from ..bundle.manifest import TextConfig
from ..errors import BundleError, InputError
from .tokenizer import (
    _CUT_RE,
    _MAX_SEGMENT,
    _PLAIN_ASCII_RE,
    LONG_TEXT,
    MAX_WORD,
    TextTokenizer,
    TokenBatch,
    _cut_point,
    _default_fix_text,
    _Fd2Capture,
    _load_hf_tokenizer,
    _segment_end,
    is_rust_panic,
)

if TYPE_CHECKING:
    from tokenizers import Encoding, Tokenizer

_PUNCTUATION = str.maketrans("", "", string.punctuation)
# Characters tokenizers use to mark a word start after replacing the space (SentencePiece's
# U+2581, byte-level BPE's U+0120) and the space itself.
_SPACE_MARKERS = ("\u2581", "\u0120", " ")


def clean_text(text: str, clean: str, fix_text: Callable[[str], str]) -> str:
    """open_clip's ``get_clean_fn(clean)(text)``: ``basic_clean`` (ftfy, HTML unescaped twice,
    stripped), then ``whitespace`` (collapse whitespace), ``lower`` (and lower-case) or
    ``canonicalize`` (underscores to spaces, ASCII punctuation removed, lower-cased, collapsed)."""
    if not _PLAIN_ASCII_RE.fullmatch(text):  # ftfy changes nothing here (see tokenizer.clean_text)
        text = html.unescape(html.unescape(fix_text(text)))
    return _after_basic_clean(text.strip(), clean)


def _after_basic_clean(text: str, clean: str) -> str:
    if clean == "canonicalize":
        text = text.replace("_", " ").translate(_PUNCTUATION).lower()
        return " ".join(text.split()).strip()
    text = " ".join(text.split()).strip()
    return text.lower() if clean == "lower" else text


class HfTokenizer:
    """Tokenises text exactly as open_clip's ``HFTokenizer`` with the bundle's tokenizer."""

    def __init__(
        self,
        hf_tokenizer: Tokenizer,
        text_config: TextConfig,
        use_ftfy: Optional[bool] = None,
        source: str = "tokenizer",
    ) -> None:
        self._tok = hf_tokenizer
        self.source = source
        self.config = text_config
        self.context_length = int(text_config.context_length)
        self.pad_token_id = int(text_config.pad_token_id)
        self.sot_token_id = text_config.sot_token_id
        self.eot_token_id = text_config.eot_token_id
        self._fix_text, self.uses_ftfy = _default_fix_text(use_ftfy)
        self._max_segment = _MAX_SEGMENT
        if self.uses_ftfy:  # the segment length ftfy.fix_text uses (see _long_part)
            import ftfy

            self._max_segment = ftfy.TextFixerConfig().max_decode_length
        self._added = int(self._tok.num_special_tokens_to_add(False))
        if self.context_length <= self._added:
            raise BundleError(
                f"{source}: text.context_length {self.context_length} leaves no room for text "
                f"next to the tokenizer's {self._added} special token(s)"
            )
        if text_config.dynamic_sequence and text_config.padding_side != "right":
            raise BundleError(
                f"{source}: text.dynamic_sequence needs right padding, the manifest says {text_config.padding_side!r}"
            )
        if text_config.strip_sep_token and text_config.sep_token_id is None:
            raise BundleError(f"{source}: text.strip_sep_token is set but text.sep_token_id is not")
        self._check_vocab()
        self._cut_safe = text_config.truncation_side == "right" and _cut_is_safe(self._tok)

    @classmethod
    def from_file(cls, path: Path, text_config: TextConfig, use_ftfy: Optional[bool] = None) -> HfTokenizer:
        path = Path(path)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise BundleError(f"{path}: tokenizer file is missing") from None
        return cls(_load_hf_tokenizer(str(path), st.st_mtime_ns, st.st_size), text_config, use_ftfy, source=str(path))

    def _check_vocab(self) -> None:
        vocab = self._tok.get_vocab(with_added_tokens=True)
        top = max(vocab.values()) if vocab else -1
        if top >= self.config.vocab_size:
            raise BundleError(
                f"{self.source}: the tokenizer has ids up to {top}, beyond the manifest's "
                f"text.vocab_size of {self.config.vocab_size}"
            )
        for name in ("pad_token_id", "sep_token_id"):
            value = getattr(self.config, name)
            if value is not None and not 0 <= value < self.config.vocab_size:
                raise BundleError(
                    f"{self.source}: text.{name}={value} is outside the vocabulary (0..{self.config.vocab_size - 1})"
                )

    # -- public API -----------------------------------------------------------------------------
    def clean(self, text: str) -> str:
        return clean_text(text, self.config.clean, self._fix_text)

    def encode_batch(self, texts: Sequence[str]) -> TokenBatch:
        """Ids for *texts*, (N, context_length), as open_clip's ``HFTokenizer(texts)``."""
        contents, cut = self._contents(texts)
        n, length, keep = len(contents), self.context_length, self.context_length - self._added
        ids = np.full((n, length), self.pad_token_id, dtype=np.int64)
        counts = np.empty(n, dtype=np.int64)
        lengths = np.empty(n, dtype=np.int64)
        side = self.config.truncation_side
        for i, enc in enumerate(contents):
            counts[i] = len(enc.ids) + self._added
            if len(enc.ids) > keep:
                enc.truncate(keep, 0, side)
            row = self._tok.post_process(enc, None, True).ids
            lengths[i] = len(row)
            if self.config.padding_side == "right":
                ids[i, : len(row)] = row
            else:
                ids[i, length - len(row) :] = row
        if self.config.strip_sep_token:
            ids[ids == self.config.sep_token_id] = 0
        return TokenBatch(
            ids=ids, lengths=lengths, truncated=counts > length, token_counts=counts, cut=np.array(cut, dtype=bool)
        )

    def count_tokens(self, texts: Sequence[str]) -> np.ndarray:
        """Ids each text needs with its special tokens, before truncation (a lower bound for a
        text cut before tokenising, which is longer than the context anyway)."""
        contents, _ = self._contents(texts)
        return np.fromiter((len(e.ids) + self._added for e in contents), dtype=np.int64, count=len(contents))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of one row of ids, special tokens and padding dropped."""
        return str(self._tok.decode([int(i) for i in ids], skip_special_tokens=True))

    # -- internals ------------------------------------------------------------------------------
    def _validated(self, texts: Sequence[str]) -> list[str]:
        if isinstance(texts, (str, bytes)):
            raise InputError(f"expected a sequence of strings, got a single {type(texts).__name__}; wrap it in a list")
        out = list(texts)
        for i, t in enumerate(out):
            if not isinstance(t, str):
                raise InputError(f"text #{i} must be a str, got {type(t).__name__}: {t!r:.60}")
        return out

    def _contents(self, texts: Sequence[str]) -> tuple[list[Encoding], list[bool]]:
        """Per text: its ``tokenizers`` Encoding without special tokens (untruncated, or the
        start of a long text), and whether the text was cut before tokenising. A panic inside
        tokenizers (a hostile or broken tokenizer.json) is a BundleError."""
        checked = self._validated(texts)
        with _Fd2Capture() as capture:
            try:
                return self._contents_unchecked(checked)
            except BaseException as exc:
                if not is_rust_panic(exc):
                    raise
                capture.panicked = True
                raise BundleError(
                    f"{self.source}: the tokenizers library panicked on a text ({exc}); the "
                    "bundle's tokenizer is broken or hostile"
                ) from None

    def _contents_unchecked(self, texts: list[str]) -> tuple[list[Encoding], list[bool]]:
        cut = [False] * len(texts)
        cleaned: list[str] = []
        for i, text in enumerate(texts):
            if len(text) > LONG_TEXT and self._cut_safe:
                part = self._long_part(text, i)
                if part is not None:
                    cleaned.append(part)
                    cut[i] = True
                    continue
            cleaned.append(self.clean(text))
        encoded = self._tok.encode_batch(cleaned, add_special_tokens=False) if cleaned else []
        return list(encoded), cut

    def _long_part(self, text: str, index: int) -> Optional[str]:
        """The cleaned start of a long *text* that has more tokens than the context keeps, cut
        where the cut changes none of its tokens; None when the whole text is needed.

        Why the cut is exact (as for CLIP BPE, tokenizer.LONG_TEXT): (1) ftfy fixes text in
        independent segments (lines), so fixing the first whole segments gives the start of
        fixing all of it; (2) the cut is made just after a space, tab, newline or form feed,
        which no HTML entity contains and which ``str.split`` treats as whitespace, so cleaning
        the part gives the start of cleaning the whole, followed there by a space; (3) the
        tokenizer was checked (``_cut_is_safe``) never to put the two sides of a space into one
        token, and a part ending in a word-start marker is not used.
        """
        keep = self.context_length - self._added
        plain = text.isascii() and _PLAIN_ASCII_RE.fullmatch(text) is not None
        target = max(LONG_TEXT, 16 * self.context_length)
        while True:
            end = min(len(text), target) if plain else _segment_end(text, target, self._max_segment)
            if end >= len(text):
                return None
            fixed = text[:end] if plain else self._fix_text(text[:end])
            at = _cut_point(fixed, target)
            if (max(map(len, _CUT_RE.split(fixed[:at]))) if at else len(fixed)) > MAX_WORD:
                raise InputError(
                    f"text #{index} ({len(text)} characters) has a run of over {MAX_WORD} "
                    "characters without a space or line break; expected text (only the first "
                    f"{keep} tokens of a text are used)"
                )
            if at > 0:
                part = fixed[:at] if plain else html.unescape(html.unescape(fixed[:at]))
                cleaned = _after_basic_clean(part.strip(), self.config.clean)
                if cleaned and cleaned[-1] not in _SPACE_MARKERS:
                    if len(self._tok.encode(cleaned, add_special_tokens=False).ids) > keep:
                        return cleaned
            target = 2 * end


def _cut_is_safe(tok: Tokenizer) -> bool:
    """True when no token of *tok* can hold characters from both sides of a space: its
    pre-tokeniser splits there (the space going with the right side or dropped), or, without
    one, no vocabulary entry has a space marker after a non-marker character."""
    pre = tok.pre_tokenizer
    if pre is not None:
        for left, right in (("ab", "cd"), ("a,", "b"), ("1", "2"), ("\u6f22", "\u5b57"), ("\u00e9", "x")):
            text = f"{left} {right}"
            for _piece, (start, end) in pre.pre_tokenize_str(text):
                if start < len(left) < end:
                    return False
        return True
    for token in tok.get_vocab(with_added_tokens=False):
        stripped = token.lstrip("".join(_SPACE_MARKERS))
        if any(m in stripped for m in _SPACE_MARKERS):
            return False
    return True


def open_tokenizer(path: Path, text_config: TextConfig, use_ftfy: Optional[bool] = None) -> TextTokenizer:
    """The tokenizer a bundle's manifest describes: ``ClipTokenizer`` (CLIP BPE) or ``HfTokenizer``."""
    if text_config.tokenizer_kind == "hf":
        return HfTokenizer.from_file(path, text_config, use_ftfy)
    from .tokenizer import ClipTokenizer

    if text_config.clean != "lower":
        raise BundleError(
            f"{path}: text.clean {text_config.clean!r} with the CLIP BPE tokenizer; clip-rt's CLIP "
            "tokenizer cleans as open_clip's default ('lower') only"
        )
    return ClipTokenizer.from_file(path, text_config, use_ftfy)
