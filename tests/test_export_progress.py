"""The export's phases: plain lines off a terminal, a live line on one, nothing with -q, the
libraries' noise filtered, NNCF without telemetry, the torch model released before quantising."""

from __future__ import annotations

import io
import logging
import mmap
import os
import subprocess
import sys
import threading
import weakref
from pathlib import Path

import pytest
from click.testing import Result

from clip_rt_export.noise import library_noise_filtered
from clip_rt_export.progress import (
    ExportProgress,
    LineDisplay,
    StreamDisplay,
    TerminalDisplay,
    display_for,
    format_seconds,
)

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests" / "data" / "tiny-clip.json"  # as in conftest.py


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_one_per_phase_with_counts_and_failures() -> None:
    out = io.StringIO()
    progress = ExportProgress(StreamDisplay(out))
    with progress.phase("export:image:fp32", "exporting the image graph (fp32)"):
        pass
    with progress.phase("quantise:image:int8", "quantising the image graph", total=3, unit="photos") as step:
        step.status("calibrating")
        step.advance(2)
        progress.note("a note mid-phase")  # ends the open line; the phase then finishes on its own line
        step.advance()
    with pytest.raises(ValueError), progress.phase("check", "checking"):
        raise ValueError("boom")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("exporting the image graph (fp32)... done in ") and lines[0].endswith(" s")
    assert lines[1] == "quantising the image graph... "
    assert lines[2] == "a note mid-phase"
    assert lines[3].startswith("quantising the image graph: done in ") and lines[3].endswith("(3/3 photos)")
    assert lines[4].startswith("checking... failed after ")
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    keys = [(r.key, r.count, r.failed) for r in progress.records]
    assert keys == [("export:image:fp32", None, False), ("quantise:image:int8", 3, False), ("check", None, True)]
    assert set(progress.records[1].marks) == {"calibrating"}
    assert all(r.wall_s >= 0 and r.cpu_s >= 0 and r.peak_mib is None for r in progress.records)


def test_phases_do_not_nest() -> None:
    progress = ExportProgress()
    with progress.phase("a", "a"), pytest.raises(RuntimeError, match="inside phase 'a'"), progress.phase("b", "b"):
        pass


def test_line_display_hands_whole_lines_to_the_callable() -> None:
    got: list[str] = []
    progress = ExportProgress(LineDisplay(got.append))
    with progress.phase("load", "loading X") as step:
        step.advance()
    progress.note("parity fp32 image: ...")
    assert got[0] == "loading X..." and got[1].startswith("loading X: done in ") and got[2] == "parity fp32 image: ..."


def test_terminal_line_shows_counts_and_time_left_then_a_finished_line() -> None:
    out = _Tty()
    display = TerminalDisplay(out, width=200)
    progress = ExportProgress(display)
    with progress.phase("quantise", "quantising the text graph", total=4, unit="prompts") as step:
        step.status("calibrating")
        step.advance(1)
        live = display._line(display._phase)  # what the ticker draws
        assert "quantising the text graph" in live and "calibrating" in live and "1/4 prompts" in live
        assert " left" in live
        progress.note("between redraws")
        step.advance(3)
        step.status("quantising")
        assert "quantising  " in display._line(display._phase) and "4/4" not in display._line(display._phase)
    text = out.getvalue()
    assert "\rbetween redraws" not in text and "\r\x1b[Kbetween redraws\n" in text
    assert text.endswith("(4/4 prompts)\x1b[K\n") and "\rquantising the text graph... done in " in text
    assert not [t for t in threading.enumerate() if t.name == "clip-rt-export-progress"]  # the ticker stopped


def test_display_for_picks_the_live_line_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    assert isinstance(display_for(_Tty()), TerminalDisplay)
    assert isinstance(display_for(io.StringIO()), StreamDisplay)
    monkeypatch.setenv("TERM", "dumb")
    assert isinstance(display_for(_Tty()), StreamDisplay)


def test_format_seconds() -> None:
    assert [format_seconds(s) for s in (0.42, 12.4, 59.6, 125)] == ["0.4 s", "12 s", "60 s", "2 min 05 s"]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak RSS per phase needs Linux")
