"""Hugging Face tokenizers in bundles: clip_rt's HfTokenizer against open_clip's HFTokenizer.

The tokenizers are small ones built here (tests/hf_tokenizers.py: SentencePiece-style Unigram
for XLM-R and SigLIP, byte-fallback BPE for SigLIP2, WordPiece for BERT, byte-level BPE for
RoBERTa, SentencePiece-style BPE with a language-code prefix for NLLB), loaded by open_clip
exactly as the export loads a user's ``--tokenizer`` (``clip_rt_export.text_tokenizer``), with
the real architectures' open_clip configs (cleaning, context length, strip_sep_token).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hf_tokenizers
from clip_rt.bundle.manifest import TextConfig, read_manifest
from clip_rt.errors import BundleError, ExportError, InputError
from clip_rt.inputs.hf_tokenizer import LONG_TEXT, HfTokenizer, clean_text
from tokenizer_corpus import corpus

open_clip = pytest.importorskip("open_clip")
pytest.importorskip("transformers")
from clip_rt_export import text_tokenizer

pytestmark = pytest.mark.torch

# tokenizer kind -> an open_clip architecture that uses that kind, and its text vocabulary size
ARCHS = {
    "xlmr": ("xlm-roberta-base-ViT-B-32", 250002),
    "t5": ("ViT-B-16-SigLIP", 32000),
    "gemma": ("ViT-B-16-SigLIP2", 256000),
    "bert": ("ViT-H-14-CLIPA", 30522),
    "roberta": ("roberta-ViT-B-32", 50265),
    "nllb": ("nllb-clip-base", 256206),
}


class Pair:
    """open_clip's tokenizer and clip_rt's, built from the same files."""

    def __init__(self, kind: str, root: Path, source: Path | None = None) -> None:
        arch, vocab = ARCHS[kind]
        cfg = open_clip.get_model_config(arch)
        need = text_tokenizer.tokenizer_need(cfg, arch)
        src = source or hf_tokenizers.build(kind, root / "src")
        folder = text_tokenizer.stage_tokenizer(arch, need, src, root / "work", cfg)
        self.open_clip = text_tokenizer.build_open_clip_tokenizer(arch, need, folder)
        self.fields = text_tokenizer.hf_text_fields(self.open_clip, vocab)
        text_tokenizer.write_hf_tokenizer(self.open_clip, root / "tokenizer.json")
        self.config = TextConfig(context_length=self.open_clip.context_length, **self.fields)
        self.clip_rt = HfTokenizer.from_file(root / "tokenizer.json", self.config)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair]:
    return {kind: Pair(kind, tmp_path_factory.mktemp(f"tok-{kind}")) for kind in ARCHS}


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [t for _, t in corpus()]


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(ARCHS))
def test_agreement_with_open_clip_on_the_corpus(pairs: dict[str, Pair], texts: list[str], kind: str) -> None:
    pair = pairs[kind]
    want = pair.open_clip(texts).numpy()
    got = pair.clip_rt.encode_batch(texts)
    bad = np.flatnonzero((want != got.ids).any(axis=1))
    print(
        f"\n{kind}: {len(texts) - len(bad)} / {len(texts)} identical rows "
        f"(clean={pair.config.clean}, context {pair.config.context_length}, pad {pair.config.pad_token_id})"
    )
    assert len(bad) == 0, [(texts[i][:60], want[i][:10].tolist(), got.ids[i][:10].tolist()) for i in bad[:3]]
    # lengths: up to the last non-padding id, which the dynamic-sequence path relies on
    after = np.arange(got.ids.shape[1])[None, :] >= got.lengths[:, None]
    assert np.all(got.ids[after] == pair.config.pad_token_id)


def test_settings_come_from_open_clip(pairs: dict[str, Pair]) -> None:
    assert pairs["t5"].config.clean == "canonicalize" and pairs["gemma"].config.clean == "canonicalize"
    assert pairs["xlmr"].config.clean == "whitespace" and pairs["xlmr"].config.pad_token_id == 1
    assert pairs["t5"].config.context_length == 64 and pairs["xlmr"].config.context_length == 77
    assert pairs["t5"].config.pad_token_id == 1  # SigLIP pads with "</s>"
    assert pairs["bert"].config.strip_sep_token and pairs["bert"].config.sep_token_id == 3
    assert pairs["roberta"].config.clean == "whitespace" and pairs["roberta"].config.pad_token_id == 1
    assert pairs["nllb"].config.pad_token_id == 1 and pairs["nllb"].config.eot_token_id == 2


def test_roberta_and_nllb_special_tokens(pairs: dict[str, Pair]) -> None:
    # RoBERTa: <s> ... </s>, byte-level pieces without a prefix space on the first word
    roberta = pairs["roberta"]
    ids = roberta.clip_rt.encode_batch(["a photo of a cat"]).ids[0]
    hf = roberta.open_clip.tokenizer
    assert ids[0] == 0 and hf.convert_ids_to_tokens(int(ids[1])) == "a"
    assert hf.convert_ids_to_tokens(int(ids[2])) == "\u0120photo"
    # NLLB: open_clip's tokenizer prefixes the source-language code (eng_Latn) and ends with </s>
    nllb = pairs["nllb"]
    got = nllb.clip_rt.encode_batch(["a photo of a cat"])
    ids = got.ids[0][: got.lengths[0]]
    assert nllb.open_clip.tokenizer.convert_ids_to_tokens(int(ids[0])) == "eng_Latn" and ids[-1] == 2
    for pair in pairs.values():
        assert pair.config.tokenizer_kind == "hf"


def _long_texts() -> list[str]:
    rng = np.random.default_rng(11)
    words = ["photo", "cat", "Dog", "&amp;", "un_chat", "猫の写真", "naïve", "it's", "--", "A.B", "\u2581x", "x\u2581"]
    out = []
    for n in (LONG_TEXT + 1, 3 * LONG_TEXT, 60_000):
        seps = [" ", " ", "  ", "\n", "\t", " \n "]
        out.append("".join(str(rng.choice(words)) + str(rng.choice(seps)) for _ in range(n // 5))[:n])
    out.append("word " * 20_000)  # plain ASCII
    out.append("&lt;b&gt; " * 3_000 + "<tag>\n" + "caf&eacute; " * 3_000)  # entities, then a '<' line
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(ARCHS))
def test_long_texts_are_cut_exactly(pairs: dict[str, Pair], kind: str) -> None:
    pair = pairs[kind]
    long_texts = _long_texts()
    got = pair.clip_rt.encode_batch(long_texts)
    # the same texts tokenised whole (the cut disabled) and by open_clip
    whole = HfTokenizer(pair.clip_rt._tok, pair.config)
    whole._cut_safe = False
    assert np.array_equal(got.ids, whole.encode_batch(long_texts).ids)
    assert np.array_equal(got.ids, pair.open_clip(long_texts).numpy())
    assert got.truncated.all()


def test_a_huge_run_without_spaces_is_refused(pairs: dict[str, Pair]) -> None:
    # as for CLIP BPE (tokenizer.MAX_WORD): a cut is searched for, and none found in 100,000 characters
    with pytest.raises(InputError, match="text #1 .* has a run of over 100000 characters without a space"):
        pairs["xlmr"].clip_rt.encode_batch(["ok", "x" * 200_000])
    # one ftfy segment (a line) without a space: tokenised whole, as CLIP BPE does
    assert pairs["xlmr"].clip_rt.encode_batch(["猫" * 150_000]).truncated.all()


def test_cut_is_disabled_where_a_token_could_span_a_space() -> None:
    from tokenizers import Tokenizer, models, normalizers

    vocab = {"<unk>": 0, "a": 1, "b": 2, "\u2581": 3, "a\u2581b": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))  # no pre-tokenizer
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    from clip_rt.inputs.hf_tokenizer import _cut_is_safe

    assert not _cut_is_safe(tok)
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "\u2581a": 2, "\u2581\u2581": 3}, unk_token="<unk>"))
    assert _cut_is_safe(tok)


def test_cleaning_matches_open_clip(texts: list[str]) -> None:
    import ftfy
    from open_clip.tokenizer import get_clean_fn

    sample = texts[::7]
    for clean in ("whitespace", "lower", "canonicalize"):
        fn = get_clean_fn(clean)
        bad = [t for t in sample if clean_text(t, clean, ftfy.fix_text) != fn(t)]
        assert not bad, (clean, bad[:3])


def test_bare_tokenizer_json_gets_the_family_settings(tmp_path: Path, texts: list[str]) -> None:
    folder = hf_tokenizers.build("xlmr", tmp_path / "src")
    (folder / "tokenizer_config.json").unlink()
    pair = Pair("xlmr", tmp_path, source=folder / "tokenizer.json")
    assert pair.config.pad_token_id == 1
    sample = texts[::13]
    assert np.array_equal(pair.clip_rt.encode_batch(sample).ids, pair.open_clip(sample).numpy())


def test_missing_tokenizer_says_which_and_how(tmp_path: Path) -> None:
    arch = "ViT-B-16-SigLIP"
    cfg = open_clip.get_model_config(arch)
    need = text_tokenizer.tokenizer_need(cfg, arch)
    with pytest.raises(
        ExportError,
        match=r"needs the T5 SentencePiece \(SigLIP\) tokenizer 'timm/ViT-B-16-SigLIP'.*"
        r"--tokenizer DIR",
    ):
        text_tokenizer.stage_tokenizer(arch, need, None, tmp_path, cfg)
    with pytest.raises(InputError, match="no such file or folder"):
        text_tokenizer.stage_tokenizer(arch, need, tmp_path / "nope", tmp_path, cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="none of the tokenizer files"):
        text_tokenizer.stage_tokenizer(arch, need, tmp_path / "empty", tmp_path, cfg)


def test_export_refuses_a_tokenizer_whose_ids_do_not_fit(pairs: dict[str, Pair]) -> None:
    with pytest.raises(ExportError, match="embeds only 100 tokens"):
        text_tokenizer.hf_text_fields(pairs["xlmr"].open_clip, 100)


def test_bundle_errors(pairs: dict[str, Pair], tmp_path: Path) -> None:
    pair = pairs["xlmr"]
    path = tmp_path / "tokenizer.json"
    text_tokenizer.write_hf_tokenizer(pair.open_clip, path)
    small = TextConfig(**{**pair.config.__dict__, "vocab_size": 100})
    with pytest.raises(BundleError, match="beyond the manifest's text.vocab_size"):
        HfTokenizer.from_file(path, small)
    left = TextConfig(**{**pair.config.__dict__, "padding_side": "left", "dynamic_sequence": True})
    with pytest.raises(BundleError, match="needs right padding"):
        HfTokenizer.from_file(path, left)
    with pytest.raises(InputError, match="text #1 must be a str"):
        pair.clip_rt.encode_batch(["ok", 3])


def test_manifest_text_fields_round_trip(tmp_path: Path, pairs: dict[str, Pair]) -> None:
    from clip_rt_fixtures.fake_bundle import build_fake_bundle

    bundle = build_fake_bundle(tmp_path / "b")
    data = json.loads((bundle / "manifest.json").read_text())
    assert read_manifest(bundle).text.tokenizer_kind == "clip_bpe"  # written without the new fields: CLIP BPE
    data["text"].update({k: v for k, v in pairs["t5"].fields.items() if k != "vocab_size"})
    (bundle / "manifest.json").write_text(json.dumps(data))
    text = read_manifest(bundle).text
    assert text.tokenizer_kind == "hf" and text.clean == "canonicalize" and text.sot_token_id is None
    data["text"]["clean"] = "shout"
    (bundle / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="text.clean: expected one of lower, whitespace, canonicalize"):
        read_manifest(bundle)


def test_runtime_import_stays_light() -> None:
    code = (
        "import sys, clip_rt.inputs.hf_tokenizer; "
        "print(sorted(m for m in ('torch', 'transformers', 'open_clip') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
