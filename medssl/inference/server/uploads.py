"""Stream an upload to disk: multipart ``file`` parts, or one raw DICOM/zip/NIfTI body.

Nothing is buffered in memory beyond one network chunk. Each file is written into the
request's private folder as ``input-00001<ext>``: the client's file name is never used as a
path (``../../etc/cron.d/x`` stays a string nobody reads), and the extension comes from
sniffing the content, as ingest does. Caps: files per upload, header bytes per part; form
fields other than ``file`` are refused. The formats allowed together are those of
:class:`~medssl.inference.predictor.PredictionRequest`: DICOM files, or one zip, or one
NIfTI/NRRD.
"""

from __future__ import annotations

import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from medssl.errors import IngestError
from medssl.inference.server.responses import ApiError
from medssl.io.sources import BadItem, FileFormat, iter_source_items, sniff_format

RAW_TYPES = frozenset(
    {
        "application/dicom",
        "application/zip",
        "application/x-zip-compressed",
        "application/octet-stream",
        "application/gzip",
        "application/x-gzip",
    }
)
FILE_FIELD = "file"
_EXT = {FileFormat.DICOM: ".dcm", FileFormat.NIFTI: ".nii", FileFormat.NRRD: ".nrrd"}


def _bad(detail: str) -> ApiError:
    return ApiError(400, "bad_request", detail)


def _invalid(detail: str) -> ApiError:
    return ApiError(422, "invalid_input", detail)


class _PartWriter:
    """Multipart callbacks that write each ``file`` part to its own numbered file."""

    def __init__(self, folder: Path, max_files: int, max_header_bytes: int) -> None:
        self.folder, self.max_files, self.max_header_bytes = folder, max_files, max_header_bytes
        self.paths: list[Path] = []
        self.ended = False
        self._out: BinaryIO | None = None
        self._headers: list[list[bytearray]] = []
        self._header_bytes = 0

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._field,
            "on_header_value": self._value,
            "on_headers_finished": self._open,
            "on_part_data": self._data,
            "on_part_end": self._close,
            "on_end": self._end,
        }

    def _begin(self) -> None:
        self._headers, self._header_bytes = [], 0

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.max_header_bytes:
            raise ApiError(
                431,
                "headers_too_large",
                f"a multipart part's headers exceed {self.max_header_bytes} bytes",
            )

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start)
        if not self._headers or self._headers[-1][1]:
            self._headers.append([bytearray(), bytearray()])
        self._headers[-1][0] += data[start:end]

    def _value(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start)
        if not self._headers:
            self._headers.append([bytearray(), bytearray()])
        self._headers[-1][1] += data[start:end]

    def _open(self) -> None:
        headers = {bytes(k).strip().lower(): bytes(v).strip() for k, v in self._headers}
        kind, params = parse_options_header(headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("latin-1")
        if kind != b"form-data" or name != FILE_FIELD:
            shown = name[:32].encode("ascii", "replace").decode() if name.isprintable() else "?"
            raise _invalid(
                f"unexpected form field {shown!r}: send files in field '{FILE_FIELD}' only"
            )
        if len(self.paths) >= self.max_files:
            raise ApiError(413, "too_many_files", f"an upload holds at most {self.max_files} files")
        path = self.folder / f"input-{len(self.paths) + 1:05d}"
        self._out = open(path, "xb")  # noqa: SIM115 - closed in _close or close()
        self.paths.append(path)

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._out is None:
            raise _bad("multipart data outside a part")
        self._out.write(data[start:end])

    def _close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def _end(self) -> None:
        self.ended = True

    def close(self) -> None:
        self._close()


async def receive_upload(
    chunks: AsyncIterator[bytes],
    content_type: str | None,
    folder: Path,
    *,
    max_files: int,
    max_header_bytes: int,
) -> tuple[Path, ...]:
    """Write the body's files into ``folder``; return them, renamed by sniffed format.

    Raises:
        ApiError: 415 for an unsupported content type or a file of unknown format, 400 for
            broken multipart framing, 413/431 past a cap, 422 for empty or ill-combined files.
    """
    kind, params = parse_options_header(content_type or "")
    kind_text = kind.decode("latin-1").lower()
    if kind_text == "multipart/form-data":
        boundary = params.get(b"boundary")
        if not boundary or len(boundary) > 200:
            raise _bad("multipart/form-data without a usable boundary")
        writer = _PartWriter(folder, max_files, max_header_bytes)
        try:
            parser = MultipartParser(boundary, writer.callbacks(), max_header_size=max_header_bytes)
            async for chunk in chunks:
                parser.write(chunk)
            parser.finalize()
        except FormParserError as exc:
            raise _bad(f"multipart body malformed ({type(exc).__name__})") from None
        finally:
            writer.close()
        if not writer.ended:
            raise _bad("multipart body ends before its closing boundary")
        paths = writer.paths
    elif kind_text in RAW_TYPES:
        path = folder / "input-00001"
        # a local file written chunk by chunk: async file I/O would add a thread hop per chunk
        with open(path, "xb") as out:  # noqa: ASYNC230
            async for chunk in chunks:
                out.write(chunk)
        paths = [path]
    else:
        shown = kind_text[:60] if kind_text.isprintable() else "?"
        raise ApiError(
            415,
            "unsupported_media_type",
            f"content type {shown!r}: send multipart/form-data with field '{FILE_FIELD}', or one application/dicom, application/zip or application/octet-stream body",
        )
    if not paths:
        raise _invalid(f"no files: send one or more in field '{FILE_FIELD}'")
    return _name_by_content(paths)


def _name_by_content(paths: list[Path]) -> tuple[Path, ...]:
    kinds: list[str] = []
    named: list[Path] = []
    for index, path in enumerate(paths):
        with open(path, "rb") as f:
            head = f.read(352)
        which = f"file {index + 1} of {len(paths)}"
        if not head:
            raise _invalid(f"{which} is empty")
        if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
            ext = ".zip"
        elif head[:2] == b"\x1f\x8b":
            ext = ".nii.gz"  # the only gzipped input read; the reader checks it is NIfTI
        else:
            fmt = sniff_format(head)
            if fmt not in _EXT:
                raise ApiError(
                    415,
                    "unsupported_media_type",
                    f"{which} is not DICOM, a zip, NIfTI or NRRD (content sniffed, names ignored)",
                )
            ext = _EXT[fmt]
        kinds.append(ext)
        target = path.with_name(path.name + ext)
        path.rename(target)
        named.append(target)
    if len(named) > 1 and any(k != ".dcm" for k in kinds):
        raise _invalid(
            f"{len(named)} files including a zip, NIfTI or NRRD: send DICOM files, or exactly one zip, NIfTI or NRRD"
        )
    return tuple(named)


def check_archive(path: Path, max_members: int) -> None:
    """Refuse a zip whose directory is unreadable, holds unsafe names, bombs, or too many members.

    The model's reader checks every member again when it reads it; this is the server's own
    guard, run before any model code sees the archive.
    """
    if path.suffix != ".zip":
        return
    count = 0
    try:
        for entry in iter_source_items(path):
            if isinstance(entry, BadItem):
                raise _invalid(f"zip upload: {entry.error.message}")
            count += 1
            if count > max_members:
                raise ApiError(
                    413, "too_many_files", f"zip upload holds more than {max_members} files"
                )
    except IngestError as err:
        raise _invalid(f"zip upload: {err.message}") from None
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _invalid(f"zip upload unreadable ({type(exc).__name__})") from None
    if count == 0:
        raise _invalid("zip upload holds no files")
