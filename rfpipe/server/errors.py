"""The server's one error type: an HTTP status, a short machine-readable kind and a message naming the problem."""

from __future__ import annotations

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
