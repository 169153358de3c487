"""Base64 payloads: the GIL-free fast path answers exactly what strict binascii answers after stripping whitespace."""

from __future__ import annotations

import base64
import binascii
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from rfpipe.io import _base64
from rfpipe.server.errors import ApiError
from rfpipe.server.payloads import decode_base64

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def stripped_binascii(raw: bytes) -> bytes | str:
    """The definition decode_base64 keeps: whitespace removed, then strict binascii (or the refusal)."""
    raw = re.sub(rb"\s+", b"", raw)
    if not raw:
        return "empty_image"
    try:
        return binascii.a2b_base64(raw, strict_mode=True)
    except binascii.Error:
        return "invalid_base64"


def answer(text: bytes) -> bytes | str:
    try:
        return decode_base64(text, "image")
    except ApiError as error:
        return error.error_type


nearly_base64 = st.text(alphabet=ALPHABET + "= \n\t-_.\x00", max_size=24).map(str.encode)
encoded = st.binary(max_size=64).map(base64.b64encode)
damaged = st.tuples(encoded, st.integers(0, 63), st.integers(0, 255)).map(
    lambda t: t[0][:t[1]] + bytes([t[2]]) + t[0][t[1] + 1:])


@settings(max_examples=3000, deadline=None)
@given(nearly_base64 | encoded | damaged)
def test_decode_base64_answers_strict_binascii_after_stripping_whitespace(text):
    assert answer(text) == stripped_binascii(text)


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=1, max_size=200))
def test_gil_free_kernel_decodes_every_canonical_encoding(data):
    text = base64.b64encode(data)
    assert _base64.decode(text) == data
    assert _base64.decode(bytearray(text)) == data


def test_gil_free_kernel_leaves_non_canonical_input_to_binascii():
    for text in (b"", b"YQ", b"YQ=", b"Y===", b"====", b"YQ==YQ==", b"YW Jj", b"YWJ-", b"YWJj\n", b"A=A="):
        assert _base64.decode(text) is None, text
