"""The frame marker: a frame's sequence number and capture time as a block code in its luma plane.

Layout (docs/marker.md): the top ``ROWS × block`` pixel rows of the frame hold ``BITS`` = 96 blocks,
``block × block`` pixels each, row-major, left to right, ``per_row = width // block`` blocks a row.
A block is black (Y=16) for 0 and white (Y=235) for 1, with neutral chroma, so a lossy encoder keeps
the difference (219 levels) far above its quantisation error. The payload, most significant bit first:

    seq         32 bits   frame sequence number (wraps at 2**32)
    capture_ms  48 bits   wall-clock capture time, ms since the Unix epoch
    crc16       16 bits   CRC-16/CCITT-FALSE over the 10 bytes above

Block size is 16 px for frames ≥ 640 px wide and 8 px below, aligned to the codec's macroblock grid,
so it survives VP8/H.264 at the bitrates the room uses. Decoding samples the centre of each block and
thresholds at mid-grey; a frame whose CRC does not match decodes to ``None`` (never a wrong value,
except with probability 2**-16 per corrupted frame).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

BITS = 96
BLACK, WHITE = 16, 235
_THRESHOLD = (BLACK + WHITE) // 2


@dataclass(frozen=True, slots=True)
class Marker:
    seq: int
    """Frame sequence number as published (mod 2**32)."""
    capture_ms: int
    """Publisher wall-clock capture time, ms since the Unix epoch."""


def block_size(width: int) -> int:
    """Pixels per block side for a frame ``width`` pixels wide."""
    return 16 if width >= 640 else 8


def strip_height(width: int) -> int:
    """Height in pixels of the marker strip for a frame ``width`` pixels wide."""
    b = block_size(width)
    per_row = width // b
    rows = -(-BITS // per_row)
    return rows * b


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def _payload_bits(marker: Marker) -> npt.NDArray[np.uint8]:
    body = (marker.seq % 2**32).to_bytes(4, "big") + (marker.capture_ms % 2**48).to_bytes(6, "big")
    data = body + crc16(body).to_bytes(2, "big")
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8))


def _grid(width: int) -> tuple[int, int, int]:
    """(block, blocks per row, rows) for a frame ``width`` pixels wide."""
    b = block_size(width)
    per_row = width // b
    return b, per_row, -(-BITS // per_row)


def draw(y: npt.NDArray[np.uint8], marker: Marker) -> None:
    """Write ``marker`` into the luma plane ``y`` (shape height × width) in place."""
    height, width = y.shape
    if strip_height(width) > height:
        raise ValueError(f"frame {width}x{height} too small for the marker strip")
    b, per_row, rows = _grid(width)
    cells = np.full(rows * per_row, BLACK, dtype=np.uint8)
    cells[:BITS] = np.where(_payload_bits(marker) == 1, WHITE, BLACK)
    # expand each cell to a b×b block
    strip = np.repeat(np.repeat(cells.reshape(rows, per_row), b, axis=0), b, axis=1)
    y[: rows * b, : per_row * b] = strip
    y[: rows * b, per_row * b :] = BLACK


def read(y: npt.NDArray[np.uint8]) -> Marker | None:
    """Decode the marker from the luma plane ``y``; ``None`` if absent or corrupted (CRC mismatch)."""
    height, width = y.shape
    if width < 64 or strip_height(width) > height:
        return None
    b, per_row, rows = _grid(width)
    q = b // 4
    # mean of the central (b/2 × b/2) area of each block: robust to ringing at block edges
    blocks = y[: rows * b, : per_row * b].reshape(rows, b, per_row, b)
    centre = blocks[:, q : b - q, :, q : b - q].mean(axis=(1, 3), dtype=np.float32).reshape(-1)[:BITS]
    data = np.packbits(centre > _THRESHOLD).tobytes()
    if crc16(data[:10]) != int.from_bytes(data[10:12], "big"):
        return None
    return Marker(seq=int.from_bytes(data[:4], "big"), capture_ms=int.from_bytes(data[4:10], "big"))
