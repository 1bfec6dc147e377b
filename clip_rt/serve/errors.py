"""HTTP errors as JSON: ``{"error": {"message", "type", "code", "param"}}`` (the OpenAI error
shape, so the OpenAI client shows the message), one exception class for all of them."""

from __future__ import annotations

from typing import Any, Optional

# kind -> HTTP status. The kind is the `error.type` field and the `kind` label of
# clip_rt_errors_total, so a dashboard can tell a flood of bad images from overload.
KINDS = {
    "invalid_request": 400,  # wrong type, missing field, bad value, empty input
    "invalid_json": 400,  # not JSON, not UTF-8
    "invalid_image": 400,  # undecodable image, too many pixels, bad base64
    "unauthorized": 401,
    "forbidden_path": 403,  # a file outside --allow-dir, or files not allowed at all
    "not_found": 404,  # unknown model, index or route
    "method_not_allowed": 405,
    "conflict": 409,  # a thumbnail asked for by an index generation that has since been replaced
    "request_timeout": 408,  # the request head or body did not arrive in time (--header/--body-timeout)
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "overloaded": 503,
    "not_ready": 503,
    "internal": 500,
}


class ApiError(Exception):
    """An error response. *message* says what was expected and what was given."""

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        param: Optional[str] = None,
        headers: Optional[dict[str, str]] = None,
        details: Optional[list[dict[str, Any]]] = None,
    ) -> None:
        super().__init__(message)
        if kind not in KINDS:
            raise ValueError(f"unknown error kind {kind!r}")
        self.kind = kind
        self.status = KINDS[kind]
        self.message = message
        self.param = param
        self.headers = headers or {}
        self.details = details

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"message": self.message, "type": self.kind, "code": self.status, "param": self.param}
        if self.details:
            err["details"] = self.details
        return {"error": err}


def bad_request(message: str, param: Optional[str] = None) -> ApiError:
    return ApiError("invalid_request", message, param=param)


def describe(value: Any) -> str:
    """A short, safe description of a JSON value for an error message: its type, and the value
    itself when short."""
    kind = {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)
    if isinstance(value, (dict, list)):
        return f"{kind} of {len(value)} item(s)"
    text = repr(value)
    return f"{kind} ({text[:40]}{'...' if len(text) > 40 else ''})" if value is not None else kind