def test_memory_is_measured_per_phase_when_asked() -> None:
    progress = ExportProgress(measure_memory=True)
    with progress.phase("big", "big"):
        # An anonymous mapping: fresh pages from the kernel, returned at close (a bytearray may
        # reuse heap the process already holds, as it does late in a long test session).
        block = mmap.mmap(-1, 64 * 1024 * 1024)
        for offset in range(0, len(block), mmap.PAGESIZE):
            block[offset] = 1  # touch every page
        block.close()
    with progress.phase("small", "small"):
        pass
    big, small = progress.records
    assert big.peak_mib is not None and small.peak_mib is not None
    assert big.peak_mib - small.peak_mib > 48  # the second phase's peak was reset at its start


def test_library_noise_is_dropped_and_the_rest_kept() -> None:
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    torch_log = logging.getLogger("torch.utils.cpp_extension")  # torch's loggers may not propagate: own handler
    other, root = logging.getLogger("onnx"), logging.getLogger()
    handler = Keep(logging.WARNING)
    for logger in (torch_log, other, root):
        logger.addHandler(handler)
    try:
        with library_noise_filtered():
            torch_log.warning("No CUDA runtime is found, using CUDA_HOME='/usr/local'")
            torch_log.warning("a real problem")
            root.warning("No pretrained weights loaded for model 'ViT-B-32'. Model initialized randomly.")
            other.warning("No CUDA runtime is found")  # another logger: not ours to filter
        torch_log.warning("No CUDA runtime is found (after the export)")
    finally:
        for logger in (torch_log, other, root):
            logger.removeHandler(handler)
    # A propagating record reaches the root's handler too: count each message once.
    assert list(dict.fromkeys(seen)) == [
        "a real problem",
        "No CUDA runtime is found",
        "No CUDA runtime is found (after the export)",
    ]


def test_tracer_warnings_are_hidden_only_during_the_export() -> None:
    torch = pytest.importorskip("torch")
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with library_noise_filtered():
            warnings.warn("traced a branch", torch.jit.TracerWarning, stacklevel=1)
            warnings.warn("a real one", UserWarning, stacklevel=1)
        warnings.warn("traced after", torch.jit.TracerWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a real one", "traced after"]


def test_nncf_is_imported_without_its_telemetry(tmp_path: Path) -> None:
    """Importing NNCF with openvino-telemetry installed writes ~/intel files (and quantize sends
    events); the export's import leaves HOME alone and gives NNCF its telemetry stub."""
    pytest.importorskip("nncf")
    pytest.importorskip("openvino_telemetry")
    code = (
        "import sys; from clip_rt_export.nncf_quant import _import_nncf; _import_nncf(); "
        "import nncf.telemetry.wrapper as w; from unittest.mock import MagicMock; "
        "assert isinstance(w.telemetry, MagicMock), type(w.telemetry); "
        "assert 'openvino_telemetry' not in sys.modules; import openvino_telemetry"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "NNCF_CI", "NNCF_DEV")}
    env["HOME"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "intel").exists()


