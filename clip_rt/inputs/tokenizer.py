"""open_clip-identical text tokenisation through the ``tokenizers`` library (torch-free).

The bundle's tokenizer.json (written by ``clip_rt_export.tokenizer_build``) does the
pre-tokenising regex, byte-level mapping and BPE. This module does what open_clip does around
that: clean the text (``ftfy.fix_text``, ``html.unescape`` twice, strip, collapse whitespace,
lower-case), recognise literal ``<start_of_text>``/``<end_of_text>`` where open_clip's regex
does, add SOT/EOT, truncate (keep the first ``context_length`` ids, last one forced to EOT)
and zero-pad.

ftfy is optional: when it is not importable, ``fix_text_lite`` reproduces every step of
``ftfy.fix_text``'s default configuration except mojibake repair (``fix_encoding``).
"""
from __future__ import annotations

import functools
import html
import html.entities
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..errors import BundleError, InputError
from ..bundle.manifest import TextConfig

SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
# open_clip's pattern lists its special tokens first and compiles with IGNORECASE.
_SPECIAL_RE = re.compile("<start_of_text>|<end_of_text>", re.IGNORECASE)


# -- text cleaning ------------------------------------------------------------------------------
# ftfy 6.x defaults, minus fix_encoding. Tables built as ftfy.chardata builds them.
_HTML_ENTITY_RE = re.compile(r"&#?[0-9A-Za-z]{1,24};")
_SINGLE_QUOTE_RE = re.compile("[\u02bc\u2018-\u201b]")
_DOUBLE_QUOTE_RE = re.compile("[\u201c-\u201f]")
_ANSI_RE = re.compile("\033\\[((?:\\d|;)*)([a-zA-Z])")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_SURROGATE_PAIR_RE = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_LIGATURES = {
    ord(k): v
    for k, v in {
        "Ĳ": "IJ", "ĳ": "ij", "ŉ": "ʼn", "Ǳ": "DZ", "ǲ": "Dz", "ǳ": "dz", "Ǆ": "DŽ", "ǅ": "Dž",
        "ǆ": "dž", "Ǉ": "LJ", "ǈ": "Lj", "ǉ": "lj", "Ǌ": "NJ", "ǋ": "Nj", "ǌ": "nj", "ﬀ": "ff",
        "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "ſt", "ﬆ": "st",
    }.items()
}  # fmt: skip
_MAX_SEGMENT = 1_000_000  # ftfy's max_decode_length


@functools.lru_cache(maxsize=1)
def _tables() -> tuple[dict[str, str], dict[int, Any], dict[int, Any], dict[int, Any]]:
    """(HTML entities, C1 -> windows-1252, width map, control chars); built on first use."""
    entities: dict[str, str] = {}
    for name, char in html.entities.html5.items():
        if name.endswith(";"):
            entities["&" + name] = char
            if name == name.lower():  # ftfy also decodes all-caps names of a limited set
                upper = "&" + name.upper()
                if html.unescape(upper) == upper:
                    entities[upper] = char.upper()
    c1: dict[int, Any] = {}
    for b in range(0x80, 0xA0):  # ftfy's "sloppy-windows-1252": undefined bytes map to themselves
        try:
            c1[b] = bytes([b]).decode("cp1252")
        except UnicodeDecodeError:
            c1[b] = chr(b)
    width: dict[int, Any] = {0x3000: " "}
    for cp in range(0xFF01, 0xFFF0):
        alt = unicodedata.normalize("NFKC", chr(cp))
        if alt != chr(cp):
            width[cp] = alt
    controls: dict[int, Any] = dict.fromkeys(
        [*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070), 0xFEFF,
         *range(0xFFF9, 0xFFFD)]
    )  # fmt: skip
    return entities, c1, width, controls


