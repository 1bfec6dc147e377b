"""clip_rt.inputs.tokenizer: parity with open_clip's SimpleTokenizer, invariants, input validation.

The parity tests build the tokenizer JSON from open_clip's vocab (skipped without open_clip).
Run with ``-s`` to see the agreement figures (``pytest tests/test_tokenizer.py -s -k agreement``).
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clip_rt.bundle.manifest import TextConfig
from clip_rt.errors import BundleError, InputError
from clip_rt.inputs.tokenizer import ClipTokenizer, TokenBatch, fix_text_lite
from tokenizer_corpus import corpus

VOCAB_SIZE = 49408
SOT, EOT = 49406, 49407
CONFIG = TextConfig(context_length=77, vocab_size=VOCAB_SIZE)


@pytest.fixture(scope="session")
def tokenizer_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("open_clip")
    from clip_rt_export.tokenizer_build import write_tokenizer

    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    write_tokenizer(path, context_length=77)
    return path


@pytest.fixture(scope="session")
def open_clip_tokenize():
    open_clip = pytest.importorskip("open_clip")

    def tokenize(texts: list[str], context_length: int = 77) -> np.ndarray:
        return open_clip.tokenize(texts, context_length=context_length).numpy()

    return tokenize


@pytest.fixture(scope="session")
def corpus_items() -> list[tuple[str, str]]:
    return corpus()


@pytest.fixture(scope="session")
def corpus_reference(corpus_items, open_clip_tokenize) -> np.ndarray:
    return open_clip_tokenize([t for _, t in corpus_items])


def _tok(path: Path, context_length: int = 77, use_ftfy=None) -> ClipTokenizer:
    return ClipTokenizer.from_file(path, TextConfig(context_length=context_length, vocab_size=VOCAB_SIZE), use_ftfy)


def _report(label: str, items, ok: np.ndarray) -> str:
    bad = collections.Counter(items[i][0] for i in np.flatnonzero(~ok))
    return f"{label}: {ok.sum()}/{len(ok)} identical ({100 * ok.mean():.3f}%); differing by category: {dict(bad)}"


# -- parity with open_clip --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.torch
def test_agreement_with_ftfy_is_exact(tokenizer_json, corpus_items, corpus_reference):
    pytest.importorskip("ftfy")
    assert len(corpus_items) > 10_000
    batch = _tok(tokenizer_json, use_ftfy=True).encode_batch([t for _, t in corpus_items])
    ok = (batch.ids == corpus_reference).all(axis=1)
    print("\n" + _report("with ftfy", corpus_items, ok))
    assert ok.all(), [corpus_items[i] for i in np.flatnonzero(~ok)[:10]]


@pytest.mark.torch
def test_agreement_with_get_tokenizer_vit_b_32(tokenizer_json, corpus_items):
    open_clip = pytest.importorskip("open_clip")
    texts = [t for _, t in corpus_items[::10]]
    ref = open_clip.get_tokenizer("ViT-B-32")(texts).numpy()
    np.testing.assert_array_equal(_tok(tokenizer_json).encode_batch(texts).ids, ref)


@pytest.mark.torch
def test_agreement_without_ftfy_differs_only_by_mojibake_repair(tokenizer_json, corpus_items, corpus_reference):
    ftfy = pytest.importorskip("ftfy")
    texts = [t for _, t in corpus_items]
    batch = _tok(tokenizer_json, use_ftfy=False).encode_batch(texts)
    ok = (batch.ids == corpus_reference).all(axis=1)
    print("\n" + _report("without ftfy", corpus_items, ok))
    # Every difference is a text where ftfy's fix_encoding (mojibake repair, the one step
    # fix_text_lite leaves out) changes something; everything else is reproduced exactly.
    for i in np.flatnonzero(~ok):
        assert ftfy.fix_text(texts[i]) != ftfy.fix_text(texts[i], fix_encoding=False), texts[i]
    assert ok.mean() > 0.99


def test_fix_text_lite_is_ftfy_without_fix_encoding(corpus_items):
    ftfy = pytest.importorskip("ftfy")
    for _, text in corpus_items:
        assert fix_text_lite(text) == ftfy.fix_text(text, fix_encoding=False), text


@pytest.fixture(scope="session")
def codepoint_sweep(open_clip_tokenize) -> tuple[list[str], np.ndarray]:
    """Each BMP codepoint (and every 97th beyond, or all) next to a letter, a digit, an apostrophe,
    punctuation and itself, 20 codepoints a text; with open_clip's ids at context 1024."""
    stride = 1 if os.environ.get("CLIP_RT_FULL_CODEPOINT_SWEEP") else 97  # 1: all 1,112,064 (minutes)
    cps = [cp for cp in range(0x110000) if not 0xD800 <= cp < 0xE000 and (cp < 0x10000 or cp % stride == 0)]
    texts = [
        " ".join(f"a{chr(c)}1{chr(c)}'{chr(c)}!{chr(c)}{chr(c)}" for c in cps[i : i + 20])
        for i in range(0, len(cps), 20)
    ]
    return texts, open_clip_tokenize(texts, context_length=1024)


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize("use_ftfy", [True, False])
def test_every_bmp_codepoint_and_a_sample_beyond(tokenizer_json, codepoint_sweep, use_ftfy):
    """Checks the pre-tokeniser's character classes (Unicode versions of `regex` vs Oniguruma)."""
    if use_ftfy:
        pytest.importorskip("ftfy")
    texts, ref = codepoint_sweep
    ids = _tok(tokenizer_json, 1024, use_ftfy).encode_batch(texts).ids
    ok = (ids == ref).all(axis=1)
    if use_ftfy:
        assert ok.all(), [texts[i][:60] for i in np.flatnonzero(~ok)[:5]]
    else:  # only Latin-1 runs that ftfy reads as mojibake may differ
        import ftfy

        for i in np.flatnonzero(~ok):
            assert ftfy.fix_text(texts[i]) != ftfy.fix_text(texts[i], fix_encoding=False)