@pytest.mark.slow
@pytest.mark.torch
def test_torch_model_is_released_before_quantising(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch model's weights (the size of both fp32 graphs) must be gone before NNCF needs
    the memory: checked with weak references to the model and to every parameter (not with RSS,
    which depends on the allocator). onnxscript's rewrite rules kept the last exported graph,
    and with it every parameter, until the export cleared them (graphs.forget_exported_graph)."""
    pytest.importorskip("open_clip")
    import gc

    from clip_rt_export import api, convert, export_bundle
    from clip_rt_export.load import LoadedModel

    refs: list[weakref.ref[object]] = []
    real_load, real_to_int8 = api.load_model, convert.to_int8
    alive_at_quantise: list[bool] = []

    def load(*args: object, **kwargs: object) -> LoadedModel:
        loaded = real_load(*args, **kwargs)
        refs.append(weakref.ref(loaded.model))
        refs.extend(weakref.ref(p) for p in loaded.model.parameters())
        return loaded

    def to_int8(*args: object, **kwargs: object) -> object:
        gc.collect()
        alive_at_quantise.append(any(ref() is not None for ref in refs))
        return real_to_int8(*args, **kwargs)

    monkeypatch.setattr(api, "load_model", load)
    monkeypatch.setattr(convert, "to_int8", to_int8)
    export_bundle(
        "tiny-clip",
        pretrained="none",
        precisions=("int8",),
        include_fp32=False,
        seed=0,
        output=tmp_path / "b",
        model_config=TINY_CONFIG,
        int8_min_cosine=0.995,
    )
    assert alive_at_quantise == [False, False]


@pytest.fixture(scope="module")
def cli_int8_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    pytest.importorskip("open_clip")
    from click.testing import CliRunner

    from clip_rt.cli import main

    out = tmp_path_factory.mktemp("progress") / "tiny"
    result = CliRunner().invoke(
        main,
        [
            "export",
            "tiny-clip",
            "--model-config",
            str(TINY_CONFIG),
            "--pretrained",
            "none",
            "--seed",
            "0",
            "--precision",
            "int8",
            "--no-fp32",
            "--int8-min-cosine",
            "0.995",
            "-o",
            str(out),
        ],
    )
    return out, result


@pytest.mark.slow
@pytest.mark.torch
def test_cli_off_a_terminal_prints_one_plain_line_per_phase(cli_int8_export: tuple[Path, Result]) -> None:
    out, result = cli_int8_export
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    lines = result.stderr.splitlines()
    expected = [
        "importing torch and open_clip",
        "loading tiny-clip (random weights)",
        "running torch on the parity inputs",
        "exporting the image graph (fp32, 64x64)",
        "exporting the text graph (fp32, context 77, dynamic sequence)",
        "preparing the int8 calibration inputs",
        "checking the image graph (fp32) against torch",
        "checking the text graph (fp32) against torch",
        "quantising the image graph (int8, nncf)",
        "checking the image graph (int8) against torch (the int8 gate)",
        "quantising the text graph (int8, nncf)",
        "checking the text graph (int8) against torch (the int8 gate)",
        "recording the fp32 embeddings of the sample inputs",
        "writing the bundle (checksums, manifest)",
    ]
    phases = [line.split("... done in ")[0] for line in lines if "... done in " in line]
    assert phases == expected
    assert any(
        line.startswith("quantising the text graph (int8, nncf)... done in ") and line.endswith(" prompts)")
        for line in lines
    )
    assert sum(line.startswith("parity ") for line in lines) == 4  # fp32 and int8, image and text
    assert "\r" not in result.stderr and "\x1b" not in result.stderr
    for noise in ("No CUDA runtime", "WARNING:root", "No pretrained weights", "Statistics collection", "[torch.onnx]"):
        assert noise not in result.output


@pytest.mark.slow
@pytest.mark.torch
def test_cli_quiet_prints_only_the_path(tmp_path: Path) -> None:
    pytest.importorskip("open_clip")
    from click.testing import CliRunner

    from clip_rt.cli import main

    out = tmp_path / "q"
    result = CliRunner().invoke(
        main,
        [
            "export",
            "tiny-clip",
            "--model-config",
            str(TINY_CONFIG),
            "--pretrained",
            "none",
            "--seed",
            "0",
            "-o",
            str(out),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out) and result.stderr == ""


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.skipif(sys.platform != "linux", reason="pseudo-terminal via os.openpty")
def test_cli_on_a_terminal_draws_a_live_line(tmp_path: Path) -> None:
    """stderr is a pseudo-terminal: each phase is redrawn in place and left as one finished line."""
    pytest.importorskip("open_clip")
    import select

    leader, follower = os.openpty()
    out = tmp_path / "tty"
    env = dict(os.environ, TERM="xterm", COLUMNS="160")
    cmd = [
        sys.executable,
        "-c",
        "from clip_rt.cli import main; main()",
        "export",
        "tiny-clip",
        "--model-config",
        str(TINY_CONFIG),
        "--pretrained",
        "none",
        "--seed",
        "0",
        "--precision",
        "int8",
        "--no-fp32",
        "--int8-min-cosine",
        "0.995",
        "-o",
        str(out),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 600)
        if not ready:
            proc.kill()
            pytest.fail("no output from the export for 600 s")
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    stdout = proc.stdout.read().decode() if proc.stdout else ""
    assert proc.wait(timeout=60) == 0
    os.close(leader)
    text = b"".join(chunks).decode()
    assert stdout.strip() == str(out)
    assert "\r" in text and "\x1b[K" in text  # redrawn in place
    assert "calibrating" in text and "/80 photos" in text  # NNCF's calibration counted live
    finished = [line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n")]
    assert any(line.startswith("quantising the image graph (int8, nncf)... done in ") for line in finished)
    assert "No CUDA runtime" not in text
