"""What every benchmark shares: the model, its bundle, the photos and the torch reference."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .common import RESULTS_DIR, WORK_DIR, log
from .models import TorchModel, load_torch
from .photos import make_jpegs
from .reference import Reference, build

PRECISIONS = ("fp32", "int8", "fp16")


@dataclass
class BenchContext:
    arch: str = "ViT-B-32"
    seed: int = 0
    model_config: Optional[Path] = None  # an open_clip config JSON (tiny models for the smoke test)
    quick: bool = False
    work_dir: Path = WORK_DIR
    out_dir: Path = RESULTS_DIR
    photos: int = 48  # multi-megapixel JPEGs: all for parity, the first 12 end-to-end, 24 for peak RSS
    megapixels: float = 6.0
    _torch: Optional[TorchModel] = field(default=None, repr=False)
    _ref: Optional[Reference] = field(default=None, repr=False)
    _bundle: Optional[Path] = field(default=None, repr=False)
    _tuned: Optional[Path] = field(default=None, repr=False)

    @property
    def torch_model(self) -> TorchModel:
        if self._torch is None:
            cfg = json.loads(Path(self.model_config).read_text()) if self.model_config else None
            self._torch = load_torch(self.arch, self.seed, cfg)
        return self._torch

    @property
    def photo_paths(self) -> list[Path]:
        return make_jpegs(self.work_dir / f"photos-{self.megapixels:g}mp", self.photos, self.megapixels)

    @property
    def reference(self) -> Reference:
        if self._ref is None:
            log("torch fp32 reference embeddings")
            self._ref = build(self.torch_model, self.photo_paths)
        return self._ref

    @property
    def bundle(self) -> Path:
        """A bundle with all three precisions, exported once per arch and seed by the export stage."""
        if self._bundle is None:
            from clip_rt.bundle.store import is_bundle
            from clip_rt_export import export_bundle

            path = self.work_dir / f"bundle-{self.arch}-seed{self.seed}"
            if not is_bundle(path):
                log(f"exporting bundle {path.name} ({', '.join(PRECISIONS)})")
                export_bundle(self.arch, pretrained="none", precisions=PRECISIONS, output=path,
                              model_config=self.model_config, seed=self.seed, log=log)
            self._bundle = path
        return self._bundle

    @property
    def tuned(self) -> Path:
        if self._tuned is None:
            self._tuned = tuned_bundle(self)
        return self._tuned

    def result_meta(self) -> dict[str, Any]:
        return {"arch": self.arch, "seed": self.seed, "weights": "random (pretrained=None), seeded",
                "quick": self.quick, "bundle": str(self.bundle)}


def tuned_bundle(ctx: BenchContext) -> Path:
    """A copy of ctx.bundle whose int8 graphs are ``export.optimize.RECOMMENDED_INT8`` (files
    hard-linked where unchanged, manifest checksums updated): what the export stage would
    write after adopting the recommendation, so the runtime figures can be measured now."""
    import os
    import shutil

    from clip_rt.bundle.manifest import FileEntry, read_manifest, sha256_file
    from clip_rt.bundle.store import is_bundle
    from clip_rt_export.optimize import RECOMMENDED_INT8, optimize_graph

    src = ctx.bundle
    dst = ctx.work_dir / f"{src.name}-tuned"
    if is_bundle(dst):
        return dst
    tmp = ctx.work_dir / f".{dst.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    manifest = read_manifest(src)
    replaced = {manifest.graphs["int8"][enc].file: (manifest.graphs["fp32"][enc].file, enc) for enc in ("image", "text")}
    for name in manifest.files:
        if name in replaced:
            fp32_name, enc = replaced[name]
            log(f"tuned bundle: {name} <- optimize_graph({fp32_name}, **RECOMMENDED_INT8[{enc!r}])")
            optimize_graph(src / fp32_name, tmp / name, **RECOMMENDED_INT8[enc])
            manifest.files[name] = FileEntry(sha256=sha256_file(tmp / name), bytes=(tmp / name).stat().st_size)
        else:
            os.link(src / name, tmp / name)
    manifest.name = dst.name
    manifest.notes = [*manifest.notes, "int8 graphs replaced by export.optimize.RECOMMENDED_INT8 (bench)"]
    manifest.parity.pop("int8", None)  # measured by bench/parity.py instead
    manifest.write(tmp)
    os.replace(tmp, dst)
    return dst
