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
import stat
import sys
import tempfile
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

import numpy as np

from ..bundle.manifest import TextConfig
from ..errors import BundleError, InputError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

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
        [*range(0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070), 0xFEFF,
         *range(0xFFF9, 0xFFFD)]
    )  # fmt: skip
    return entities, c1, width, controls


def _unescape_entity(match: re.Match[str]) -> str:
    text = match.group(0)
    entities = _tables()[0]
    if text in entities:
        return entities[text]
    if text.startswith("&#"):
        unescaped = html.unescape(text)
        return text if ";" in unescaped else unescaped
    return text


def _surrogate_pair(match: re.Match[str]) -> str:
    hi, lo = match.group(0)[0], match.group(0)[1]  # the two halves of the pair
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


# -- long texts: cut before cleaning and tokenising -----------------------------------------------
# Only the first context_length - 2 tokens of a text are used, but cleaning and BPE cost time and
# memory in proportion to the whole text (50 MB of text took 66 s and 7.2 GB). A text longer than
# LONG_TEXT characters is cut first, at a place where the cut provably changes nothing before it:
#
# 1. ftfy (and fix_text_lite) fix a text in independent segments (lines, at most
#    max_decode_length characters), so fixing the first k whole segments gives exactly the first
#    part of fixing the whole text. (A text of plain ASCII without '&' is not fixed at all.)
# 2. In the fixed text the cut is made just after one of ' \t\n\f': html.unescape's entity pattern
#    cannot contain them (no entity spans the cut) and str.split() treats them as whitespace, so
#    cleaning the part before the cut gives the start of cleaning the whole text, followed in the
#    whole by a space (str.lower()'s final-sigma rule does not look across whitespace either).
# 3. Special tokens contain no space, and the tokenizer's pre-tokenizer never puts a space inside
#    a pre-token (CLIP's pattern), so the tokens of the part are the first tokens of the whole.
#
# The part grows (doubling) until it has more tokens than the context keeps, so truncation is still
# detected; its token count is then a lower bound. tests/test_tokenizer.py checks the result
# against tokenising the whole text, and against open_clip, on long varied strings.
LONG_TEXT = 4096  # characters
MAX_WORD = 100_000  # characters without a cut point: more is an InputError, not minutes of BPE
_CUT_RE = re.compile("[ \t\n\f]")


def _segment_end(text: str, at_least: int, max_segment: int) -> int:
    """The first end of one of ftfy's segments at or after *at_least* (or len(text))."""
    pos = 0
    while pos < at_least and pos < len(text):
        nl = text.find("\n", pos) + 1 or len(text)
        pos = min(nl, pos + max_segment)
    return pos


def _cut_point(fixed: str, target: int) -> int:
    """Index just after the first cut character at or after *target* in *fixed*, else after the
    last one before it; 0 when there is none."""
    m = _CUT_RE.search(fixed, max(0, min(target, len(fixed)) - 1))
    if m is not None:
        return m.end()
    last = max(fixed.rfind(ch) for ch in " \t\n\f")
    return last + 1


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
    cut: Optional[np.ndarray] = None  # bool (N,): cut before tokenising; token_counts is then a lower bound

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
        cut = self.cut if self.cut is not None else np.zeros(len(idx), bool)
        shown = ", ".join(
            f"#{i} ({'over ' if cut[i] else ''}{int(self.token_counts[i])} tokens: {texts[i][:40]!r})"
            for i in idx[:limit]
        )
        more = f" and {idx.size - limit} more" if idx.size > limit else ""
        return (
            f"{idx.size} text(s) longer than the context length of {context_length} tokens were "
            f"truncated: {shown}{more}"
        )


class TextTokenizer(Protocol):
    """What the runtime asks of a bundle's tokenizer: :class:`ClipTokenizer` (CLIP BPE) or
    ``hf_tokenizer.HfTokenizer``, as ``hf_tokenizer.open_tokenizer`` picks from the manifest."""

    def clean(self, text: str) -> str: ...

    def encode_batch(self, texts: Sequence[str]) -> TokenBatch: ...

    def count_tokens(self, texts: Sequence[str]) -> np.ndarray: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@functools.lru_cache(maxsize=1)
def _byte_level() -> Any:
    from tokenizers import pre_tokenizers

    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)


MAX_TOKENIZER_BYTES = 128 << 20  # CLIP's tokenizer.json is 1.7 MB; the largest HF ones about 35 MB
_FD2_LOCK = threading.Lock()


def is_rust_panic(exc: BaseException) -> bool:
    """True for ``pyo3_runtime.PanicException``: a panic inside ``tokenizers`` (e.g. a regex that
    hits Oniguruma's retry limit). It derives from BaseException and cannot be imported by name."""
    kind = type(exc)
    return kind.__name__ == "PanicException" and kind.__module__ == "pyo3_runtime"


