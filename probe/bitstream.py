"""Read what a viewer needs from an encoded video frame without decoding it: keyframe? width × height?

Used by ``--no-decode`` mode and to time the first keyframe in both modes. Input is one complete
encoded frame as aiortc's depayloader assembles it: a VP8 frame (RFC 6386 frame tag + keyframe header)
or an H.264 access unit in Annex B byte-stream form (start codes + NAL units).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FrameInfo:
    keyframe: bool
    width: int | None
    """Pixels; None when the frame does not carry it (inter frames)."""
    height: int | None


def vp8_info(data: bytes) -> FrameInfo:
    """RFC 6386 §9.1: bit 0 of the frame tag is 0 for a keyframe, followed by 9d 01 2a and 14-bit sizes."""
    if len(data) < 3:
        return FrameInfo(False, None, None)
    keyframe = (data[0] & 0x01) == 0
    if not keyframe or len(data) < 10 or data[3:6] != b"\x9d\x01\x2a":
        return FrameInfo(keyframe, None, None)
    width = int.from_bytes(data[6:8], "little") & 0x3FFF
    height = int.from_bytes(data[8:10], "little") & 0x3FFF
    return FrameInfo(True, width, height)


def _nal_units(data: bytes) -> list[bytes]:
    units = []
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        start = i + 3
        nxt = data.find(b"\x00\x00\x01", start)
        end = len(data) if nxt < 0 else nxt
        unit = data[start:end]
        if nxt >= 0 and unit.endswith(b"\x00"):
            unit = unit[:-1]  # the zero of a following 4-byte start code
        if unit:
            units.append(unit)
        i = nxt
    return units


class _Bits:
    def __init__(self, rbsp: bytes) -> None:
        self.data = rbsp
        self.pos = 0

    def u(self, n: int) -> int:
        v = 0
        for _ in range(n):
            byte = self.data[self.pos >> 3]
            v = (v << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return v

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("exp-Golomb code too long")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def _rbsp(nal: bytes) -> bytes:
    """Remove emulation-prevention bytes (00 00 03 → 00 00)."""
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


def _skip_scaling_list(b: _Bits, size: int) -> None:
    last, nxt = 8, 8
    for _ in range(size):
        if nxt != 0:
            nxt = (last + b.se() + 256) % 256
        last = nxt if nxt != 0 else last


def h264_sps_size(sps: bytes) -> tuple[int, int]:
    """Width, height in pixels from an SPS NAL unit (ITU-T H.264 §7.3.2.1.1), cropping applied."""
    b = _Bits(_rbsp(sps[1:]))
    profile_idc = b.u(8)
    b.u(16)  # constraint flags + level_idc
    b.ue()  # seq_parameter_set_id
    chroma_format_idc = 1
    if profile_idc in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        chroma_format_idc = b.ue()
        if chroma_format_idc == 3:
            b.u(1)
        b.ue()
        b.ue()
        b.u(1)
        if b.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if b.u(1):
                    _skip_scaling_list(b, 16 if i < 6 else 64)
    b.ue()  # log2_max_frame_num_minus4
    poc_type = b.ue()
    if poc_type == 0:
        b.ue()
    elif poc_type == 1:
        b.u(1)
        b.se()
        b.se()
        for _ in range(b.ue()):
            b.se()
    b.ue()  # max_num_ref_frames
    b.u(1)
    width_mbs = b.ue() + 1
    height_units = b.ue() + 1
    frame_mbs_only = b.u(1)
    if not frame_mbs_only:
        b.u(1)
    b.u(1)  # direct_8x8_inference_flag
    crop = (0, 0, 0, 0)
    if b.u(1):
        crop = (b.ue(), b.ue(), b.ue(), b.ue())
    sub_w = 2 if chroma_format_idc in (1, 2) else 1
    sub_h = (2 if chroma_format_idc == 1 else 1) * (2 - frame_mbs_only)
    width = width_mbs * 16 - sub_w * (crop[0] + crop[1])
    height = (2 - frame_mbs_only) * height_units * 16 - sub_h * (crop[2] + crop[3])
    return width, height


def h264_info(data: bytes) -> FrameInfo:
    """IDR slice (NAL type 5) → keyframe; size from the SPS (type 7) when the access unit carries one."""
    keyframe = False
    width = height = None
    for nal in _nal_units(data):
        nal_type = nal[0] & 0x1F
        if nal_type == 5:
            keyframe = True
        elif nal_type == 7:
            with contextlib.suppress(ValueError, IndexError):  # a truncated SPS: size stays unknown
                width, height = h264_sps_size(nal)
    return FrameInfo(keyframe, width, height)


def frame_info(codec_name: str, data: bytes) -> FrameInfo:
    """Dispatch on aiortc's codec name (``VP8`` or ``H264``)."""
    name = codec_name.upper()
    if name == "VP8":
        return vp8_info(data)
    if name == "H264":
        return h264_info(data)
    return FrameInfo(False, None, None)
