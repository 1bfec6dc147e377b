"""The one place that decides what runs each encoder: backend, precision and mode.

A :class:`Planner` keeps the facts a decision rests on: the bundle, the CPU, what the caller
asked for (:class:`clip_rt.options.RuntimeOptions`: backend, precision, memory mode, workload),
the first execution provider, and the parity verdicts of derived modes known so far. Its
:attr:`plan` is :func:`~clip_rt.engine.backends.choose.plan_runtime` of those facts. When a fact
changes (CUDA came up on the CPU; a derived mode failed its parity check), the planner records
it and decides again. Nothing else chooses a precision.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from ..bundle.manifest import Manifest
from ..errors import BundleError
from ..options import RuntimeOptions
from .backends.choose import EncoderChoice, RuntimePlan, choose_encoder, plan_runtime
from .cpu import CpuIsa


class Planner:
    """Decides, and re-decides when told what changed."""

    def __init__(
        self, manifest: Manifest, cpu: CpuIsa, options: RuntimeOptions, *, accelerator: Optional[str] = None
    ) -> None:
        if not manifest.precisions:
            raise BundleError(f"bundle {manifest.name!r} lists no graphs")
        self.manifest = manifest
        self.cpu = cpu
        self.options = options
        self._accelerator = accelerator
        self._evidence = self._known_evidence()
        self._plan = self._decide()
        for encoder in ("image", "text"):  # both must exist, even if only one is used
            manifest.graph(self._plan.encoder(encoder).graph_precision, encoder)

    @property
    def plan(self) -> RuntimePlan:
        return self._plan

    @property
    def accelerator(self) -> Optional[str]:
        return self._accelerator

    def _known_evidence(self) -> dict[str, dict[str, bool]]:
        from .runtime_info import known_evidence

        return known_evidence(self.manifest.fingerprint, self.cpu)

    def _decide(self, backend: Optional[str] = None) -> RuntimePlan:
        o = self.options
        return plan_runtime(
            self.manifest,
            self.cpu,
            accelerator=self._accelerator,
            backend=backend or o.backend,
            precision=o.precision,
            evidence=self._evidence,
            workload=o.workload,
            low_memory=o.low_memory,
        )

    # -- facts that change --------------------------------------------------------------------
    def passed(self, choice: EncoderChoice, note: str) -> EncoderChoice:
        """*choice*'s derived mode passed its parity check: kept, with the figure as a note."""
        settled = dataclasses.replace(choice, needs_evidence=False, notes=(*choice.notes, note))
        self._plan = self._plan.with_encoder(settled)
        return settled

    def failed(self, choice: EncoderChoice) -> EncoderChoice:
        """*choice*'s derived mode failed its parity check: decided again without it (keeping any
        precision asked for); returns the encoder's new choice."""
        self._evidence.setdefault(choice.encoder, {})[f"{choice.backend}:{choice.mode_label}"] = False
        again = self._decide().encoder(choice.encoder)
        self._plan = self._plan.with_encoder(again)
        return again

    def on_cpu(self) -> RuntimePlan:
        """The accelerator fell back to the CPU: the precision defaulted for it (fp16 on CUDA) is
        slow there, so both encoders take onnxruntime's CPU choice."""
        self._accelerator = None
        self._plan = self._decide(backend="onnxruntime")
        return self._plan


def default_precision(manifest: Manifest, first_provider: str) -> str:
    """onnxruntime's default with nothing measured for the CPU: fp16 first on CUDA where the
    bundle has it; on the CPU the fastest precision whose export parity passed (int8, fp32)."""
    from .session import CPU

    if not manifest.precisions:
        raise BundleError(f"bundle {manifest.name!r} lists no graphs")
    accelerator = None if first_provider == CPU else first_provider
    return choose_encoder(
        "image",
        manifest,
        CpuIsa("generic", frozenset()),
        installed=("onnxruntime",),
        accelerator=accelerator,
        table={"rows": []},
    ).precision
