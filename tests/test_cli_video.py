"""`clip-rt video`: frame sampling with PyAV on a generated video, segments, overall label."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from clip_rt.cli import main
from clip_rt.inputs import video
from test_cli_classify import install_fake

FPS = 10
# 2 s red, 1.5 s blue, 1 s green: 45 frames at 10 fps.
SCRIPT = [((230, 10, 10), 20), ((10, 10, 230), 15), ((10, 220, 10), 10)]


@pytest.fixture(scope="module")
def colour_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    av = pytest.importorskip("av")
    path = tmp_path_factory.mktemp("video") / "colours.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for colour, count in SCRIPT:
            arr = np.empty((48, 64, 3), np.uint8)
            arr[:] = colour
            for _ in range(count):
                for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_sample_frames_every_second(colour_video: Path) -> None:
    frames = list(video.sample_frames(str(colour_video), 1.0))
    assert [f.time for f in frames] == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0])
    dominant = [int(np.argmax(np.asarray(f.image).reshape(-1, 3).mean(0))) for f in frames]
    assert dominant == [0, 0, 2, 2, 1]  # red red blue blue green
    assert video.video_duration(str(colour_video)) == pytest.approx(4.5)
    # The first frame at or after each 0.25 s grid point: 0, .3, .5, .8, 1.0, ... 4.3.
    assert len(list(video.sample_frames(str(colour_video), 0.25))) == 18


def test_segments_and_overall() -> None:
    segs = video.segments([0, 1, 2, 3, 4], ["a", "a", "b", "a", "a"], [0.9, 0.7, 0.6, 0.8, 1.0], end_time=4.5)
    assert [(s.start, s.end, s.label, s.frames) for s in segs] == [(0, 2, "a", 2), (2, 3, "b", 1), (3, 4.5, "a", 2)]
    assert segs[0].mean_score == pytest.approx(0.8)
    probs = np.array([[0.6, 0.4], [0.6, 0.4], [0.0, 1.0]])
    label, score, mean = video.overall(probs, ["x", "y"])
    assert label == "y" and score == pytest.approx(0.6) and mean["x"] == pytest.approx(0.4)
    assert video.segments([], [], [], 0.0) == []


def test_video_command_segments(colour_video: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    r = CliRunner().invoke(
        main,
        ["video", str(colour_video), "-l", "red,green,blue", "--every", "0.5", "--format", "json"],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [(s["start"], s["end"], s["label"], s["frames"]) for s in out["segments"]] == [
        (0.0, 2.0, "red", 4),
        (2.0, 3.5, "blue", 3),
        (3.5, 4.5, "green", 2),
    ]
    assert out["overall"]["label"] == "red" and len(out["frames"]) == 9
    assert abs(sum(out["overall"]["scores"].values()) - 1) < 1e-4
    table = CliRunner().invoke(main, ["video", str(colour_video), "-l", "red,green,blue", "--frames"])
    assert table.exit_code == 0 and "overall: red" in table.stdout and "start" in table.stdout


def test_video_errors(colour_video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    runner = CliRunner()
    assert runner.invoke(main, ["video", str(colour_video), "-l", "a,b", "--every", "0"]).exit_code == 2
    assert runner.invoke(main, ["video", str(colour_video)]).exit_code == 2  # no labels
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    r = runner.invoke(main, ["video", str(junk), "-l", "a,b"])
    assert r.exit_code == 1 and "cannot open video" in r.output


def test_missing_pyav_names_the_extra(tmp_path: Path, hide_module: Any) -> None:
    hide_module("av")
    f = tmp_path / "x.mp4"
    f.write_bytes(b"")
    r = CliRunner().invoke(main, ["video", str(f), "-l", "a,b"])
    assert r.exit_code == 1 and "pip install 'clip-rt[video]'" in r.output


def test_real_bundle_video(real_bundle: Path, colour_video: Path) -> None:
    r = CliRunner().invoke(
        main, ["video", str(colour_video), "-l", "cat,dog,car", "--model", str(real_bundle), "--format", "json"]
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert len(out["frames"]) == 5 and sum(s["frames"] for s in out["segments"]) == 5
    assert out["segments"][0]["start"] == 0.0 and out["segments"][-1]["end"] == pytest.approx(4.5)


def test_json_labels_file_with_spaced_keys(colour_video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A .json labels file's keys are stripped like every other label name (a raw " red" key
    used to raise KeyError when the per-label means were gathered)."""
    install_fake(monkeypatch)
    spec = tmp_path / "labels.json"
    spec.write_text(json.dumps({" red": None, "green ": None, "blue": ["something blue"]}))
    r = CliRunner().invoke(
        main,
        ["video", str(colour_video), "--labels-file", str(spec), "--every", "1", "--format", "json"],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert set(out["overall"]["scores"]) == {"red", "green", "blue"}
    assert [s["label"] for s in out["segments"]] == ["red", "blue", "green"]
    spec.write_text(json.dumps({"red": None, "red ": None}))
    r = CliRunner().invoke(main, ["video", str(colour_video), "--labels-file", str(spec)])
    assert r.exit_code == 2 and "'red' and 'red '" in r.output
