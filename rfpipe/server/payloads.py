"""Request image payloads -> encoded image bytes: base64 text, http(s) URLs (operator opt-in), refusals.

`numpy` payloads are pickles, and unpickling a request body runs the sender's code: always refused.
URLs are fetched only when the operator allows it, never from private, loopback, link-local or
otherwise non-public addresses (the name is resolved once, every address checked, and the
connection made to the checked address, so a second DNS answer cannot redirect it), with no
redirects, a byte limit and a timeout.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import socket
import urllib.parse
from collections.abc import Callable

import certifi
import urllib3

from rfpipe.io import _base64
from rfpipe.server.errors import ApiError

_DATA_URI = re.compile(r"^data:image/[a-zA-Z0-9.+-]+;base64,")
_WHITESPACE = re.compile(rb"\s+")
_REFUSED_TYPES = {
    "numpy": "numpy payloads are pickles, and unpickling request data would run the sender's code; "
    "send the image encoded (JPEG, PNG, ...) as base64 instead",
    "numpy_object": "numpy objects cannot cross HTTP; send the image encoded as base64",
    "pil": "PIL images cannot cross HTTP; send the image encoded as base64",
    "file": "server-side file paths are not accepted; send the image bytes as base64",
    "multipart": "multipart images go to the legacy route POST /{dataset_id}/{version_id}",
}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def decode_base64(text: str | bytes, where: str) -> bytes:
    """Strict base64 (whitespace and a `data:image/...;base64,` prefix tolerated) -> bytes.

    >>> decode_base64("data:image/png;base64,iVBORw0KGgo=", "image")[:4]
    b'\\x89PNG'
    """
    if isinstance(text, str):
        text = _DATA_URI.sub("", text, count=1)
        try:
            raw = text.encode("ascii")
        except UnicodeEncodeError as error:
            raise ApiError(400, "invalid_base64", f"{where}: base64 text has a non-ASCII character") from error
    else:
        raw = re.sub(rb"^data:image/[a-zA-Z0-9.+-]+;base64,", b"", text, count=1)
    # Clients rarely wrap their base64, and stripping whitespace scans and copies the text under the
    # GIL (~1 ms for 130 KB): canonical base64 is decoded first, with the GIL released (`_base64.c`).
    # It has no whitespace, so its bytes are the answer the stripped text gives; anything else (None)
    # takes the full path, where binascii decides and names the problem.
    decoded = _base64.decode(raw)
    if decoded is not None:
        return decoded
    raw = _WHITESPACE.sub(b"", raw)
    if not raw:
        raise ApiError(400, "empty_image", f"{where}: empty image (no base64 data)")
    try:
        return base64.b64decode(raw, validate=True)
    except binascii.Error as error:
        raise ApiError(400, "invalid_base64", f"{where}: not valid base64 ({error})") from error


def is_public_address(address: Address) -> bool:
    """True for globally routable unicast addresses; embedded IPv4 (mapped, 6to4, Teredo) is checked too."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is not None and not is_public_address(embedded):
            return False
    return address.is_global and not address.is_multicast


def fetch_url(
    url: str,
    where: str,
    max_bytes: int,
    timeout_s: float,
    address_allowed: Callable[[Address], bool] = is_public_address,
) -> bytes:
    """GET an image URL from a public address; no redirects, at most `max_bytes`, within `timeout_s`.

    >>> fetch_url("https://example.com/cat.jpg", "image", 20 << 20, 10.0)  # doctest: +SKIP
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise ApiError(400, "invalid_url", f"{where}: invalid URL ({error})") from error
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(400, "invalid_url", f"{where}: only http:// and https:// URLs with a host are accepted")
    host = parts.hostname
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise ApiError(400, "url_unreachable", f"{where}: cannot resolve host {host!r}") from error
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for address in addresses:
        if not address_allowed(address):
            raise ApiError(
                403, "url_not_allowed",
                f"{where}: refusing to fetch from {host!r}: it resolves to the non-public address {address}",
            )
    target = str(addresses[0])
    timeout = urllib3.Timeout(total=timeout_s)
    if parts.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            target, port, timeout=timeout, retries=False, cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(), server_hostname=host, assert_hostname=host,
        )
    else:
        pool = urllib3.HTTPConnectionPool(target, port, timeout=timeout, retries=False)
    path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    try:
        with pool:
            response = pool.urlopen("GET", path, headers={"Host": parts.netloc.rsplit("@", 1)[-1]},
                                    redirect=False, preload_content=False)
            if response.status != 200:
                raise ApiError(400, "url_fetch_failed",
                               f"{where}: the URL answered HTTP {response.status} (redirects are not followed)")
            data = response.read(max_bytes + 1)
            response.release_conn()
    except urllib3.exceptions.HTTPError as error:
        raise ApiError(400, "url_fetch_failed", f"{where}: fetching the URL failed ({type(error).__name__})") from error
    if len(data) > max_bytes:
        raise ApiError(413, "image_too_large", f"{where}: the URL's content is larger than {max_bytes} bytes")
    return data


def payload_bytes(
    kind: str, value: str, where: str, allow_url: bool, max_bytes: int, timeout_s: float
) -> bytes:
    """The encoded image bytes of one `{type, value}` payload, or an ApiError naming the problem."""
    kind = kind.lower()
    if kind == "base64":
        return decode_base64(value, where)
    if kind == "url":
        if not allow_url:
            raise ApiError(400, "url_input_disabled",
                           f"{where}: image URLs are disabled on this server (the operator enables them with --allow-url-input)")
        return fetch_url(value, where, max_bytes, timeout_s)
    if kind in _REFUSED_TYPES:
        raise ApiError(400, "image_type_refused", f"{where}: image type {kind!r} is refused: {_REFUSED_TYPES[kind]}")
    raise ApiError(400, "unknown_image_type", f"{where}: unknown image type {kind!r} (expected 'base64' or 'url')")
