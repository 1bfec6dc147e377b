"""Options and helpers shared by the inference commands (classify, similarity, index, search, video)."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

import click

from ..errors import BundleError, InputError, ModelNotFoundError
from ..inputs.texts import decode_utf8, decode_utf8_lines
from ..options import RuntimeOptions, Workload
from ..settings import BUILTIN_MODEL

# The built-in default only: the default a command uses is settings.default_model() (--model >
# CLIP_RT_MODEL > config.toml > this), which ModelArgs.load applies when --model is absent.
DEFAULT_MODEL = BUILTIN_MODEL
# --labels separators: the comma, and the full-width comma and ideographic comma that CJK
# input methods type (`-l 猫，狗` is two labels, not one that always scores 100 %).
LABEL_SEPARATORS = re.compile("[,\uff0c\u3001]")
LOW_MEMORY_KEY = "clip_rt.low_memory"  # in click's ctx.meta: the engine.memory.MemoryMode of this run
F = TypeVar("F", bound=Callable[..., Any])


def load_model(name_or_path: str, options: RuntimeOptions) -> Any:
    """The one place commands load a model (tests replace it with a fake)."""
    from ..bundle.store import resolve_bundle

    bundle = resolve_bundle(name_or_path)  # a missing model: the error says how to export it
    from ..model import load  # onnxruntime is imported only when a command runs

    return load(bundle, options=options)


MODEL_DEFAULT_HELP = (
    "Default: $CLIP_RT_MODEL, else `model` in $CLIP_RT_HOME/config.toml, else ViT-B-32-openai "
    "(`clip-rt info` shows which)."
)


@dataclass(frozen=True)
class ModelArgs:
    """A command's model options as given: which bundle (None: the configured default), how it
    runs (one RuntimeOptions, passed down as it is) and the image batch size. Built from the
    shared option group by :func:`model_options`."""

    name: Optional[str]
    options: RuntimeOptions
    batch_size: int = 8

    def load(
        self,
        *,
        workload: Optional[Workload] = None,
        follow_precision: Optional[str] = None,
        default: Optional[str] = None,
    ) -> Any:
        """The model, planned for *workload* (a command is a short-lived run). *follow_precision*:
        the precision of the output or index this run continues, used when --precision is not
        given (an explicit one the caller checks). *default*: the bundle when --model is absent
        (else the configured default, clip_rt.settings)."""
        options = self.options if workload is None else self.options.replace(workload=workload)
        name = self.name or default
        if name is None:
            from ..settings import default_model

            setting = default_model()
            try:
                return _load_following(setting.value, options, follow_precision)
            except ModelNotFoundError as exc:
                raise ModelNotFoundError(
                    f"default model {setting.value!r} (from {setting.source}; --model picks another): {exc}"
                ) from exc
        return _load_following(name, options, follow_precision)


def short_run(images: int = 0, prompts: int = 0) -> Workload:
    """The workload of one command: *images* and *prompts* it will encode, then it exits."""
    return Workload(images=images, prompts=prompts, lifetime="short")


def model_options(model_default_help: str = MODEL_DEFAULT_HELP, batch_size: bool = True) -> Callable[[F], F]:
    """``--model --provider --precision --backend --threads --low-memory [--batch-size --draft]``,
    given to the command as one ``model: ModelArgs`` argument."""

    def decorate(f: F) -> F:
        @functools.wraps(f, updated=())
        def command(*args: Any, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            backend = kwargs.pop("backend")
            options = RuntimeOptions(
                providers=kwargs.pop("provider"),
                precision=kwargs.pop("precision"),
                threads=kwargs.pop("threads"),
                backend=None if backend == "auto" else backend,
                draft=kwargs.pop("draft", False),
                low_memory=low_memory_mode(ctx),
            )
            size = kwargs.pop("batch_size", None)
            kwargs["model"] = ModelArgs(kwargs.pop("model_name"), options, size or options.image_batch_size)
            return f(*args, **kwargs)

        opts = [
            click.option(
                "--model",
                "-m",
                "model_name",
                default=None,
                metavar="NAME|DIR",
                help="Bundle name in the store, alias, or bundle directory. " + model_default_help,
            ),
            click.option(
                "--provider",
                default=None,
                metavar="NAME",
                help="ONNX Runtime execution provider (cpu, cuda, ...); default: the best available.",
            ),
            click.option(
                "--precision",
                type=click.Choice(["fp32", "fp16", "int8", "bf16"]),
                default=None,
                help="Precision (bf16: the fp32 graph computed in bf16 by OpenVINO); default: per "
                "encoder, the fastest measured on this CPU whose export parity passed "
                "(`clip-rt info MODEL` shows it).",
            ),
            click.option(
                "--backend",
                type=click.Choice(["auto", "onnxruntime", "openvino"]),
                default=None,
                help="Inference backend for the CPU; default (auto): chosen per CPU, encoder and run "
                "size from measurements (a few images: the one that starts fastest). openvino "
                "needs clip-rt[openvino].",
            ),
            click.option(
                "--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads for ONNX Runtime."
            ),
            click.option(
                "--low-memory/--no-low-memory",
                default=None,
                expose_value=False,
                is_eager=True,
                callback=_low_memory_option,
                help="Low-memory mode: the lowest peak memory with the same results, slower per "
                "image (images one at a time, sessions without their arena, large buffers "
                "returned when freed). Default: on where this process may use at most 2 GiB "
                "(`clip-rt info` says; docs/devices.md).",
            ),
        ]
        if batch_size:
            opts.append(
                click.option(
                    "--batch-size",
                    type=click.IntRange(min=1),
                    default=None,
                    help="Images per inference batch (default 8, which suits a CPU; 1 in "
                    "low-memory mode; use more on a GPU).",
                )
            )
            opts.append(
                click.option(
                    "--draft",
                    is_flag=True,
                    help="Decode JPEGs at reduced scale (DCT scaling) before resizing: several times faster on "
                    "multi-megapixel photos; pixels differ slightly from open_clip's (docs/images.md).",
                )
            )
        for opt in reversed(opts):
            command = opt(command)
        return command  # type: ignore[return-value]

    return decorate


def _low_memory_option(ctx: click.Context, _param: click.Parameter, value: Optional[bool]) -> None:
    """--low-memory/--no-low-memory, or automatic (None): decided and applied first (an eager
    option), before any session or decoding thread; load_model and --batch-size follow it."""
    from ..engine import memory

    mode = memory.choose_memory_mode(value, memory.memory_limit() if value is None else None)
    ctx.meta[LOW_MEMORY_KEY] = mode
    if mode.low and not memory.use_low_memory_allocator():
        echo_err(
            "low-memory mode: this C library has no glibc mallopt; large buffers stay in the process "
            "(the rest of the mode applies)"
        )


def low_memory_mode(ctx: Optional[click.Context] = None) -> bool:
    """Whether this command runs in low-memory mode (False outside a command with the option)."""
    ctx = ctx or click.get_current_context(silent=True)
    mode = ctx.meta.get(LOW_MEMORY_KEY) if ctx is not None else None
    return bool(mode is not None and mode.low)


def _load_following(model_name: str, options: RuntimeOptions, follow_precision: Optional[str]) -> Any:
    # `load_model` is looked up at call time, so tests can monkeypatch `common.load_model`.
    if options.precision is not None or follow_precision is None:
        return load_model(model_name, options)
    try:
        return load_model(model_name, options.replace(precision=follow_precision))
    except BundleError:
        # This bundle lacks that precision, so it is not the one that wrote the output: load it as
        # asked, and the caller's identity check says what differs (or the bundle's own error recurs).
        return load_model(model_name, options)


def check_precision_follows(precision: Optional[str], recorded: Optional[str], what: str, restart: str) -> None:
    """Refuse an explicit --precision that differs from the one *what* (an output, an index)
    holds; *restart* says how to start over instead."""
    if precision is not None and recorded is not None and precision != recorded:
        raise InputError(
            f"{what} holds {recorded} results and this run asks for --precision {precision}: "
            f"leave --precision out (a continued run follows the {recorded} it finds), or {restart}"
        )


def skip_errors_option(f: F) -> F:
    """``--skip-errors``: the same flag, with the same meaning, for classify and index."""
    return click.option(
        "--skip-errors",
        is_flag=True,
        help="Exit 0 even when some files could not be read (they are still listed on stderr and, for "
        "classify, recorded with their error), so `index ... && search ...` chains go on. "
        "Default: exit 1.",
    )(f)


def label_options(f: F) -> F:
    """``--labels a,b,c | --labels-file F`` and template choice."""
    opts = [
        click.option(
            "--labels", "-l", "labels_csv", default=None, metavar="A,B,...", help="Comma-separated class labels."
        ),
        click.option(
            "--labels-file",
            type=click.Path(exists=True, dir_okay=False),
            default=None,
            help="One label per line (blank lines and # comments ignored), or a .json "
            'object {"label": ["own prompt", ...] or null}. A regular file or a pipe, at most '
            "16 MB ($CLIP_RT_MAX_LABELS_MB raises it).",
        ),
        click.option(
            "--template",
            "template_list",
            multiple=True,
            metavar="TEXT",
            help='Prompt template with {} for the label, e.g. "a photo of a {}." (repeatable).',
        ),
        click.option(
            "--templates",
            "template_set",
            type=click.Choice(["simple", "imagenet"]),
            default=None,
            help="Built-in template set (default: simple).",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def parse_labels(labels_csv: Optional[str], labels_file: Optional[str]) -> list[str] | dict[str, Any]:
    """Label names, or for a ``.json`` labels file a mapping ``{name: [own prompts] | null}``
    (a label with its own prompts is not put through the templates)."""
    if (labels_csv is None) == (labels_file is None):  # `-l ""` is given-but-empty: "no labels" below
        raise click.UsageError("give exactly one of --labels A,B,... or --labels-file FILE")
    if labels_file and labels_file.lower().endswith(".json"):
        return _labels_json(labels_file)
    if labels_csv is not None:
        raw = LABEL_SEPARATORS.split(labels_csv)
    else:
        lines = decode_utf8_lines(_read_labels_file(labels_file), f"--labels-file {labels_file!r}")  # type: ignore[arg-type]
        raw = [line for line in lines if not line.lstrip().startswith("#")]
    labels = [lab.strip() for lab in raw if lab.strip()]
    if not labels:
        raise click.UsageError("no labels given: expected at least one non-empty label")
    dupes = duplicates(labels)
    if dupes:
        raise click.UsageError(f"duplicate labels: {', '.join(sorted(dupes))}")
    return labels


def duplicates(items: Sequence[str]) -> list[str]:
    """The items that occur more than once, each once, in first-seen order (linear time)."""
    counts = Counter(items)
    return [item for item, n in counts.items() if n > 1]


def _read_labels_file(path: str) -> bytes:
    """The whole file: a regular file or a pipe (``--labels-file <(...)``), at most
    ``CLIP_RT_MAX_LABELS_MB`` (16 MB); a device or a longer stream is refused with that limit."""
    from ..inputs.bounded import LABELS_ENV, env_hint, labels_limit, read_limited

    try:
        return read_limited(
            path, what=f"--labels-file {path!r}", limit=labels_limit(), hint=env_hint(LABELS_ENV), pipes=True
        )
    except FileNotFoundError:
        raise InputError(f"--labels-file {path!r}: no such file") from None


def warn_if_single_label(labels: Sequence[str]) -> None:
    """Softmax over one label is always 100 %: say so, once (it is allowed, e.g. to get scores)."""
    if len(labels) == 1:
        warnings.warn(
            f"only one label ({labels[0]!r}): every image scores 100% for it; give two or more, "
            "separated by commas (, ， 、)",
            stacklevel=2,
        )


def _labels_json(path: str) -> dict[str, Any]:
    import json

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        # json.load would keep the last of two equal keys silently, dropping a label's prompts.
        dupes = sorted(duplicates([k for k, _ in pairs]))
        if dupes:
            raise click.UsageError(f"--labels-file {path!r}: duplicate label(s) {', '.join(map(repr, dupes))}")
        return dict(pairs)

    text = decode_utf8(_read_labels_file(path), f"--labels-file {path!r}")
    try:
        data = json.loads(text, object_pairs_hook=unique_keys)
    except RecursionError:
        raise click.UsageError(f"--labels-file {path!r} is not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError
        raise click.UsageError(f"--labels-file {path!r} is not valid UTF-8 JSON ({exc})") from exc

    def good_prompts(v: Any) -> bool:
        return v is None or (isinstance(v, list) and bool(v) and all(isinstance(p, str) and p.strip() for p in v))

    if not (isinstance(data, dict) and data and all(good_prompts(v) for v in data.values())):
        raise click.UsageError(
            f"--labels-file {path!r}: expected a JSON object "
            '{"label": ["own prompt", ...] or null, ...} with at least one label'
        )
    # Label names are stripped (as --labels and text files are), so " cat" is the label "cat"
    # everywhere: the CSV column, the scores keys, the video's per-label means.
    blank = [k for k in data if not k.strip()]
    if blank:
        raise click.UsageError(
            f"--labels-file {path!r}: blank label name(s) {', '.join(map(repr, blank))}; expected a class name"
        )
    by_name: dict[str, list[str]] = {}
    for k in data:
        by_name.setdefault(k.strip(), []).append(k)
    clashes = [keys for keys in by_name.values() if len(keys) > 1]
    if clashes:
        detail = "; ".join(" and ".join(map(repr, keys)) for keys in clashes)
        raise click.UsageError(f"--labels-file {path!r}: labels that are the same once spaces are stripped: {detail}")
    return {k.strip(): v for k, v in data.items()}


def resolve_templates(template_list: Sequence[str], template_set: Optional[str]) -> tuple[str, ...]:
    from .. import templates

    if template_list and template_set:
        raise click.UsageError("give --template or --templates, not both")
    if template_list:
        bad = [t for t in template_list if "{}" not in t]
        if bad:
            raise click.UsageError(f"template {bad[0]!r} has no {{}} placeholder for the label")
        return tuple(template_list)
    return templates.by_name(template_set or "simple")


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def progress_bar(length: int, label: str) -> Any:
    """A progress bar on stderr when it is a terminal (``with bar: bar.update(n)``); silent otherwise."""
    if not stderr_is_tty():
        return _NullBar()
    return click.progressbar(length=length, label=label, file=sys.stderr)


class _NullBar:
    def __enter__(self) -> _NullBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, n: int) -> None:
        return None


def model_identity(model: Any) -> dict[str, Any]:
    return {"model": model.manifest.name, "fingerprint": model.manifest.fingerprint, "precision": model.precision}


def runtime_summary(model: Any) -> Optional[dict[str, Any]]:
    """Which backend/precision/mode ran each encoder (outputs' metadata); None for a model
    without a runtime description (test fakes)."""
    runtime = getattr(model, "runtime", None)
    if not isinstance(runtime, dict):
        return None
    from ..engine.runtime_info import summary

    return summary(runtime)


def echo_err(msg: str) -> None:
    click.echo(msg, err=True)


def check_not_dir(path: str, option: str) -> None:
    if os.path.isdir(path):
        raise InputError(f"{option} {path!r} is a folder; expected a file path")


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Python warnings (truncated prompts, provider fallback, cache trouble) as one
    ``warning: ...`` line on stderr, not the default file:line plus a line of clip-rt's source."""

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        echo_err(f"warning: {message}")

    with warnings.catch_warnings():  # restores the previous display afterwards
        warnings.showwarning = show
        yield