@pytest.mark.torch
@pytest.mark.parametrize("context_length", [2, 3, 5, 16, 77])
def test_truncation_matches_open_clip(tokenizer_json, open_clip_tokenize, context_length):
    texts = ["", "a", "a photo of a cat", "word " * 100, "😀" * 40, "<end_of_text> " * 10]
    batch = _tok(tokenizer_json, context_length).encode_batch(texts)
    np.testing.assert_array_equal(batch.ids, open_clip_tokenize(texts, context_length))
    counts = batch.token_counts
    np.testing.assert_array_equal(batch.truncated, counts > context_length)
    np.testing.assert_array_equal(batch.lengths, np.minimum(counts, context_length))
    assert batch.ids[batch.truncated, -1].tolist() == [EOT] * int(batch.truncated.sum())


@pytest.mark.torch
def test_decode_matches_open_clip(tokenizer_json, corpus_items):
    open_clip = pytest.importorskip("open_clip")
    torch = pytest.importorskip("torch")
    tok = _tok(tokenizer_json)
    texts = [t for c, t in corpus_items if c in ("template", "scripts", "emoji", "accents")][:3000]
    for row in tok.encode_batch(texts).ids:
        inner = [int(i) for i in row[1 : list(row).index(EOT)]]
        assert tok.decode(row) == open_clip.decode(torch.tensor(inner))


@pytest.mark.torch
def test_standalone_json_pads_and_truncates_like_open_clip(tokenizer_json, open_clip_tokenize):
    """The JSON alone (no clip_rt) gives open_clip's ids on already-clean text."""
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(tokenizer_json))
    texts = ["a photo of a dog.", "word " * 100, ""]
    ids = np.array([e.ids for e in hf.encode_batch(texts)])
    np.testing.assert_array_equal(ids, open_clip_tokenize(texts))


