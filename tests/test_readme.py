"""README.md and docs/ for users: generated tables current with bench/results, no lab notes,
and the README's test command the one .ci/run runs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from bench import readme

ROOT = Path(__file__).resolve().parents[1]
# Pages a user reads; the history page is the one place for dated runs.
USER_PAGES = [
    ROOT / "README.md",
    *[
        p
        for p in sorted((ROOT / "docs").rglob("*.md"))
        if p.relative_to(ROOT / "docs").as_posix() != "benchmarks/history.md"
    ],
]
LAB_NOTES = {
    "a date": re.compile(r"\b20\d\d-\d\d-\d\d\b"),
    "a time of day": re.compile(r"\b\d\d:\d\d UTC\b"),
    "a load average": re.compile(r"load average|\bload \[", re.I),
    "an issue number": re.compile(r"\bissue \d+", re.I),
    "a developer's folder": re.compile(r"/work/|\.\./shared/"),
}


def test_generated_sections_are_current() -> None:
    assert readme.main(["--check"]) == 0, "run `python -m bench.readme` and commit the pages"


def test_readme_is_short_and_has_its_tables() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text) <= 12_000, f"README.md has {len(text)} characters (at most 12,000)"
    for section in ("peers", "jobs", "goals", "install-extras"):
        assert f"<!-- generated: {section} -->" in text


@pytest.mark.parametrize("page", USER_PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_user_pages_hold_no_lab_notes(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    found = [f"{what}: {m.group(0)!r}" for what, rx in LAB_NOTES.items() for m in rx.finditer(text)]
    assert not found, f"{page.relative_to(ROOT)}: {found[:5]} (dated runs go to docs/benchmarks/history.md)"


def test_readme_test_command_is_what_ci_runs() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    command = re.search(r'pip install -e "\.\[([a-z,]+)\]" && (pytest [^&]+) && mkdocs build --strict', text)
    assert command, "README: the set-up + tests + docs command is missing"
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert f'python3 -m pip install -q -e ".[{command.group(1)}]"' in ci
    assert "docs" in command.group(1).split(",")
    assert ci.index(f"python3 -m {command.group(2)}") < ci.index("python3 -m mkdocs build --strict")


def _tree(tmp_path: Path) -> Path:
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# t\n\n<!-- generated: end-to-end -->\nold\n<!-- end generated -->\nafter\n")
    (tmp_path / "docs" / "page.md").write_text("<!-- generated: startup -->\n<!-- end generated -->\n")
    return tmp_path


def test_check_finds_a_stale_page_and_writing_fixes_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _tree(tmp_path)
    before = (root / "README.md").read_text()
    assert readme.main(["--check", "--root", str(root)]) == 1
    assert "stale" in capsys.readouterr().err and (root / "README.md").read_text() == before  # --check writes nothing
    assert readme.main(["--root", str(root)]) == 0
    text = (root / "README.md").read_text()
    assert "old" not in text and text.endswith("<!-- end generated -->\nafter\n")
    assert "x open_clip loop" in text and "bench/results/end_to_end.json" in text
    assert "peak RSS MB" in (root / "docs" / "page.md").read_text()
    assert readme.main(["--check", "--root", str(root)]) == 0


def test_unknown_or_unclosed_sections_and_missing_results_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _tree(tmp_path)
    (root / "docs" / "page.md").write_text("<!-- generated: nonsense -->\n<!-- end generated -->\n")
    assert readme.main(["--check", "--root", str(root)]) == 1
    assert "unknown generated section(s) nonsense" in capsys.readouterr().err
    (root / "docs" / "page.md").write_text("<!-- generated: startup -->\nno end\n")
    assert readme.main(["--check", "--root", str(root)]) == 1
    assert "without its" in capsys.readouterr().err
    (root / "docs" / "page.md").write_text("")
    results = tmp_path / "results"
    shutil.copytree(readme.RESULTS_DIR, results)
    (results / "end_to_end.json").unlink()
    assert readme.main(["--check", "--root", str(root), "--results", str(results)]) == 1
    assert "end_to_end.json: missing" in capsys.readouterr().err


def test_every_section_renders_from_the_results() -> None:
    results = readme.Results(readme.RESULTS_DIR)
    for name, render in readme.SECTIONS.items():
        body = render(results)
        assert body.strip() and "|" in body, name


def test_public_command_hides_machine_paths() -> None:
    assert (
        readme.public_command("flock /work/locks/heavy python3 -m bench.serve --bundle /work/b/x --rounds 3")
        == "python -m bench.serve --bundle PATH --rounds 3"
    )
    assert (
        readme.public_command("python -m bench.models_table --bundle ViT (CLIP)=/w/s/ViT-B-32")
        == "python -m bench.models_table --bundle ViT (CLIP)=PATH"
    )


def _slug(heading: str) -> str:
    """The anchor Markdown's table of contents (and GitHub) gives a heading."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"[-\s]+", "-", text).strip("-")


def test_readme_links_lead_somewhere() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        page = ROOT / path
        if not page.exists():
            broken.append(target)
        elif anchor:
            headings = re.findall(r"(?m)^#+ (.+)$", page.read_text(encoding="utf-8"))
            if anchor not in {_slug(h) for h in headings}:
                broken.append(target)
    assert not broken, f"README.md links to nothing: {broken}"
