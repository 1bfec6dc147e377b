"""What every benchmark shares: the model, its bundle, the photos and the torch reference."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from clip_rt_fixtures.photos import make_jpegs

from .common import RESULTS_DIR, WORK_DIR, log
from .models import TorchModel, load_torch
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
    result_suffix: str = ""  # e.g. "_amx_hidden" for the ONEDNN_MAX_CPU_ISA re-run
    clock_ghz: Optional[float] = None  # for % of peak; default: the CPU's reported clock
    threads: int = 2  # cores the candidates use (for the peak)
    int8_min_cosine: Optional[float] = None  # export gate override (the tiny smoke-test model only)
    variants: tuple[str, ...] = ()  # image-graph variants to build and time (default: all)
    _torch: Optional[TorchModel] = field(default=None, repr=False)
    _ref: Optional[Reference] = field(default=None, repr=False)
    _bundle: Optional[Path] = field(default=None, repr=False)

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
            from clip_rt.bundle.manifest import LEGACY_INT8, read_manifest
            from clip_rt.bundle.store import is_bundle
            from clip_rt_export import export_bundle

            path = self.work_dir / f"bundle-{self.arch}-seed{self.seed}"
            # A bundle from before static int8 (no quantization record) is re-exported.
            stale = is_bundle(path) and read_manifest(path).quantization_of("int8", "image") in (None, LEGACY_INT8)
            if not is_bundle(path) or stale:
                log(f"exporting bundle {path.name} ({', '.join(PRECISIONS)})")
                export_bundle(
                    self.arch,
                    pretrained="none",
                    precisions=PRECISIONS,
                    output=path,
                    model_config=self.model_config,
                    seed=self.seed,
                    log=log,
                    force=stale,
                    int8_min_cosine=self.int8_min_cosine,
                )
            self._bundle = path
        return self._bundle

    def result_meta(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "seed": self.seed,
            "weights": "random (pretrained=None), seeded",
            "quick": self.quick,
            "bundle": str(self.bundle),
        }
