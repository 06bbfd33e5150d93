"""HTTP byte ranges of artifact downloads (RFC 9110 14)."""

from __future__ import annotations

from app.problems import ApiError


def byte_range(
    header: str | None, if_range: str | None, size: int, etag: str
) -> tuple[int, int] | None:
    """The one byte range a ``Range`` header asks for, or None for the whole body (no header,
    several ranges, another unit, or an ``If-Range`` for an older version). Raises a 416 when
    the range lies outside the body."""
    if not header or (if_range is not None and if_range.strip() != etag):
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    try:
        if not dash or not (first or last) or not (first + last).isascii():
            raise ValueError
        if first:
            start = int(first)
            end = min(int(last), size - 1) if last else size - 1
        else:  # bytes=-N: the last N bytes
            start, end = max(0, size - int(last)), size - 1
    except ValueError:
        return None  # a malformed Range is ignored (RFC 9110 14.2)
    if start >= size or start > end:
        raise ApiError(
            416,
            "range_not_satisfiable",
            f"the range '{header}' lies outside the archive of {size} bytes",
            hint="resume with 'Range: bytes=N-' where N is the number of bytes you already have",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return start, end