@pytest.mark.torch
def test_json_is_deterministic_and_has_open_clip_ids(tokenizer_json, tmp_path):
    from open_clip.tokenizer import SimpleTokenizer

    from clip_rt_export.tokenizer_build import write_tokenizer

    again = tmp_path / "again.json"
    write_tokenizer(again, context_length=77)
    assert again.read_bytes() == tokenizer_json.read_bytes()
    vocab = json.loads(tokenizer_json.read_text(encoding="utf-8"))["model"]["vocab"]
    assert vocab == SimpleTokenizer().encoder
    with pytest.raises(ValueError, match="context_length"):
        write_tokenizer(tmp_path / "bad.json", context_length=1)


# -- invariants (hypothesis) --------------------------------------------------------------------
def _check_invariants(batch: TokenBatch, n: int, context_length: int) -> None:
    assert batch.ids.shape == (n, context_length) and batch.ids.dtype == np.int64
    assert (batch.ids >= 0).all() and (batch.ids < VOCAB_SIZE).all()
    for row, length in zip(batch.ids, batch.lengths):
        assert row[0] == SOT
        assert row[length - 1] == EOT
        assert (row[length:] == 0).all()


@pytest.mark.torch
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(max_size=120), min_size=1, max_size=8))
@pytest.mark.slow
def test_any_text_gives_well_formed_ids_identical_to_open_clip(tokenizer_json, open_clip_tokenize, texts):
    batch = _tok(tokenizer_json).encode_batch(texts)
    _check_invariants(batch, len(texts), 77)
    # exactly one EOT at the end of the real tokens (unless the text itself spells <end_of_text>)
    for text, row, length in zip(texts, batch.ids, batch.lengths):
        if "end_of_text" not in text.lower():
            assert (row == EOT).sum() == 1 and row[length - 1] == EOT
    np.testing.assert_array_equal(batch.ids, open_clip_tokenize(texts))


@pytest.mark.torch
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(exclude_categories=()), max_size=60))
@pytest.mark.slow
def test_any_codepoint_including_lone_surrogates_never_raises(tokenizer_json, open_clip_tokenize, text):
    texts = [text, text + "\ud800", "\ud83d\ude00" + text + "\udc00"]  # lone and paired surrogates
    for use_ftfy in (False, None):
        batch = _tok(tokenizer_json, use_ftfy=use_ftfy).encode_batch(texts)
        _check_invariants(batch, len(texts), 77)
    if _tok(tokenizer_json).uses_ftfy:
        np.testing.assert_array_equal(batch.ids, open_clip_tokenize(texts))


# -- input validation and API (torch-free: a tiny WordLevel tokenizer) ---------------------------
@pytest.fixture()
def tiny_json(tmp_path: Path) -> Path:
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel

    words = ["!", "a", "photo", "of", "cat", "<start_of_text>", "<end_of_text>"]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="!"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tiny.json"
    tok.save(str(path))
    return path


def _tiny(path: Path, context_length: int = 6) -> ClipTokenizer:
    return ClipTokenizer.from_file(path, TextConfig(context_length, vocab_size=7, sot_token_id=5, eot_token_id=6))


def test_non_str_item_names_index_and_type(tiny_json):
    with pytest.raises(InputError, match=r"#2 must be a str, got int"):
        _tiny(tiny_json).encode_batch(["a cat", "", 3])
    with pytest.raises(InputError, match=r"#0 must be a str, got bytes"):
        _tiny(tiny_json).count_tokens([b"a cat"])
    with pytest.raises(InputError, match="single str"):
        _tiny(tiny_json).encode_batch("a cat")


def test_empty_and_whitespace_texts_are_sot_eot(tiny_json):
    batch = _tiny(tiny_json, context_length=8).encode_batch(["", " \t\n ", "A  Photo\tof\u00a0a CAT"])
    assert batch.ids.tolist() == [[5, 6, 0, 0, 0, 0, 0, 0], [5, 6, 0, 0, 0, 0, 0, 0], [5, 1, 2, 3, 1, 4, 6, 0]]
    assert batch.lengths.tolist() == [2, 2, 7] and batch.max_length == 7
    assert not batch.truncated.any() and batch.truncation_message(["", "", ""]) is None


