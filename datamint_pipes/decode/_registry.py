"""The decoder registry, format detection, and the public ``probe`` / ``decode`` entry points.

Errors are translated here, once: whatever a decoder or the library under it raises becomes a
:class:`~datamint_pipes.errors.DecodeError` naming the resource id, the file and the cause (the original exception
is chained as ``__cause__``). ``MemoryError`` passes through unchanged.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from datamint_pipes.decode._base import Decoded, Decoder, ProbeResult
from datamint_pipes.errors import DecodeError
from datamint_pipes.model import file_suffix

__all__ = ["Source", "decode", "detect_format", "get_decoder", "probe", "register"]
# Internal API, shared with the other decoder modules (not re-exported by the package): HEAD_SIZE, Attempt, opened,
# read_head, source_name, translated.

Source = bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO

HEAD_SIZE = 4096  # enough for the DICOM preamble, a NIfTI-2 header, and a gzip member's first NIfTI header

_DECODERS: dict[str, Decoder] = {}


def register(decoder: Decoder, *, replace: bool = False) -> None:
    """Add ``decoder`` under ``decoder.name``.

    Detection asks decoders to sniff in registration order (the built-in DICOM decoder is registered first, because
    some DICOM files carry another format's magic in their preamble). Registering a name twice raises ``ValueError``
    unless ``replace=True``, which keeps the original position.
    """
    if not isinstance(decoder, Decoder):
        raise TypeError(f"{decoder!r} lacks the Decoder interface (name, mimetypes, suffixes, sniff, probe, decode)")
    if decoder.name in _DECODERS and not replace:
        raise ValueError(f"a decoder named {decoder.name!r} is already registered; pass replace=True")
    _DECODERS[decoder.name] = decoder


def get_decoder(format: str) -> Decoder:
    """The decoder registered under ``format``; :class:`DecodeError` if there is none."""
    try:
        return _DECODERS[format]
    except KeyError:
        raise DecodeError(f"no decoder for format {format!r}; registered: {sorted(_DECODERS)}") from None


def detect_format(head: bytes, filename: str | None, mimetype: str | None) -> str:
    """Name of the format of a file whose first bytes are ``head``.

    Order: each decoder's magic (DICOM ``DICM`` at offset 128 first, then PNG, JPEG, NIfTI/gzip-NIfTI, video
    containers), then ``mimetype`` (parameters ignored), then the suffix of ``filename`` (``.nii.gz`` is one suffix).
    Raises :class:`DecodeError` when nothing matches.
    """
    for decoder in _DECODERS.values():
        if decoder.sniff(head):
            return decoder.name
    if mimetype:
        wanted = mimetype.split(";", 1)[0].strip().lower()
        for decoder in _DECODERS.values():
            if wanted in decoder.mimetypes:
                return decoder.name
    suffix = file_suffix(filename) if filename else ""
    if suffix:
        for decoder in _DECODERS.values():
            if suffix in decoder.suffixes:
                return decoder.name
    raise DecodeError(
        f"unrecognised file format (first bytes {bytes(head[:8])!r}, mimetype {mimetype!r}, suffix {suffix!r})"
    )


def probe(
    source: Source,
    *,
    filename: str | None = None,
    mimetype: str | None = None,
    resource_id: str | None = None,
) -> ProbeResult:
    """What :func:`decode` would return for ``source`` (shape, dtype, frame count, spacing), from headers only.

    ``source`` is the file's bytes, a path, or a binary file object (read from its current position; a
    non-seekable one is read whole). ``filename`` (defaults to the path or the file object's name) and
    ``mimetype`` help detection and name the file in errors. Raises :class:`DecodeError`.
    """
    name = filename if filename is not None else source_name(source)
    with translated("probe", resource_id, name) as attempt, opened(source) as stream:
        attempt.format = detect_format(read_head(stream), name, mimetype)
        return get_decoder(attempt.format).probe(stream)


def decode(
    source: Source,
    *,
    filename: str | None = None,
    mimetype: str | None = None,
    resource_id: str | None = None,
) -> Decoded:
    """Decode ``source`` into a :class:`Decoded` array laid out (C,H,W) or (C,N,H,W).

    Arguments as :func:`probe`. The result's shape and dtype equal ``probe(source).shape`` / ``.dtype``.
    Raises :class:`DecodeError` (a ``ValueError``) for any unreadable, truncated or unsupported file.
    """
    name = filename if filename is not None else source_name(source)
    with translated("decode", resource_id, name) as attempt, opened(source) as stream:
        attempt.format = detect_format(read_head(stream), name, mimetype)
        return get_decoder(attempt.format).decode(stream)


def source_name(source: Source) -> str | None:
    """The path of ``source``, or its file object's ``name``; None for bytes and unnamed file objects."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else None


@contextlib.contextmanager
def opened(source: Source) -> Iterator[BinaryIO]:
    """A seekable binary stream whose position 0 is the start of the file."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as file:
            yield file
    elif not hasattr(source, "read"):
        raise DecodeError(f"cannot decode a {type(source).__name__}: pass bytes, a path or a binary file object")
    elif _seekable_at_start(source):
        yield source
    else:
        data = source.read()
        if not isinstance(data, bytes):
            raise DecodeError(
                f"{type(source).__name__} is not a binary file object (read() gave {type(data).__name__})"
            )
        yield io.BytesIO(data)


def _seekable_at_start(stream: BinaryIO) -> bool:
    try:
        return stream.seekable() and stream.tell() == 0
    except (AttributeError, OSError, ValueError):
        return False


def read_head(stream: BinaryIO) -> bytes:
    """The first ``HEAD_SIZE`` bytes of ``stream``, rewound to 0 after; :class:`DecodeError` when it is empty."""
    head = stream.read(HEAD_SIZE)
    stream.seek(0)
    if not head:
        raise DecodeError("the file is empty")
    return head


@dataclass
class Attempt:
    """What :func:`translated` is doing (``action``) and to which ``format``, for its error messages."""

    action: str
    format: str | None = None


@contextlib.contextmanager
def translated(action: str, resource_id: str | None, filename: str | None) -> Iterator[Attempt]:
    """Turn any failure inside the block into one :class:`DecodeError` that names the resource and file."""
    attempt = Attempt(action)
    try:
        yield attempt
    except MemoryError:
        raise
    except DecodeError as exc:
        if exc.resource_id == resource_id and exc.filename == filename:
            raise
        raise DecodeError(str(exc), resource_id=resource_id, filename=filename) from (exc.__cause__ or exc)
    except Exception as exc:
        what = f"{attempt.format} file" if attempt.format else "file"
        message = f"cannot {attempt.action} {what}: {type(exc).__name__}: {exc}"
        raise DecodeError(message, resource_id=resource_id, filename=filename) from exc
