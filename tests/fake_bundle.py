"""A tiny, torch-free clip-rt bundle for fast runtime tests.

Real manifest (``clip_rt.bundle.manifest.Manifest``), real ONNX graphs built with ``onnx.helper``
(small enough to run in microseconds), a ``tokenizers`` WordLevel tokenizer.json, and correct
sha256 entries. The graphs follow the bundle contract:

- image: ``pixel_values`` (N, 3, S, S) -> 4x4 average pool -> flatten -> MatMul -> L2 normalise.
- text: ``input_ids`` (N, L) -> embedding Gather -> CumSum over the sequence (causal) -> the
  position of the largest id (the EOT token, as in CLIP) -> MatMul -> L2 normalise. Padding after
  EOT therefore changes nothing, so ``dynamic_sequence`` is true; with ``dynamic_sequence=False``
  the input length is fixed to the context length (a sliced input would be rejected).

The second precision (``fp16``) stores its weights as float16 with a Cast to float32, so its
embeddings differ slightly from fp32 ones while keeping float32 I/O.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from clip_rt.bundle.manifest import (
    IMAGE_INPUT,
    IMAGE_OUTPUT,
    TEXT_INPUT,
    TEXT_OUTPUT,
    FileEntry,
    GraphEntry,
    ImageConfig,
    Manifest,
    TextConfig,
    required_format_version,
    sha256_file,
)

WORDS = (
    "a photo of the an cat dog bird car tree house blurry sculpture painting drawing red green "
    "blue small big one two my good bad bright dark close up rendering sketch toy plastic . ,"
).split()
PAD_ID = 0
UNK_ID = 1
VOCAB_SIZE = 64
SOT_ID = VOCAB_SIZE - 2
EOT_ID = VOCAB_SIZE - 1  # largest id, so the text graph finds it with ArgMax like CLIP
OPSET = 17


def vocab() -> dict[str, int]:
    v = {"<pad>": PAD_ID, "<unk>": UNK_ID}
    for i, w in enumerate(WORDS):
        v[w] = 2 + i
    for i in range(len(v), SOT_ID):  # the tokenizer's size must match manifest.text.vocab_size
        v[f"<unused{i}>"] = i
    v["<start_of_text>"] = SOT_ID
    v["<end_of_text>"] = EOT_ID
    return v


def write_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    tok = Tokenizer(WordLevel(vocab(), unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<start_of_text> $A <end_of_text>",
        special_tokens=[("<start_of_text>", SOT_ID), ("<end_of_text>", EOT_ID)],
    )
    tok.save(str(path))


def _weights(rng: np.random.Generator, precision: str, name: str, shape: tuple[int, ...],
             nodes: list, inits: list) -> str:
    """An initializer, float16 + Cast for the fp16 graphs; returns the float32 tensor name."""
    w = rng.standard_normal(shape).astype(np.float32)
    if precision == "fp32":
        inits.append(numpy_helper.from_array(w, name))
        return name
    inits.append(numpy_helper.from_array(w.astype(np.float16), name + "_f16"))
    nodes.append(helper.make_node("Cast", [name + "_f16"], [name], to=TensorProto.FLOAT))
    return name


def image_graph(precision: str, size: int, dim: int, seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes: list = []
    inits: list = []
    pooled = 3 * (size // 4) ** 2
    w = _weights(rng, precision, "proj", (pooled, dim), nodes, inits)
    nodes += [
        helper.make_node("AveragePool", [IMAGE_INPUT], ["pool"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", w], ["feat"]),
        helper.make_node("LpNormalization", ["feat"], [IMAGE_OUTPUT], axis=1, p=2),
    ]
    graph = helper.make_graph(
        nodes, "fake_image",
        [helper.make_tensor_value_info(IMAGE_INPUT, TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info(IMAGE_OUTPUT, TensorProto.FLOAT, ["batch", dim])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fake_bundle")


def text_graph(precision: str, context_length: int, dim: int, seed: int, dynamic: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(seed + 1)
    nodes: list = []
    inits: list = [numpy_helper.from_array(np.array(1, dtype=np.int64), "seq_axis")]
    emb = _weights(rng, precision, "token_embedding", (VOCAB_SIZE, 16), nodes, inits)
    proj = _weights(rng, precision, "text_proj", (16, dim), nodes, inits)
    nodes += [
        helper.make_node("Gather", [emb, TEXT_INPUT], ["tok"], axis=0),  # (N, L, 16)
        helper.make_node("CumSum", ["tok", "seq_axis"], ["causal"]),  # position t sees tokens <= t
        helper.make_node("ArgMax", [TEXT_INPUT], ["eot_pos"], axis=1, keepdims=1),  # (N, 1)
        helper.make_node("GatherND", ["causal", "eot_pos"], ["pooled"], batch_dims=1),  # (N, 16)
        helper.make_node("MatMul", ["pooled", proj], ["feat"]),
        helper.make_node("LpNormalization", ["feat"], [TEXT_OUTPUT], axis=1, p=2),
    ]
    seq = "sequence" if dynamic else context_length
    graph = helper.make_graph(
        nodes, "fake_text",
        [helper.make_tensor_value_info(TEXT_INPUT, TensorProto.INT64, ["batch", seq])],
        [helper.make_tensor_value_info(TEXT_OUTPUT, TensorProto.FLOAT, ["batch", dim])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fake_bundle")


def build_fake_bundle(
    bundle_dir: Path,
    *,
    name: str = "fake-clip",
    precisions: Sequence[str] = ("fp32", "fp16"),
    dynamic_sequence: bool = True,
    embed_dim: int = 8,
    image_size: int = 16,
    context_length: int = 16,
    logit_scale: float = 100.0,
    logit_bias: Optional[float] = None,
    seed: int = 0,
    scoring: str = "softmax",
) -> Path:
    """Write the bundle into *bundle_dir* (created) and return it."""
    bundle_dir = Path(bundle_dir)
    bundle_dir.mkdir(parents=True, exist_ok=True)
    graphs: dict[str, dict[str, GraphEntry]] = {}
    for precision in precisions:
        graphs[precision] = {}
        for encoder, model in (
            ("image", image_graph(precision, image_size, embed_dim, seed)),
            ("text", text_graph(precision, context_length, embed_dim, seed, dynamic_sequence)),
        ):
            onnx.checker.check_model(model)
            fname = f"{encoder}_{precision}.onnx"
            onnx.save(model, str(bundle_dir / fname))
            graphs[precision][encoder] = GraphEntry(file=fname)
    write_tokenizer(bundle_dir / "tokenizer.json")
    files = {
        p.name: FileEntry(sha256=sha256_file(p), bytes=p.stat().st_size)
        for p in sorted(bundle_dir.iterdir())
        if p.is_file() and p.name != "manifest.json"
    }
    manifest = Manifest(
        name=name,
        architecture="fake",
        pretrained=None,
        checkpoint_sha256=None,
        embed_dim=embed_dim,
        logit_scale=logit_scale,
        logit_bias=logit_bias,
        image=ImageConfig(size=(image_size, image_size), mean=(0.48145466, 0.4578275, 0.40821073),
                          std=(0.26862954, 0.26130258, 0.27577711)),
        text=TextConfig(context_length=context_length, vocab_size=VOCAB_SIZE, sot_token_id=SOT_ID,
                        eot_token_id=EOT_ID, pad_token_id=PAD_ID, dynamic_sequence=dynamic_sequence),
        graphs=graphs,
        files=files,
        parity={},
        versions={"fake_bundle": "1", "onnx": onnx.__version__},
        created="2026-01-01T00:00:00Z",
        scoring=scoring,
    )
    manifest.format_version = required_format_version(manifest)
    manifest.write(bundle_dir)
    return bundle_dir
