"""`python -m bench.models_table --merge`: one family measured and merged into the existing table,
the other rows keeping their figures and the command they came from. Torch-free: the
measurement itself is replaced by a fixed row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

from bench import models_table


def _row(arch: str, speedup: float) -> dict[str, Any]:
    side = {"max_abs_diff": 1e-7, "min_cosine": 0.9995, "top1_agreement": 1.0, "tolerance": {}}
    return {
        "architecture": arch,
        "bundle": arch,
        "tokenizer": "CLIP BPE",
        "scoring": "softmax",
        "dynamic_sequence": True,
        "parity": {p: {"image": side, "text": side} for p in ("fp32", "fp16", "int8")},
        "int8_image_ops": ["MatMul"],
        "speed_s": {e: {"fp32": 1.0, "int8": 0.5, "int8_speedup": speedup} for e in ("image", "text")},
        "batch": {"image": 8, "text": 64},
        "notes": [],
    }


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    results = tmp_path / "results"
    results.mkdir()
    old = {
        "benchmark": "models",
        "command": "python -m bench.models_table --bundle ViT (CLIP)=A --write-docs",
        "when": "2026-01-01T00:00:00Z",
        "machine": {"cpu_model": "cpu", "isa": ["avx2"], "load_average_1_5_15min": [1.0, 1.0, 1.0]},
        "rows": {"ViT (CLIP)": _row("ViT-B-32", 2.5)},
    }  # written before rows carried their own stamp
    (results / "models.json").write_text(json.dumps(old))
    doc = tmp_path / "models.md"
    doc.write_text("before\n<!-- generated: model-families -->\nold table\n<!-- end generated -->\nafter\n")
    monkeypatch.setattr(models_table, "RESULTS_DIR", results)
    monkeypatch.setattr(models_table, "FAMILIES_JSON", tmp_path / "families.json")
    monkeypatch.setattr(models_table, "DOC", doc)
    monkeypatch.setattr(models_table, "measure", lambda bundle, rounds: _row(Path(bundle).name, 3.0))
    return tmp_path


def test_merge_keeps_the_other_rows_and_their_commands(paths: Path) -> None:
    models_table.main(["--merge", "--bundle", "RoBERTa=/b/roberta-ViT-B-32", "--write-docs"])
    result = json.loads((paths / "results" / "models.json").read_text())
    assert list(result["rows"]) == ["ViT (CLIP)", "RoBERTa"]
    vit, roberta = result["rows"]["ViT (CLIP)"], result["rows"]["RoBERTa"]
    assert vit["speed_s"]["image"]["int8_speedup"] == 2.5 and vit["measured"]["when"] == "2026-01-01T00:00:00Z"
    assert vit["measured"]["command"].endswith("--bundle ViT (CLIP)=A --write-docs")
    assert (
        roberta["measured"]["command"] == "python -m bench.models_table --merge --bundle "
        "RoBERTa=/b/roberta-ViT-B-32 --write-docs"
    )
    families = json.loads((paths / "families.json").read_text())
    assert families["families"]["RoBERTa"]["int8_speedup"] == [3.0, 3.0]
    assert families["families"]["ViT (CLIP)"]["measured"] == "2026-01-01T00:00:00Z"
    doc = (paths / "models.md").read_text()
    assert doc.startswith("before\n") and doc.endswith("after\n") and "old table" not in doc
    assert "| ViT (CLIP) | ViT-B-32 |" in doc and "| RoBERTa | roberta-ViT-B-32 |" in doc
    assert "Commands, each measuring some rows:" in doc and "2026-01-01" not in doc  # dates: the history page
    assert "- ViT (CLIP): `python -m bench.models_table --bundle ViT (CLIP)=A --write-docs`" in doc
    assert "- RoBERTa: `python -m bench.models_table --merge --bundle RoBERTa=PATH --write-docs`" in doc

    # measuring the same family again replaces its row, in place
    models_table.main(["--merge", "--bundle", "ViT (CLIP)=/b/ViT-B-32"])
    result = json.loads((paths / "results" / "models.json").read_text())
    assert list(result["rows"]) == ["ViT (CLIP)", "RoBERTa"]
    assert result["rows"]["ViT (CLIP)"]["speed_s"]["image"]["int8_speedup"] == 3.0


def test_a_full_run_has_one_stamp(paths: Path) -> None:
    models_table.main(["--bundle", "ViT (CLIP)=/b/ViT-B-32", "--write-docs"])
    doc = (paths / "models.md").read_text()
    assert "Commands" not in doc
    assert "Command: `python -m bench.models_table --bundle ViT (CLIP)=PATH --write-docs`." in doc
    assert list(json.loads((paths / "results" / "models.json").read_text())["rows"]) == ["ViT (CLIP)"]


def test_merge_needs_a_bundle_and_an_earlier_table(paths: Path) -> None:
    with pytest.raises(SystemExit):
        models_table.main(["--merge"])
    (paths / "results" / "models.json").unlink()
    with pytest.raises(SystemExit, match="does not exist"):
        models_table.main(["--merge", "--bundle", "RoBERTa=/b/x"])
