"""The fp32 graphs' embeddings of the export's sample inputs, stored in the bundle
(``parity_reference.npz``, manifest ``parity_reference``).

A mode with no graph of its own (OpenVINO's bf16 compute on the fp32 or int8 graph) is a
default only once it agrees with fp32 (``clip_rt/engine/backends/evidence.py``). With these
embeddings in the bundle the runtime checks it against them instead of loading the fp32 graphs
(about 600 MB for ViT-B/32) on the first run of each machine, and a slim bundle, which has no
fp32 graphs, can take such a mode too. The inputs are the runtime's own preparation of
``sample_inputs`` (its preprocessing and tokenizer), so both sides see the same numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clip_rt.bundle.manifest import IMAGE_INPUT, TEXT_INPUT, Manifest, ParityReference

REFERENCE_FILE = "parity_reference.npz"
BATCH = 8


def write_parity_reference(work: Path, manifest: Manifest, fp32: dict[str, Path]) -> ParityReference:
    """Run the fp32 graphs in *fp32* (encoder -> file in *work*) on onnxruntime over the sample
    inputs and write their embeddings to ``work / REFERENCE_FILE``; *manifest* must already name
    the tokenizer written in *work*."""
    from clip_rt.engine.backends.evidence import sample_inputs
    from clip_rt.engine.backends.ort import OrtBackend
    from clip_rt.inputs.hf_tokenizer import open_tokenizer

    tokenizer = open_tokenizer(work / manifest.text.tokenizer_file, manifest.text)
    arrays: dict[str, np.ndarray] = {}
    for encoder, name in (("image", IMAGE_INPUT), ("text", TEXT_INPUT)):
        inputs = sample_inputs(manifest, encoder, tokenizer)
        graph = OrtBackend(fp32[encoder], ["cpu"])
        try:
            arrays[encoder] = np.concatenate(
                [graph.run({name: inputs[i : i + BATCH]})[0] for i in range(0, len(inputs), BATCH)]
            ).astype(np.float32)
        finally:
            graph.close()
    np.savez(work / REFERENCE_FILE, image=arrays["image"], text=arrays["text"])  # stored, not compressed
    return ParityReference(file=REFERENCE_FILE, image=len(arrays["image"]), text=len(arrays["text"]))