def test_truncation_report_and_counts(tiny_json):
    tok = _tiny(tiny_json, context_length=4)
    texts = ["a cat", "a photo of a cat", "cat"]
    batch = tok.encode_batch(texts)
    assert batch.ids.tolist() == [[5, 1, 4, 6], [5, 1, 2, 6], [5, 4, 6, 0]]
    assert batch.token_counts.tolist() == [4, 7, 3] == tok.count_tokens(texts).tolist()
    assert batch.truncated.tolist() == [False, True, False]
    message = batch.truncation_message(texts)
    assert message is not None and "1 text(s)" in message and "#1 (7 tokens" in message


def test_empty_batch(tiny_json):
    batch = _tiny(tiny_json).encode_batch([])
    assert batch.ids.shape == (0, 6) and batch.max_length == 0


def test_bundle_mismatches_are_bundle_errors(tiny_json, tmp_path):
    with pytest.raises(BundleError, match="vocab_size=9"):
        ClipTokenizer.from_file(tiny_json, TextConfig(6, vocab_size=9, sot_token_id=5, eot_token_id=6))
    with pytest.raises(BundleError, match="sot_token_id=4"):
        ClipTokenizer.from_file(tiny_json, TextConfig(6, vocab_size=7, sot_token_id=4, eot_token_id=6))
    with pytest.raises(BundleError, match="missing"):
        ClipTokenizer.from_file(tmp_path / "nope.json", CONFIG)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(BundleError, match="not a valid tokenizers JSON"):
        ClipTokenizer.from_file(broken, CONFIG)
    with pytest.raises(BundleError, match="context_length"):
        ClipTokenizer.from_file(tiny_json, TextConfig(1, vocab_size=7, sot_token_id=5, eot_token_id=6))


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_pulls_in_neither_torch_nor_open_clip_nor_ftfy():
    loaded = _run(
        "import sys, clip_rt.inputs.tokenizer; "
        "print(sorted(m for m in ('torch', 'open_clip', 'ftfy', 'regex') if m in sys.modules))"
    )
    assert loaded == "[]"


def test_falls_back_to_lite_cleaning_when_ftfy_is_missing(tiny_json):
    uses = _run(
        "import sys; sys.modules['ftfy'] = None\n"
        "from clip_rt.inputs.tokenizer import ClipTokenizer\nfrom clip_rt.bundle.manifest import TextConfig\n"
        f"t = ClipTokenizer.from_file({str(tiny_json)!r}, TextConfig(6, 7, sot_token_id=5, eot_token_id=6))\n"
        "print(t.uses_ftfy, t.clean('\\uff21 \\u201cCat\\u201d &amp;amp; \\ufb01'))"
    )
    assert uses == 'False a "cat" & fi'
    with pytest.raises(InputError, match="ftfy is not installed"):
        _run_in_process_without_ftfy(tiny_json)


def _run_in_process_without_ftfy(tiny_json: Path) -> None:
    saved = sys.modules.get("ftfy")
    sys.modules["ftfy"] = None  # type: ignore[assignment]  # makes `import ftfy` fail
    try:
        ClipTokenizer.from_file(tiny_json, TextConfig(6, 7, sot_token_id=5, eot_token_id=6), use_ftfy=True)
    finally:
        if saved is None:
            del sys.modules["ftfy"]
        else:
            sys.modules["ftfy"] = saved


# -- long texts are cut before cleaning and tokenising (issue 11) ---------------------------------
# The cut must keep exactly the tokens open_clip keeps: each long text is compared with tokenising
# the whole text (the path every text took before) and, for a sample, with open_clip itself.
_JOINERS = [
    " ",
    "\n",
    "\r\n",
    "\t",
    "",
    "&amp;",
    " &#32",
    "&#x3c;",
    "\u00a0",
    "\u0301",
    "\u03a3 ",
    "<",
    "\x0c",
    "   ",
    "<end_of_text>",
    "\u2028",
    "\x1b[31m",
    "Ã©",
    "ﬁ",
]


