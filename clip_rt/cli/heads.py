"""``--head HEAD``: a fitted head (``clip-rt fit``) in place of zero-shot labels, for classify,
video, eval and ray classify. The head file is read first (a damaged one fails before the
model loads), and checked against the model as soon as it is loaded (another bundle: refused
before any output is opened)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

import click

from .common import parse_labels, resolve_templates

if TYPE_CHECKING:
    from ..adapt.head import Head
    from ..zeroshot import EmbeddingClassifier

F = TypeVar("F", bound=Callable[..., Any])

HEAD_HELP = (
    "A head fitted by `clip-rt fit` on this bundle, used instead of zero-shot labels: the labels come "
    "from the head (--labels, if given, must be exactly its labels in its order; --template/--templates "
    "cannot be given). See docs/adapt.md."
)


def head_option(f: F) -> F:
    return click.option(
        "--head", "head_path", type=click.Path(dir_okay=False), default=None, metavar="HEAD", help=HEAD_HELP
    )(f)


def read_head(head_path: Optional[str]) -> Optional[Head]:
    """The :class:`~clip_rt.adapt.head.Head` at *head_path* (HeadError, exit 1, if it is not a
    sound head file), or None."""
    if head_path is None:
        return None
    from ..adapt.head import Head

    return Head.load(head_path)


def labels_and_templates(
    head: Optional[Head],
    labels_csv: Optional[str],
    labels_file: Optional[str],
    template_list: tuple[str, ...],
    template_set: Optional[str],
) -> tuple[Any, tuple[str, ...]]:
    """The label spec and templates of a run: the options', or the head's (the options then
    may only repeat its labels exactly; anything else is a usage error, exit 2)."""
    if head is None:
        return parse_labels(labels_csv, labels_file), resolve_templates(template_list, template_set)
    if template_list or template_set:
        raise click.UsageError(
            f"--head keeps the templates it was fitted with ({len(head.templates)}); leave out --template/--templates"
        )
    if labels_csv is not None or labels_file is not None:
        from ..adapt.head import check_head_arguments
        from ..errors import InputError

        try:
            check_head_arguments(head, parse_labels(labels_csv, labels_file), None)
        except InputError as exc:
            raise click.UsageError(f"--labels with --head: {exc}") from None
    return list(head.labels), tuple(head.templates)


def classifier_for(
    model: Any, head: Optional[Head], label_spec: Any, templates: tuple[str, ...]
) -> EmbeddingClassifier:
    """The run's classifier: the head checked against *model* (another bundle: HeadError), or
    a zero-shot classifier of *label_spec* x *templates*."""
    if head is not None:
        from ..adapt.head import head_for_model

        return head_for_model(model, head)
    return model.classifier(label_spec, templates)


def head_identity(head: Optional[Head]) -> dict[str, Optional[str]]:
    """What an output records about the head: its digest, or null without one (an output
    written before heads existed has no such key, which reads as null: it resumes as before,
    and a head's output cannot be resumed without its head, nor the other way round)."""
    return {"head": None if head is None else head.digest}