class _Fd2Capture:
    """Holds what is written to file descriptor 2 while ``tokenizers`` runs: Rust's panic hook
    prints its message there before pyo3 raises. The text is dropped when the panic becomes a
    one-line BundleError, and passed on to stderr otherwise."""

    def __init__(self) -> None:
        self.panicked = False
        self._saved = -1
        self._tmp: Any = None

    def __enter__(self) -> _Fd2Capture:
        _FD2_LOCK.acquire()
        try:
            sys.stderr.flush()
            self._saved = os.dup(2)
            self._tmp = tempfile.TemporaryFile()
            os.dup2(self._tmp.fileno(), 2)
        except (OSError, ValueError, AttributeError):  # no fd 2 (closed, embedded interpreter)
            self._close()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._saved >= 0:
                os.dup2(self._saved, 2)
                self._tmp.seek(0)
                held = self._tmp.read()
                if held and not self.panicked:
                    os.write(2, held)
        finally:
            self._close()
            _FD2_LOCK.release()

    def _close(self) -> None:
        if self._saved >= 0:
            os.close(self._saved)
        if self._tmp is not None:
            self._tmp.close()
        self._saved, self._tmp = -1, None


@functools.lru_cache(maxsize=8)
def _load_hf_tokenizer(path: str, mtime_ns: int, size: int) -> Tokenizer:
    from tokenizers import Tokenizer

    if size > MAX_TOKENIZER_BYTES:
        raise BundleError(f"{path}: {size} bytes; a tokenizer file is at most {MAX_TOKENIZER_BYTES} bytes")
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):  # a device (size 0) would be read forever by the tokenizers library
        from .bounded import file_kind

        raise BundleError(f"{path}: the tokenizer file is a {file_kind(mode)}; expected a regular file")
    with _Fd2Capture() as capture:
        try:
            tok = Tokenizer.from_file(path)
        except Exception as exc:  # tokenizers raises bare Exception on malformed JSON
            raise BundleError(f"{path}: not a valid tokenizers JSON ({exc})") from exc
        except BaseException as exc:
            if not is_rust_panic(exc):
                raise
            capture.panicked = True
            raise BundleError(f"{path}: the tokenizers library panicked while loading it ({exc})") from None
    # clip_rt truncates and pads itself (it reports untruncated lengths).
    tok.no_truncation()
    tok.no_padding()
    return tok


def forget_loaded_tokenizers() -> None:
    """Drop the loader's cache, so that a tokenizer no model holds any more is freed
    (``ClipModel.release("text")``); models that hold one keep it."""
    _load_hf_tokenizer.cache_clear()


