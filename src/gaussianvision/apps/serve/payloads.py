"""The request body: one .gsv file, or several concatenated (`cat a.gsv b.gsv`), any layout.

A .gsv header declares the file's whole length, so concatenated files split without any other
framing: a file is header + count table + payload, then the next file starts. Each piece goes
through the library's reader (splats/format.py, every check it makes); what it refuses is a
400 with its message. The limits (images per request, Gaussians per image) are checked on the
headers before any payload is decoded.

The last file of a body may be cut short where the reader reads a cut (allow_truncated: a progressive
single-image float file, `head -c 32+16k` of it holds its first k Gaussians): its whole Gaussians are
embedded, the coarser image the edge sent first (regression, new-user trial: refused as truncated, so the
progressive files' prefixes, which gsv render / show / info read, could not be served)."""
from __future__ import annotations

from dataclasses import dataclass

from gaussianvision.splats import format as fmt
from gaussianvision.splats.format import FormatError
from gaussianvision.splats.types import Splats

from .errors import ServeError

__all__ = ["Image", "split_payloads", "read_images"]


@dataclass(frozen=True)
class Image:
    splats: Splats   # one image, B = 1, float32, no padding
    payload: int     # which .gsv of the body it came from
    index: int       # its place in that file
    declared: int | None = None  # the Gaussians its header declares, where the body held a prefix of them


def split_payloads(body: bytes) -> list[memoryview]:
    """The body -> one view per .gsv file, by the length each header declares (what does not
    start with the magic is left whole, for the reader to refuse with its reason)."""
    if not body:
        raise ServeError(400, "empty_body", "the request body is empty: send one or more .gsv files")
    view, pieces, at = memoryview(body), [], 0
    while at < len(view):
        head = bytes(view[at: at + fmt.HEADER_SIZE])
        # the format's own rule for a file's length (header + count table + payload)
        size = fmt.declared_len(head) if head[:4] == fmt.MAGIC else len(view) - at
        pieces.append(view[at: at + size])
        at += size
    return pieces


def _header(piece: memoryview, index: int) -> fmt.Header:
    """The checked header of piece `index` (a truncated last file is reported by the reader); a refusal's
    `payload` is the index, as for every other refusal of a payload (regression: here it was the text
    "payload 0", elsewhere the number 0)."""
    try:
        return fmt.read_header(piece, f"payload {index}", truncated_ok=True)  # a cut file: its read decides
    except FormatError as e:
        why = str(e)
        if index > 0 and bytes(piece[:4]) != fmt.MAGIC:  # regression (new-user trial): a cut file before the last
            why += (f" (payload {index} starts where payload {index - 1}'s header says it ends: if payload "
                    f"{index - 1} was cut short, only the last file of a body may be)")
        raise ServeError(400, "bad_payload", why, payload=index) from None


def read_images(body: bytes, max_images: int, max_gaussians: int) -> list[Image]:
    """Every image of every .gsv in the body, checked against the reader and the limits."""
    pieces = split_payloads(body)
    headers = [_header(p, i) for i, p in enumerate(pieces)]
    total = sum(h.n_images for h in headers)
    if total > max_images:
        raise ServeError(422, "too_many_images", f"{total} images in one request, over the limit of {max_images}",
                         limit=max_images, images=total)
    out = []
    for i, piece in enumerate(pieces):
        cut = len(piece) < headers[i].total_len  # only the last piece can be (split_payloads)
        if headers[i].n_images == 1 and not cut:  # before decoding; a batch file's (and a cut file's) images
            _check_gaussians(headers[i].n_total, max_gaussians, i)  # are checked one by one below
        try:
            for k, s in enumerate(fmt.iter_images(piece, f"payload {i}", allow_truncated=cut)):
                _check_gaussians(s.max_gaussians, max_gaussians, i, k)
                out.append(Image(s, i, k, headers[i].n_total if cut else None))
        except FormatError as e:
            raise ServeError(400, "bad_payload", str(e), payload=i) from None
    return out


def _check_gaussians(n: int, limit: int, payload: int, image: int = 0) -> None:
    if n < 1:
        raise ServeError(422, "no_gaussians", f"payload {payload} image {image} has no Gaussians",
                         payload=payload, image=image)
    if n > limit:
        raise ServeError(422, "too_many_gaussians",
                         f"payload {payload} image {image} has {n} Gaussians, over the limit of {limit}",
                         limit=limit, gaussians=n, payload=payload, image=image)
