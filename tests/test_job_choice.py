"""The choice for the job a user runs (clip_rt.engine.backends.costs): a short run of a known size
is planned by its predicted time, start-up included; long-lived work by steady speed; low-memory
mode by the memory a backend holds. Injected tables and CPU flags; no backend runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from clip_rt.engine.backends.choose import plan_runtime
from clip_rt.engine.backends.costs import choose_for_job, crossover, estimate
from clip_rt.errors import InputError
from clip_rt.options import RuntimeOptions, Workload
from test_backend_choice import BOTH, VNNI, manifest, row

# On this CPU class: OpenVINO int8 runs 80 images/s (batch 8) and 25/s alone, onnxruntime 20 and 8,
# but OpenVINO takes 1.6 s more to start (its import, compile from cache, first-shape planning).
IMAGE_OV = {
    **row("x86-avx512-vnni", "image", "openvino", "int8-static", "f32", 3.0, "throughput"),
    "items_per_s": 80.0,
    "batch1_images_per_s": 25.0,
}
IMAGE_ORT = {
    **row("x86-avx512-vnni", "image", "onnxruntime", "int8-static", "graph", 1.0),
    "items_per_s": 20.0,
    "batch1_images_per_s": 8.0,
}
TEXT_OV = {**row("x86-avx512-vnni", "text", "openvino", "int8-static", "f32", 20.0), "items_per_s": 600.0}
TEXT_ORT = {**row("x86-avx512-vnni", "text", "onnxruntime", "int8-static", "graph", 10.0), "items_per_s": 300.0}
STARTUP = {
    "x86-avx512-vnni": {
        "source": "startup-test",
        "openvino": {
            "import_s": 0.4,
            "image int8": {"open_s": 0.6, "first_call_s": 0.6, "hold_mb": 250.0},
            "text int8": {"open_s": 0.4, "first_call_s": 0.2, "hold_mb": 150.0},
        },
        "onnxruntime": {
            "import_s": 0.0,
            "image int8": {"open_s": 0.4, "first_call_s": 0.05, "hold_mb": 120.0},
            "text int8": {"open_s": 0.3, "first_call_s": 0.02, "hold_mb": 90.0},
        },
    }
}
TABLE = {"rows": [IMAGE_OV, IMAGE_ORT, TEXT_OV, TEXT_ORT], "startup": STARTUP}
M = manifest(scheme="static")


def plan(workload: Any = None, **kw: Any) -> Any:
    return plan_runtime(M, VNNI, installed=BOTH, table=TABLE, workload=workload, **kw)


def short(images: Any, prompts: Any = 5) -> Workload:
    return Workload(images=images, prompts=prompts, lifetime="short")


def test_long_lived_work_takes_the_fastest_in_steady_work() -> None:
    p = plan()
    assert (p.image.backend, p.text.backend) == ("openvino", "openvino")
    assert "fastest measured" in p.image.reason


def test_one_photo_takes_the_backend_that_finishes_first_and_says_why() -> None:
    p = plan(short(1))
    assert (p.image.backend, p.text.backend) == ("onnxruntime", "onnxruntime")
    why = p.image.reason
    assert "one run of 1 image, 5 prompts" in why and "predicted" in why
    assert "finishes one run" in why and "with openvino int8, which starts in" in why and "faster from about" in why


def test_a_large_folder_pays_the_start_up_back() -> None:
    p = plan(short(200))
    assert p.image.backend == "openvino"
    assert "fastest for one run of 200 images" in p.image.reason and "in steady work" in p.image.reason


def test_the_crossover_is_where_the_predictions_meet() -> None:
    found = {"image": [], "text": []}
    from clip_rt.engine.backends.choose import Candidate, EncoderChoice

    for r in (IMAGE_OV, IMAGE_ORT):
        c = EncoderChoice("image", r["backend"], "int8", "int8", r["compute"], r["folders"], "r", "test")
        found["image"].append(Candidate(c, r))
    costs = STARTUP["x86-avx512-vnni"]
    from clip_rt.engine.backends.costs import start_cost

    ov, ort = found["image"]
    n = crossover(ort, ov, start_cost(costs, ort.choice), start_cost(costs, ov.choice), "image", costs)
    assert n is not None

    def seconds(cand: Any, count: int) -> float:
        est = estimate({"image": cand}, {"image": count}, costs)
        assert est is not None
        return est.seconds

    assert seconds(ov, n - 3) > seconds(ort, n - 3) and seconds(ov, n + 3) < seconds(ort, n + 3)


def test_unknown_counts_in_a_short_run_are_planned_like_a_folder() -> None:
    assert plan(short(None, None)).image.backend == "openvino"  # nothing known: steady speed
    assert plan(Workload(images=None, prompts=3, lifetime="short")).image.backend == "openvino"


def test_text_only_run_never_weighs_the_image_encoder() -> None:
    p = plan(short(0, 1))  # a text query (`clip-rt search INDEX "text"`)
    assert p.text.backend == "onnxruntime"
    assert p.image.reason.startswith("not used in")


def test_without_start_up_figures_steady_speed_decides() -> None:
    table = {"rows": TABLE["rows"]}
    p = plan_runtime(M, VNNI, installed=BOTH, table=table, workload=short(1))
    assert p.image.backend == "openvino"
    assert choose_for_job({"image": [], "text": []}, table, "x86-avx512-vnni", short(1)) is None


def test_a_malformed_start_up_entry_counts_as_not_measured() -> None:
    broken = json.loads(json.dumps(STARTUP))
    broken["x86-avx512-vnni"]["onnxruntime"]["image int8"] = {"open_s": "soon"}
    p = plan_runtime(M, VNNI, installed=BOTH, table={**TABLE, "startup": broken}, workload=short(1))
    assert p.image.backend == "openvino"  # the only predictable image candidate


def test_an_asked_backend_is_kept_whatever_the_job() -> None:
    p = plan(short(1), backend="openvino")
    assert (p.image.backend, p.text.backend) == ("openvino", "openvino") and p.image.explicit
    assert plan(short(500), backend="onnxruntime").image.backend == "onnxruntime"


def test_low_memory_mode_takes_the_backend_that_holds_least() -> None:
    p = plan(None, low_memory=True)
    assert (p.image.backend, p.text.backend) == ("onnxruntime", "onnxruntime")
    assert "low-memory mode" in p.image.reason and "MB predicted" in p.image.reason


def test_near_ties_go_to_the_lighter_backend() -> None:
    # Make the two equally fast for 1 image: the one that holds less memory wins.
    costs = json.loads(json.dumps(STARTUP))
    costs["x86-avx512-vnni"]["openvino"].update(import_s=0.0)
    costs["x86-avx512-vnni"]["openvino"]["image int8"].update(open_s=0.4, first_call_s=0.07)
    costs["x86-avx512-vnni"]["openvino"]["text int8"].update(open_s=0.3, first_call_s=0.02)
    faster_ov = {**IMAGE_OV, "batch1_images_per_s": 8.2}
    table = {"rows": [faster_ov, IMAGE_ORT, TEXT_OV, TEXT_ORT], "startup": costs}
    p = plan_runtime(M, VNNI, installed=BOTH, table=table, workload=short(1))
    assert p.image.backend == "onnxruntime"


def test_workload_and_options_validate_their_input() -> None:
    with pytest.raises(InputError, match="workload images must be a count"):
        Workload(images=-1)
    with pytest.raises(InputError, match="lifetime must be one of short, long"):
        Workload(lifetime="forever")
    with pytest.raises(InputError, match="threads must be a positive integer"):
        RuntimeOptions(threads=0)
    with pytest.raises(InputError, match="unknown backend"):
        RuntimeOptions(backend="tensorflow")
    with pytest.raises(InputError, match="workload must be"):
        RuntimeOptions(workload="short")  # type: ignore[arg-type]
    o = RuntimeOptions(providers="cuda,cpu", backend="ov")
    assert o.providers == ("cuda", "cpu") and o.backend == "openvino"
    assert o.replace(low_memory=True).image_batch_size == 1 and o.image_batch_size == 8
    assert Workload(images=1, prompts=2, lifetime="short").describe() == "one run of 1 image, 2 prompts"
    assert Workload().describe() == "a long-lived process" and Workload().count("image") is None


def test_the_table_builder_folds_start_up_results(tmp_path: Path) -> None:
    from bench.backend_table import build_table

    result = {
        "isa_class": "x86-avx512-vnni",
        "command": "python -m bench.startup_costs --bundle /home/dev/b",
        "when": "2026-12-08T00:00:00Z",
        "machine": {"cpu_model": "test", "isa": ["avx512_vnni"]},
        "rows": [
            {
                "backend": "openvino",
                "encoder": "image",
                "mode": "int8",
                "import_s": 0.4,
                "open_s": 0.5,
                "first_call_s": 0.6,
                "hold_mb": 200.0,
            },
            {
                "backend": "onnxruntime",
                "encoder": "image",
                "mode": "int8",
                "import_s": 0.0,
                "open_s": 0.3,
                "first_call_s": 0.05,
                "hold_mb": 110.0,
            },
        ],
    }
    (tmp_path / "startup-x86-avx512-vnni.json").write_text(json.dumps(result))
    table = build_table(tmp_path)
    block = table["startup"]["x86-avx512-vnni"]
    assert block["openvino"]["import_s"] == 0.4 and block["openvino"]["image int8"]["hold_mb"] == 200.0
    assert table["sources"]["startup-x86-avx512-vnni"]["command"] == "python -m bench.startup_costs --bundle b"


def test_classify_plans_for_its_own_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command tells the model how many images and prompts it is about to encode."""
    import numpy as np
    from PIL import Image

    from clip_rt.cli import common, main
    from test_cli_classify import FakeModel

    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    seen: list[RuntimeOptions] = []

    def fake_load(name: str, options: RuntimeOptions) -> Any:
        seen.append(options)
        return FakeModel()

    monkeypatch.setattr(common, "load_model", fake_load)
    r = CliRunner().invoke(main, ["classify", str(tmp_path), "-l", "red,blue", "--template", "a {}.", "-m", "x"])
    assert r.exit_code == 0, r.output
    assert seen[0].workload == Workload(images=3, prompts=2, lifetime="short")
