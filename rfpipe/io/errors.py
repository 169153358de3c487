"""Why encoded bytes could not become a frame: one `DecodeError` subclass per kind of fault.

The server answers each with its own HTTP status (rfpipe.server.errors).
"""

from __future__ import annotations

__all__ = ["CorruptImageError", "DecodeError", "EmptyImageError", "ImageTooLargeError", "UnsupportedFormatError"]


class DecodeError(ValueError):
    """Bytes that cannot become a frame; the message names the problem.

    >>> raise DecodeError("empty image: no bytes")
    Traceback (most recent call last):
    ...
    rfpipe.io.errors.DecodeError: empty image: no bytes
    """


class EmptyImageError(DecodeError):
    """No bytes, or an image declaring zero width or height."""


class UnsupportedFormatError(DecodeError):
    """Bytes that are not one of the supported formats (rfpipe.io.header.SUPPORTED_FORMATS)."""


class ImageTooLargeError(DecodeError):
    """The header declares more pixels than allowed."""


class CorruptImageError(DecodeError):
    """A recognised format whose data is corrupt or truncated, or that its header reader refuses."""