def _unescape_entity(match: "re.Match[str]") -> str:
    text = match.group(0)
    entities = _tables()[0]
    if text in entities:
        return entities[text]
    if text.startswith("&#"):
        unescaped = html.unescape(text)
        return text if ";" in unescaped else unescaped
    return text


def _surrogate_pair(match: "re.Match[str]") -> str:
    hi, lo = match.group(0)
    return chr(0x10000 + (ord(hi) - 0xD800) * 0x400 + (ord(lo) - 0xDC00))


def _fix_segment(text: str, unescape_html: bool) -> str:
    _, c1, width, controls = _tables()
    while True:  # ftfy repeats its steps until the text stops changing
        orig = text
        if unescape_html:
            text = _HTML_ENTITY_RE.sub(_unescape_entity, text)
        text = text.translate(c1)  # fix_c1_controls (fix_encoding would run before this)
        text = text.translate(_LIGATURES)
        text = text.translate(width)
        text = _SINGLE_QUOTE_RE.sub("'", _DOUBLE_QUOTE_RE.sub('"', text))
        text = (
            text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n")
            .replace("\u2029", "\n").replace("\u0085", "\n")
        )  # fmt: skip
        if _SURROGATE_RE.search(text):
            text = _SURROGATE_RE.sub("\ufffd", _SURROGATE_PAIR_RE.sub(_surrogate_pair, text))
        text = _ANSI_RE.sub("", text)
        text = text.translate(controls)
        text = unicodedata.normalize("NFC", text)
        if text == orig:
            return text


def fix_text_lite(text: str) -> str:
    """``ftfy.fix_text(text)`` with default settings, minus mojibake repair.

    Same segmentation as ftfy: one line at a time, and HTML entities stop being decoded for
    the rest of the text from the first line that contains ``<``.
    """
    out = []
    pos = 0
    unescape_html = True
    while pos < len(text):
        end = text.find("\n", pos) + 1 or len(text)
        end = min(end, pos + _MAX_SEGMENT)
        segment = text[pos:end]
        if unescape_html and "<" in segment:
            unescape_html = False
        out.append(_fix_segment(segment, unescape_html))
        pos = end
    return "".join(out)


# Printable ASCII without '&', plus \t \n \r: ftfy changes nothing here but \r -> \n, which
# whitespace_clean makes irrelevant, and there is no entity to unescape. Most prompts are this.
_PLAIN_ASCII_RE = re.compile("[\t\n\r\x20-\x25\x27-\x7e]*")


def clean_text(text: str, fix_text: Callable[[str], str]) -> str:
    """open_clip's ``_clean_lower``: basic_clean, whitespace_clean, lower-case."""
    if not _PLAIN_ASCII_RE.fullmatch(text):
        text = html.unescape(html.unescape(fix_text(text)))
    return " ".join(text.split()).lower()


def _default_fix_text(use_ftfy: Optional[bool]) -> tuple[Callable[[str], str], bool]:
    if use_ftfy is False:
        return fix_text_lite, False
    try:
        import ftfy
    except ImportError:
        if use_ftfy:
            raise InputError("use_ftfy=True but ftfy is not installed (pip install ftfy)") from None
        return fix_text_lite, False
    return ftfy.fix_text, True


# -- tokenisation -------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenBatch:
    ids: np.ndarray  # int64 (N, context_length): SOT, tokens, EOT, zero padding
    lengths: np.ndarray  # int64 (N,): non-pad ids per row (SOT and EOT included)
    truncated: np.ndarray  # bool (N,): the text did not fit and was cut
    token_counts: np.ndarray  # int64 (N,): ids the text needs untruncated (SOT and EOT included)

    @property
    def max_length(self) -> int:
        """Longest row; a dynamic-sequence text graph only needs ``ids[:, :max_length]``."""
        return int(self.lengths.max()) if len(self.lengths) else 0

    def truncation_message(self, texts: Sequence[str], limit: int = 3) -> Optional[str]:
        """One warning line about the truncated texts, or None when nothing was cut."""
        idx = np.flatnonzero(self.truncated)
        if idx.size == 0:
            return None
        context_length = self.ids.shape[1]
        shown = ", ".join(
            f"#{i} ({int(self.token_counts[i])} tokens: {texts[i][:40]!r})" for i in idx[:limit]
        )
        more = f" and {idx.size - limit} more" if idx.size > limit else ""
        return (
            f"{idx.size} text(s) longer than the context length of {context_length} tokens were "
            f"truncated: {shown}{more}"
        )


