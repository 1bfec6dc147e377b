"""What the HTML report and the search page share: their templates (package data), filling them
without letting a value become markup, JSON that cannot end its ``<script>`` element, and a
Content-Security-Policy that admits only the page's own inline script and style (by hash).

Every user value (file names, labels, error messages) reaches a page either through
:func:`esc` into the static HTML, or inside the JSON blob that the page's script reads with
``JSON.parse`` and puts into the DOM as text (``textContent``, never ``innerHTML``).
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any

from .records import dumps_json

_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")
_SCRIPT_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def asset(package: str, name: str) -> str:
    """The text of a template file shipped in *package* (``clip_rt.outputs``: ``html/...``)."""
    return resources.files(package).joinpath(name).read_text(encoding="utf-8")


def esc(value: Any) -> str:
    """*value* as HTML text or attribute value (quotes escaped too)."""
    return html.escape(str(value), quote=True)


def script_json(obj: Any) -> str:
    """JSON to put inside ``<script type="application/json">``: no ``<``, ``>`` or ``&``
    appears literally, so no value can close the element (``</script>``) or open a comment."""
    return re.sub("[<>&\u2028\u2029]", lambda m: _SCRIPT_UNSAFE[m.group()], dumps_json(obj))


def csp_hash(text: str) -> str:
    """The CSP source expression that allows exactly this inline script or style."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def fill(template: str, values: Mapping[str, str]) -> str:
    """Replace each ``{{NAME}}`` in one pass: text put in is never searched for placeholders
    again (a file name spelled ``{{SCRIPT}}`` stays text). Every placeholder must have a value."""
    missing = sorted(set(_PLACEHOLDER.findall(template)) - set(values))
    if missing:
        raise KeyError(f"template placeholders without a value: {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