def _long_texts(items: list[str], count: int, seed: int) -> list[str]:
    """Long strings made of corpus items glued with awkward joiners: entities, combining marks,
    Greek capital sigma, CRLF, control characters, mojibake, specials, lines of every length."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        size = int(rng.choice([4_100, 6_000, 12_000, 25_000]))
        parts, total = [], 0
        while total < size:
            part = items[int(rng.integers(len(items)))] + _JOINERS[int(rng.integers(len(_JOINERS)))]
            parts.append(part)
            total += len(part)
        out.append("".join(parts))
    out.append("word " * 3000)  # plain ASCII: cut without any fixing
    out.append("a" * 5000 + " b" * 200)  # the first cut point is past the start budget
    out.append("é" * 4000 + "\n" + "x " * 300)  # one long first line
    return out


def _whole(tok: ClipTokenizer, text: str) -> list[int]:
    return tok._rows([tok.clean(text)])[0]


@pytest.mark.parametrize("use_ftfy", [True, False])
def test_long_texts_cut_before_tokenising_keep_exactly_the_same_tokens(tokenizer_json, corpus_items, use_ftfy):
    if use_ftfy:
        pytest.importorskip("ftfy")
    tok = _tok(tokenizer_json, use_ftfy=use_ftfy)
    texts = _long_texts([t for _, t in corpus_items], 40, seed=1 if use_ftfy else 2)
    batch = tok.encode_batch(texts)
    assert batch.cut.sum() >= len(texts) // 3  # the longer ones were cut (the shorter may be read whole)
    for i, text in enumerate(texts):
        whole = _whole(tok, text)
        kept = whole[:75]
        assert batch.ids[i, 1 : 1 + len(kept)].tolist() == kept, i
        assert bool(batch.truncated[i]) == (len(whole) > 75)
        assert batch.token_counts[i] <= len(whole) + 2  # a lower bound once cut


def test_long_texts_agree_with_open_clip(tokenizer_json, corpus_items, open_clip_tokenize):
    pytest.importorskip("ftfy")
    texts = _long_texts([t for _, t in corpus_items], 12, seed=3)
    got = _tok(tokenizer_json, use_ftfy=True).encode_batch(texts).ids
    np.testing.assert_array_equal(got, open_clip_tokenize(texts))


def test_long_lines_cut_at_ftfy_segment_boundaries(tokenizer_json, corpus_items, monkeypatch):
    """Lines longer than ftfy's segment (1,000,000 characters) are fixed in pieces; the cut then
    falls on those piece boundaries. Checked with fix_text_lite and a 700-character segment."""
    import clip_rt.inputs.tokenizer as tokenizer_mod

    monkeypatch.setattr(tokenizer_mod, "_MAX_SEGMENT", 700)
    tok = _tok(tokenizer_json, use_ftfy=False)
    assert tok._max_segment == 700
    items = [t.replace("\n", " ") for _, t in corpus_items]
    texts = [t.replace("\n", "").replace("\r", "").replace("\u2028", "") for t in _long_texts(items, 20, seed=4)]
    batch = tok.encode_batch(texts)
    for i, text in enumerate(texts):
        whole = _whole(tok, text)
        assert batch.ids[i, 1 : 1 + min(75, len(whole))].tolist() == whole[:75], i


def test_a_long_text_is_cut_cheaply(tiny_json):
    """50 MB of text: only the start is cleaned and tokenised; the warning says 'over N tokens'."""
    tok = ClipTokenizer.from_file(tiny_json, TextConfig(6, vocab_size=7, sot_token_id=5, eot_token_id=6))
    batch = tok.encode_batch(["a b c " * 8_000_000])
    assert batch.cut.tolist() == [True] and batch.truncated.tolist() == [True]
    assert 6 < batch.token_counts[0] < 100_000
    assert "#0 (over " in batch.truncation_message(["a b c"])


def test_a_huge_run_without_spaces_is_an_input_error(tiny_json):
    tok = ClipTokenizer.from_file(tiny_json, TextConfig(6, vocab_size=7, sot_token_id=5, eot_token_id=6))
    with pytest.raises(
        InputError,
        match=r"text #1 \(5000000 characters\) has a run of over 100000 characters "
        "without a space or line break",
    ):
        tok.encode_batch(["a b", "a" * 5_000_000])