@functools.lru_cache(maxsize=1)
def _byte_level() -> Any:
    from tokenizers import pre_tokenizers

    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)


@functools.lru_cache(maxsize=8)
def _load_hf_tokenizer(path: str, mtime_ns: int, size: int) -> Any:
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(path)
    except Exception as exc:  # tokenizers raises bare Exception on malformed JSON
        raise BundleError(f"{path}: not a valid tokenizers JSON ({exc})") from exc
    # clip_rt truncates and pads itself (it reports untruncated lengths).
    tok.no_truncation()
    tok.no_padding()
    return tok


class ClipTokenizer:
    """Tokenises text exactly as open_clip's ``SimpleTokenizer`` (``clean='lower'``)."""

    def __init__(self, hf_tokenizer: Any, text_config: TextConfig, use_ftfy: Optional[bool] = None):
        if text_config.context_length < 2:
            raise BundleError(
                f"text.context_length must be >= 2 (room for SOT and EOT), got {text_config.context_length}"
            )
        self._tok = hf_tokenizer
        self.config = text_config
        self.context_length = text_config.context_length
        self.sot_token_id = text_config.sot_token_id
        self.eot_token_id = text_config.eot_token_id
        self.pad_token_id = text_config.pad_token_id
        self._fix_text, self.uses_ftfy = _default_fix_text(use_ftfy)
        self._check_vocab()

    @classmethod
    def from_file(cls, path: Path, text_config: TextConfig, use_ftfy: Optional[bool] = None) -> "ClipTokenizer":
        """Load a bundle's tokenizer.json; *use_ftfy* None means "if importable"."""
        path = Path(path)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise BundleError(f"{path}: tokenizer file is missing") from None
        return cls(_load_hf_tokenizer(str(path), st.st_mtime_ns, st.st_size), text_config, use_ftfy)

    def _check_vocab(self) -> None:
        size = self._tok.get_vocab_size()
        if size != self.config.vocab_size:
            raise BundleError(
                f"tokenizer has {size} tokens but the manifest says text.vocab_size={self.config.vocab_size}"
            )
        for name, token_id, expected in (
            ("sot_token_id", self.sot_token_id, SOT_TOKEN),
            ("eot_token_id", self.eot_token_id, EOT_TOKEN),
        ):
            got = self._tok.id_to_token(token_id)
            if got != expected:
                raise BundleError(f"manifest text.{name}={token_id} is {got!r} in the tokenizer, expected {expected!r}")

    # -- public API -----------------------------------------------------------------------------
    def clean(self, text: str) -> str:
        return clean_text(text, self._fix_text)

    def encode_batch(self, texts: Sequence[str]) -> TokenBatch:
        """Token ids for *texts*, shaped (N, context_length), as ``open_clip.tokenize``."""
        rows = self._token_lists(texts)
        n, length = len(rows), self.context_length
        ids = np.full((n, length), self.pad_token_id, dtype=np.int64)
        counts = np.fromiter((len(r) + 2 for r in rows), dtype=np.int64, count=n)
        for i, row in enumerate(rows):
            kept = row[: length - 2]  # SOT + the first length-2 tokens + EOT when cut
            ids[i, 0] = self.sot_token_id
            ids[i, 1 : 1 + len(kept)] = kept
            ids[i, 1 + len(kept)] = self.eot_token_id
        return TokenBatch(
            ids=ids, lengths=np.minimum(counts, length), truncated=counts > length, token_counts=counts
        )

    def count_tokens(self, texts: Sequence[str]) -> np.ndarray:
        """Ids each text needs, SOT and EOT included, before truncation."""
        return np.fromiter((len(r) + 2 for r in self._token_lists(texts)), dtype=np.int64)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of one row of ids: stops at EOT, drops SOT and padding (open_clip's spacing)."""
        out = []
        for i in (int(x) for x in ids):
            if i == self.eot_token_id:
                break
            if i != self.sot_token_id:
                out.append(i)
        return self._tok.decode(out, skip_special_tokens=False)

    # -- internals ------------------------------------------------------------------------------
    def _validated(self, texts: Sequence[str]) -> list[str]:
        if isinstance(texts, (str, bytes)):
            raise InputError(f"expected a sequence of strings, got a single {type(texts).__name__}; wrap it in a list")
        out = list(texts)
        for i, t in enumerate(out):
            if not isinstance(t, str):
                raise InputError(f"text #{i} must be a str, got {type(t).__name__}: {t!r:.60}")
        return out

    def _token_lists(self, texts: Sequence[str]) -> list[list[int]]:
        """Untruncated ids per text, without SOT/EOT; one tokenizers call for the whole batch."""
        pieces: list[str] = []
        plans: list[list[Any]] = []  # per text: segment indices into pieces, or a special id
        for text in self._validated(texts):
            plan: list[Any] = []
            for part in self._split_specials(self.clean(text)):
                if isinstance(part, tuple):
                    plan.append(part)
                else:
                    plan.append(len(pieces))
                    pieces.append(part)
            plans.append(plan)
        encoded = self._tok.encode_batch(pieces, add_special_tokens=False) if pieces else []
        rows = []
        for plan in plans:
            row: list[int] = []
            for step in plan:
                if isinstance(step, tuple):
                    row.extend(step)
                else:
                    row.extend(encoded[step].ids)
            rows.append(row)
        return rows

    def _split_specials(self, text: str) -> list[Any]:
        """Text pieces and ``(special_id,)`` markers, where open_clip's regex sees a special.

        open_clip's regex tries the special tokens first at each position where a match can
        start. A match starts at *p* unless the character before it is punctuation (then the
        punctuation run ``[^\\s\\p{L}\\p{N}]+`` swallows the ``<``), or a special ended there.
        """
        if "<" not in text or not _SPECIAL_RE.search(text):
            return [text]
        parts: list[Any] = []
        start = 0  # start of the pending text piece
        special_end = -1
        for m in _SPECIAL_RE.finditer(text):
            p = m.start()
            if p != 0 and p != special_end and self._punct_before(text, p):
                continue
            parts.append(text[start:p])
            parts.append(self._special_ids(m.group()))
            start = special_end = m.end()
        parts.append(text[start:])
        return [p for p in parts if p != ""]

    def _special_ids(self, matched: str) -> tuple[int, ...]:
        """Ids for a special-token match. open_clip's regex matches case-insensitively (so
        "<ſtart_of_text>" too), but only the exact strings map to SOT/EOT; a variant is BPE'd
        as one word."""
        if matched == SOT_TOKEN:
            return (self.sot_token_id,)
        if matched == EOT_TOKEN:
            return (self.eot_token_id,)
        mapped = "".join(piece for piece, _ in _byte_level().pre_tokenize_str(matched))
        return tuple(t.id for t in self._tok.model.tokenize(mapped))

    def _punct_before(self, text: str, p: int) -> bool:
        """True when text[p-1] and the '<' at p fall into one pre-token (a punctuation run)."""
        if self._tok.pre_tokenizer is None:
            return False
        pre = self._tok.pre_tokenizer.pre_tokenize_str(text[p - 1 : p + 1])
        return len(pre) == 1 and pre[0][1] == (0, 2)
