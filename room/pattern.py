"""The synthetic test pattern: a precomputed background scrolled per frame, plus the marker strip; and a tone.

Cheap by construction: a frame is two slice copies of precomputed planes and one marker draw
(about 0.3 ms at 720p), so the room's CPU goes to encoding and sending, not to drawing.
"""

from __future__ import annotations

import fractions

import av
import numpy as np
import numpy.typing as npt

from probe import marker

SCROLL_PX = 4
"""Horizontal scroll per frame, pixels (luma; chroma moves half as far)."""

AUDIO_RATE = 48_000
"""Audio sample rate, Hz."""
AUDIO_SAMPLES = 960
"""Samples per audio frame (20 ms at 48 kHz)."""


def _background(width: int, height: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Y, U, V planes twice as wide as the frame, periodic in x with period ``width``."""
    x = np.arange(2 * width, dtype=np.float32)
    y = np.arange(height, dtype=np.float32)[:, None]
    phase = 2 * np.pi * x / width
    # smooth bands and a 32 px checkerboard: enough detail for the encoder to spend its bitrate on
    checker = (((x // 32).astype(np.int32) + (y // 32).astype(np.int32)) % 2).astype(np.float32)
    luma = 110 + 60 * np.sin(phase * 3) * np.cos(y / height * np.pi) + 30 * checker
    yy = np.clip(luma, 16, 235).astype(np.uint8)
    cx = np.arange(width, dtype=np.float32)  # chroma planes: half width of a 2×-wide plane
    cphase = 2 * np.pi * cx / (width // 2)
    cy = np.arange(height // 2, dtype=np.float32)[:, None]
    u = np.clip(128 + 70 * np.sin(cphase + cy / 40), 16, 240).astype(np.uint8)
    v = np.clip(128 + 70 * np.cos(cphase * 2 - cy / 60), 16, 240).astype(np.uint8)
    return yy, u, v


class TestPattern:
    """Scrolling yuv420p pattern with the frame marker (``probe/marker.py``) in its top rows."""

    __test__ = False  # not a pytest test class

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self._y, self._u, self._v = _background(width, height)
        self._buf = np.empty((height * 3 // 2, width), dtype=np.uint8)

    def frame(self, index: int, mark: marker.Marker) -> av.VideoFrame:
        """Frame number ``index`` of the pattern, carrying ``mark``. Not thread-safe (one shared buffer)."""
        w, h = self.width, self.height
        off = (index * SCROLL_PX) % w
        coff = off // 2
        buf = self._buf
        y = buf[:h]
        y[:] = self._y[:, off : off + w]
        q = h // 4
        buf[h : h + q].reshape(h // 2, w // 2)[:] = self._u[:, coff : coff + w // 2]
        buf[h + q :].reshape(h // 2, w // 2)[:] = self._v[:, coff : coff + w // 2]
        marker.draw(y, mark)
        # neutral chroma under the strip keeps the marker's blocks pure black and white
        strip = marker.strip_height(w) // 2
        buf[h : h + q].reshape(h // 2, w // 2)[:strip] = 128
        buf[h + q :].reshape(h // 2, w // 2)[:strip] = 128
        return av.VideoFrame.from_ndarray(buf, format="yuv420p")


class Tone:
    """A sine tone as 20 ms stereo s16 frames at 48 kHz (phase-continuous)."""

    def __init__(self, freq_hz: float, amplitude: float = 0.25) -> None:
        self.freq_hz = freq_hz
        self.amplitude = amplitude
        self.time_base = fractions.Fraction(1, AUDIO_RATE)

    def frame(self, index: int) -> av.AudioFrame:
        """Audio frame number ``index`` (samples ``index*960`` .. ``+959``)."""
        n = np.arange(index * AUDIO_SAMPLES, (index + 1) * AUDIO_SAMPLES, dtype=np.float64)
        mono = (np.sin(2 * np.pi * self.freq_hz * n / AUDIO_RATE) * self.amplitude * 32767).astype(np.int16)
        stereo = np.repeat(mono, 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        frame.sample_rate = AUDIO_RATE
        frame.pts = index * AUDIO_SAMPLES
        frame.time_base = self.time_base
        return frame
