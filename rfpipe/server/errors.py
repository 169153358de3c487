"""The server's one error type: an HTTP status, a short machine-readable kind and a message naming the problem."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rfpipe.io.decode import (
    CorruptImageError,
    DecodeError,
    EmptyImageError,
    ImageTooLargeError,
    UnsupportedFormatError,
)


class ApiError(Exception):
    """An answer the client caused (4xx) or a capacity limit (503/504); never a crash.

    >>> raise ApiError(400, "invalid_image", "image[0]: not valid base64")  # doctest: +SKIP
    """

    def __init__(self, status: int, error_type: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.headers = headers or {}


_DECODE_STATUS: dict[type[DecodeError], tuple[int, str]] = {
    EmptyImageError: (400, "empty_image"),
    UnsupportedFormatError: (415, "unsupported_image_format"),
    ImageTooLargeError: (413, "image_too_large"),
    CorruptImageError: (400, "corrupt_image"),
}


def from_decode_error(error: DecodeError, where: str) -> ApiError:
    """The HTTP answer for an image that cannot be decoded; `where` names the image in the request."""
    status, kind = _DECODE_STATUS.get(type(error), (400, "invalid_image"))
    return ApiError(status, kind, f"{where}: {error}")


def from_validation_errors(errors: Iterable[dict[str, Any]]) -> ApiError:
    """The answer for a body pydantic refused: 400 `invalid_json`, or 422 `invalid_parameters` naming the fields."""
    problems = []
    for item in errors:
        if item.get("type") == "json_invalid":
            return ApiError(400, "invalid_json",
                            f"the body is not valid JSON: {item.get('ctx', {}).get('error', 'parse error')}")
        location = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
        problems.append(f"{location or 'body'}: {item.get('msg')}")
    return ApiError(422, "invalid_parameters", "invalid request: " + "; ".join(problems[:10]))
