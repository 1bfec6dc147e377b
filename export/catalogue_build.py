"""Regenerate ``models/catalogue.json`` from the installed open_clip:
``python -m clip_rt_export.catalogue_build [--check] [-o FILE]``.

Architectures and their pretrained tags come from open_clip; ``unsupported`` holds the reason
:func:`clip_rt_export.support.unsupported_reason` gives for each architecture the export refuses;
the OpenAI aliases are kept as they are (they are not open_clip's). ``--check`` writes nothing and
exits 1 when the file differs from what it would write."""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from .support import unsupported_reason

ABOUT = (
    "Names clip-rt knows. 'aliases' are OpenAI's CLIP names: they map to an open_clip architecture and a "
    "default pretrained tag. 'architectures' maps each open_clip architecture (snapshot of open_clip {version}) "
    "to the pretrained tags open_clip lists for it. 'unsupported' gives, for each architecture the export "
    "refuses, the reason (clip_rt_export.support.unsupported_reason). Regenerate with "
    "`python -m clip_rt_export.catalogue_build`."
)


def default_path() -> Path:
    return Path(str(resources.files("clip_rt_models").joinpath("catalogue.json")))


def build_catalogue(aliases: dict[str, Any]) -> dict[str, Any]:
    import open_clip

    names = sorted(open_clip.list_models())
    unsupported = {a: r for a in names if (r := unsupported_reason(a, open_clip.get_model_config(a))) is not None}
    return {
        "about": ABOUT.format(version=open_clip.__version__),
        "open_clip_version": open_clip.__version__,
        "aliases": aliases,
        "architectures": {a: list(open_clip.list_pretrained_tags_by_model(a)) for a in names},
        "unsupported": unsupported,
    }


def render(catalogue: dict[str, Any]) -> str:
    return json.dumps(catalogue, indent=1, ensure_ascii=False) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clip_rt_export.catalogue_build", description=__doc__)
    parser.add_argument("-o", "--output", type=Path, default=None, help="default: the packaged catalogue.json")
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when it is out of date")
    args = parser.parse_args(argv)
    path = args.output or default_path()
    current = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"aliases": {}}
    text = render(build_catalogue(current.get("aliases", {})))
    if args.check:
        same = path.exists() and path.read_text(encoding="utf-8") == text
        stale = "out of date; regenerate with python -m clip_rt_export.catalogue_build"
        print(f"{path}: {'up to date' if same else stale}")
        return 0 if same else 1
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
