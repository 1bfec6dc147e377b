"""`clip-rt models --available`: the measured family table (models/families.json) and each
architecture's family. Torch-free."""

from __future__ import annotations

import json

from click.testing import CliRunner

from clip_rt.bundle.catalogue import architectures, family_of, load_families
from clip_rt.cli import main

REQUIRED = ("ViT (CLIP)", "ResNet (CLIP)", "MobileCLIP", "SigLIP", "SigLIP2", "XLM-R multilingual")
# Families measured without an int8 graph, and why (docs/models.md): none at present.
NO_INT8: dict[str, str] = {}


def test_every_required_family_was_measured_within_the_fp32_bound() -> None:
    data = load_families()
    rows = data["families"]
    assert set(REQUIRED) <= set(rows), sorted(rows)
    for family, row in rows.items():
        assert family_of(row["architecture"]) == family
        assert max(row["fp32_max_abs_diff"]) <= 1e-4, family
        assert row["scoring"] == ("sigmoid" if family.startswith("SigLIP") else "softmax")
        if family in NO_INT8:
            assert row["int8_min_cosine"] is None and row["int8_speedup"] == [None, None], family
        else:
            assert row["int8_min_cosine"] is not None and row["int8_speedup"] is not None, family
    assert "amx_int8" in data["host_isa"]


def test_families_of_architectures() -> None:
    assert family_of("ViT-B-16-SigLIP2-256") == "SigLIP2"
    assert family_of("ViT-SO400M-14-SigLIP") == "SigLIP"
    assert family_of("xlm-roberta-base-ViT-B-32") == "XLM-R multilingual"
    assert family_of("roberta-ViT-B-32") == "RoBERTa" and family_of("nllb-clip-base") == "NLLB multilingual"
    assert family_of("MobileCLIP-S2") == "MobileCLIP" and family_of("RN50x4") == "ResNet (CLIP)"
    assert family_of("ViT-L-14") == "ViT (CLIP)"
    assert sum(family_of(a) is not None for a in architectures()) > 0.9 * len(architectures())


def test_cli_lists_families_and_marks_architectures() -> None:
    r = CliRunner().invoke(main, ["models", "--available"])
    assert r.exit_code == 0, r.output
    assert "Model families exported and measured by clip-rt's benchmarks" in r.output
    for family in REQUIRED:
        assert f"  {family} " in r.output
    assert any(line.split()[:2] == ["ViT-B-16-SigLIP", "[SigLIP]"] for line in r.output.splitlines())
    r = CliRunner().invoke(main, ["models", "--available", "--json"])
    data = json.loads(r.output)
    assert set(REQUIRED) <= set(data["families"]) and data["family_of"]["ViT-B-32-SigLIP2-256"] == "SigLIP2"