class ClipTokenizer:
    """Tokenises text exactly as open_clip's ``SimpleTokenizer`` (``clean='lower'``)."""

    def __init__(
        self,
        hf_tokenizer: Tokenizer,
        text_config: TextConfig,
        use_ftfy: Optional[bool] = None,
        source: str = "tokenizer",
    ) -> None:
        if text_config.context_length < 2:
            raise BundleError(
                f"text.context_length must be >= 2 (room for SOT and EOT), got {text_config.context_length}"
            )
        self._tok = hf_tokenizer
        self.source = source  # the file, for messages
        self.config = text_config
        if text_config.sot_token_id is None or text_config.eot_token_id is None:  # the manifest's check, for others
            raise BundleError(
                f"{source}: the CLIP tokenizer needs text.sot_token_id and text.eot_token_id, got "
                f"{text_config.sot_token_id} and {text_config.eot_token_id}"
            )
        self.context_length = text_config.context_length
        self.sot_token_id: int = text_config.sot_token_id
        self.eot_token_id: int = text_config.eot_token_id
        self.pad_token_id = text_config.pad_token_id
        self._fix_text, self.uses_ftfy = _default_fix_text(use_ftfy)
        self._max_segment = _MAX_SEGMENT
        if self.uses_ftfy:  # the segment length ftfy.fix_text uses (see LONG_TEXT)
            import ftfy

            self._max_segment = ftfy.TextFixerConfig().max_decode_length
        self._check_vocab()

    @classmethod
    def from_file(cls, path: Path, text_config: TextConfig, use_ftfy: Optional[bool] = None) -> ClipTokenizer:
        """Load a bundle's tokenizer.json; *use_ftfy* None means "if importable"."""
        path = Path(path)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise BundleError(f"{path}: tokenizer file is missing") from None
        return cls(_load_hf_tokenizer(str(path), st.st_mtime_ns, st.st_size), text_config, use_ftfy, source=str(path))

    def _check_vocab(self) -> None:
        size = self._tok.get_vocab_size()
        if size != self.config.vocab_size:
            raise BundleError(
                f"{self.source}: tokenizer has {size} tokens but the manifest says "
                f"text.vocab_size={self.config.vocab_size}"
            )
        # Every id the tokenizer can produce must exist in the text graph's embedding table,
        # which the session check sizes from text.vocab_size.
        token, top = max(self._tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
        if top >= self.config.vocab_size:
            raise BundleError(
                f"{self.source}: token {token[:40]!r} has id {top}, beyond the manifest's "
                f"text.vocab_size of {self.config.vocab_size} (ids 0..{self.config.vocab_size - 1})"
            )
        for name, token_id, expected in (
            ("sot_token_id", self.sot_token_id, SOT_TOKEN),
            ("eot_token_id", self.eot_token_id, EOT_TOKEN),
        ):
            got = self._tok.id_to_token(token_id)
            if got != expected:
                raise BundleError(
                    f"{self.source}: manifest text.{name}={token_id} is {got!r} in the tokenizer, expected {expected!r}"
                )

    # -- public API -----------------------------------------------------------------------------
    def clean(self, text: str) -> str:
        return clean_text(text, self._fix_text)

    def encode_batch(self, texts: Sequence[str]) -> TokenBatch:
        """Token ids for *texts*, shaped (N, context_length), as ``open_clip.tokenize``."""
        rows, cut = self._token_lists(texts)
        n, length = len(rows), self.context_length
        ids = np.full((n, length), self.pad_token_id, dtype=np.int64)
        counts = np.fromiter((len(r) + 2 for r in rows), dtype=np.int64, count=n)
        for i, row in enumerate(rows):
            kept = row[: length - 2]  # SOT + the first length-2 tokens + EOT when cut
            ids[i, 0] = self.sot_token_id
            ids[i, 1 : 1 + len(kept)] = kept
            ids[i, 1 + len(kept)] = self.eot_token_id
        return TokenBatch(
            ids=ids,
            lengths=np.minimum(counts, length),
            truncated=counts > length,
            token_counts=counts,
            cut=np.array(cut, dtype=bool),
        )

    def count_tokens(self, texts: Sequence[str]) -> np.ndarray:
        """Ids each text needs, SOT and EOT included, before truncation. For a text over
        LONG_TEXT characters that does not fit the context, a lower bound (it is cut first)."""
        return np.fromiter((len(r) + 2 for r in self._token_lists(texts)[0]), dtype=np.int64)

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

    def _token_lists(self, texts: Sequence[str]) -> tuple[list[list[int]], list[bool]]:
        """Ids per text without SOT/EOT (untruncated, or the start of a text cut before
        tokenising), and which were cut. A panic inside tokenizers (a hostile or broken
        tokenizer.json) is a BundleError."""
        checked = self._validated(texts)
        with _Fd2Capture() as capture:
            try:
                return self._token_lists_unchecked(checked)
            except BaseException as exc:
                if not is_rust_panic(exc):
                    raise
                capture.panicked = True
                raise BundleError(
                    f"{self.source}: the tokenizers library panicked on a text ({exc}); the "
                    "bundle's tokenizer is broken or hostile"
                ) from None

    def _token_lists_unchecked(self, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
        short = [i for i, t in enumerate(texts) if len(t) <= LONG_TEXT]
        rows: list[list[int]] = [[] for _ in texts]
        cut = [False] * len(texts)
        for i, row in zip(short, self._rows([self.clean(texts[i]) for i in short])):
            rows[i] = row
        for i, text in enumerate(texts):
            if len(text) > LONG_TEXT:
                rows[i], cut[i] = self._long_row(text, i)
        return rows, cut

    def _long_row(self, text: str, index: int) -> tuple[list[int], bool]:
        """The ids of a long text, cutting it first where that changes nothing (see LONG_TEXT)."""
        need = self.context_length - 1  # more ids than the context keeps (length - 2): truncated
        plain = text.isascii() and _PLAIN_ASCII_RE.fullmatch(text) is not None
        target = max(LONG_TEXT, 16 * self.context_length)
        while True:
            end = min(len(text), target) if plain else _segment_end(text, target, self._max_segment)
            if end >= len(text):
                return self._rows([self.clean(text)])[0], False
            fixed = text[:end] if plain else self._fix_text(text[:end])
            at = _cut_point(fixed, target)
            if (max(map(len, _CUT_RE.split(fixed[:at]))) if at else len(fixed)) > MAX_WORD:
                raise InputError(
                    f"text #{index} ({len(text)} characters) has a run of over {MAX_WORD} "
                    "characters without a space or line break; expected text (only the first "
                    f"{self.context_length - 2} tokens of a text are used)"
                )
            if at > 0:
                part = fixed[:at] if plain else html.unescape(html.unescape(fixed[:at]))
                row = self._rows([" ".join(part.split()).lower()])[0]
                if len(row) >= need:
                    return row, True
            target = 2 * end

    def _rows(self, cleaned: list[str]) -> list[list[int]]:
        """Untruncated ids of already cleaned texts; one tokenizers call for all of them."""
        pieces: list[str] = []
        plans: list[list[Any]] = []  # per text: segment indices into pieces, or a special id
        for text in cleaned:
            plan: list[Any] = []
            for part in self._split_specials(text):
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
