"""How much a gzip file can hold, judged without inflating it into memory.

A ``.nii.gz`` header can claim any size, and nibabel allocates the whole claimed array before it
learns that the stream is short, so a 50 kB file claiming 1 GB of voxels costs 1 GB of memory to
refuse. Three cheap judgements, from cheapest to dearest, let the reader refuse it first:

* deflate cannot beat 1032:1 — its best symbol pair is a 258-byte match with distance 1 coded in two
  1-bit Huffman codes, and the gzip and block headers only lower the ratio — so a file of ``n`` bytes
  never inflates beyond ``1032·n`` (:func:`max_inflated_size`; real zeros reach ~1029:1);
* the gzip trailer's ISIZE (the last 4 bytes: the last member's length mod 2³²) of a whole
  single-member file — what nibabel and our writer produce — must fit the claimed length
  (:func:`trailer_allows`). It is only a hint: a cut file ends in arbitrary bytes, and a
  multi-member file (``cat a.gz b.gz``, bgzip) in its last member's size;
* so when the hint says "short", the stream is inflated chunk by chunk and counted, output discarded
  (:func:`inflated_size`): constant memory, and a file is refused only when it certainly ends short.
"""

from __future__ import annotations

import zlib
from pathlib import Path

#: Deflate's best ratio: 258 bytes out of 2 bits.
MAX_DEFLATE_RATIO = 1032
#: Headroom on the bound (gzip header and trailer cost bytes, so this only errs on the side of reading).
SLACK_BYTES = 64 * 1024
_GZIP_WBITS = 16 + 15  # gzip container, any window
_CHUNK = 1 << 20


def max_inflated_size(compressed_bytes: int) -> int:
    """The most bytes a gzip file of ``compressed_bytes`` can inflate to (all its members together)."""
    return MAX_DEFLATE_RATIO * compressed_bytes + SLACK_BYTES


def trailer_allows(path: Path, needed: int) -> bool:
    """Whether the file's last 4 bytes, read as a single member's ISIZE, fit a stream of ``needed`` bytes or more.

    ISIZE is the length mod 2³², so a stream of ``ISIZE + k·2³²`` bytes (k ≥ 0) that the file's size
    can hold must reach ``needed``. False means "inflate and count", never "refuse".
    """
    size = path.stat().st_size
    if size < 18:  # smaller than an empty gzip member
        return False
    with open(path, "rb") as handle:
        handle.seek(-4, 2)
        isize = int.from_bytes(handle.read(4), "little")
    wraps = max(0, -(-(needed - isize) // 2**32))  # how many times 2³² must be added to reach `needed`
    return isize + wraps * 2**32 <= max_inflated_size(size)


def inflated_size(path: Path, enough: int) -> int:
    """Bytes the gzip file inflates to, counted up to ``enough`` (then counting stops); nothing is kept.

    Members follow one another, with zero padding between them allowed as Python's ``gzip`` allows
    it; a stream cut short simply counts what came out. Raises ``zlib.error`` for corrupt data.
    """
    total = 0
    inflater = zlib.decompressobj(_GZIP_WBITS)
    data = b""
    with open(path, "rb") as handle:
        while total < enough:
            if not data:
                data = handle.read(_CHUNK)
                if not data:
                    return total + len(inflater.flush())  # the file ends (the stream may not)
            if inflater.eof:  # between members: zero padding, then the next member or the end
                data = data.lstrip(b"\0")
                if data:
                    inflater = zlib.decompressobj(_GZIP_WBITS)
                continue
            total += len(inflater.decompress(data, _CHUNK))  # at most a chunk out per call
            data = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
    return total
