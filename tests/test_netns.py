"""Kernel-level impairments between two network namespaces: the probe's numbers against the kernel's.

The room runs in namespace A (``streamqoe room --host A --ice-host A``), the probe in namespace B
(``streamqoe probe ... --ice-addr B``), joined by a veth pair (tests/netns.py). Impairments are the
kernel's, not the room's: nftables drops a random share of the *video RTP* packets arriving in B (the
rule matches RTP version 2 and the VP8 payload type in the first UDP payload bytes, which SRTP leaves
in clear), with a counter for drops and passes; a TBF qdisc on A's veth caps the bandwidth.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiortc.codecs import CODECS

from tests import netns

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.realtime]

SKIP = netns.available()
if SKIP:
    pytest.skip(SKIP, allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
STREAMQOE = [sys.executable, "-m", "streamqoe.cli"]
ROOM_PORT = 8080
#: The payload type aiortc gives VP8 in the probe's offer (the room's answer keeps it).
VP8_PT = next(c.payloadType for c in CODECS["video"] if c.mimeType == "video/VP8")


@dataclass
class RoomInNs:
    link: netns.Link
    work: Path
    room: subprocess.Popen[bytes]

    def probe(self, duration_s: float, name: str) -> dict[str, object]:
        """Run the probe CLI in namespace B; its JSON report."""
        out = self.work / f"{name}.json"
        url = f"http://{self.link.ip_a}:{ROOM_PORT}/whep/test"
        r = subprocess.run(
            netns.in_ns(
                self.link.b,
                [
                    *STREAMQOE,
                    "probe",
                    url,
                    "--duration",
                    str(duration_s),
                    "--json",
                    str(out),
                    "--ice-addr",
                    self.link.ip_b,
                ],
            ),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=duration_s + 60,
        )
        assert out.exists(), r.stderr[-3000:]
        report: dict[str, object] = json.loads(out.read_text())
        _record(f"netns_{name}", report)
        return report


def _record(name: str, data: dict[str, object]) -> None:
    out = Path(tempfile.gettempdir()) / "streamqoe-test-out"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=1))


def _wait_port(ns: str, ip: str, port: int, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"room exited with {proc.returncode}")
        if (
            subprocess.run(
                netns.in_ns(ns, ["bash", "-c", f"echo > /dev/tcp/{ip}/{port}"]), capture_output=True
            ).returncode
            == 0
        ):
            return
        time.sleep(0.2)
    raise RuntimeError("room did not come up")


@pytest.fixture(scope="module")
def room_env() -> Iterator[RoomInNs]:
    link = netns.Link.create()
    work = Path(tempfile.mkdtemp(prefix="sq-netns-"))
    proc = None
    try:
        proc = subprocess.Popen(
            netns.in_ns(
                link.a,
                [*STREAMQOE, "room", "--port", str(ROOM_PORT), "--host", link.ip_a, "--ice-host", link.ip_a],
            ),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=open(work / "room.log", "wb"),  # noqa: SIM115
        )
        _wait_port(link.b or "", link.ip_a, ROOM_PORT, proc)
        yield RoomInNs(link, work, proc)
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        link.close()
        shutil.rmtree(work, ignore_errors=True)


def _video(report: dict[str, object]) -> tuple[dict[str, object], dict[str, object]]:
    summary = report["summary"]
    assert isinstance(summary, dict)
    stream = next(s for s in summary["streams"] if s["kind"] == "video")
    return summary["video"], stream


@pytest.mark.parametrize("pct", [2, 10])
def test_probe_loss_matches_kernel_drop_counter(room_env: RoomInNs, pct: int) -> None:
    link = room_env.link
    link.drop_rtp_pct(link.b, pct, link.ip_a, VP8_PT)
    try:
        report = room_env.probe(12.0, f"loss{pct}")
        dropped, passed = link.drop_counters(link.b)
    finally:
        netns.run(netns.in_ns(link.b, ["nft", "delete", "table", "inet", netns.NFT_TABLE]), check=False)
    assert report["failure"] is None, (report["failure"], report["failure_message"])
    _, stream = _video(report)
    kernel_pct = 100.0 * dropped / (dropped + passed)
    probe_pct = stream["loss_pct"]
    assert isinstance(probe_pct, float)
    print(
        f"nft dropped {dropped} passed {passed} = {kernel_pct:.3f} %; probe loss_pct {probe_pct} "
        f"(packetsLost {stream['packetsLost']}, packetsReceived {stream['packetsReceived']}), "
        f"residual {stream['residual_loss_pct']}, nack {stream['nackCount']}, "
        f"rtx {stream['retransmittedPacketsReceived']}"
    )
    assert abs(probe_pct - kernel_pct) <= 0.5
    # the probe counts every original the kernel let through (RTX is a separate PT, never dropped)
    assert abs(int(stream["packetsReceived"]) - passed) <= 0.005 * passed + 5  # type: ignore[call-overload]


def test_bandwidth_cap_shows_as_freezes_or_fps_drop(room_env: RoomInNs) -> None:
    link = room_env.link
    base_video, _ = _video(room_env.probe(8.0, "rate_baseline"))
    link.rate_limit(link.a, link.dev_a, "700kbit")  # the room sends ~1.5 Mbit/s with no adaptation
    try:
        report = room_env.probe(10.0, "rate700k")
    finally:
        netns.run(netns.in_ns(link.a, ["tc", "qdisc", "del", "dev", link.dev_a, "root"]), check=False)
    video, stream = _video(report)
    print(
        f"baseline fps {base_video['fps_mean']} freezes {base_video['freezeCount']}; "
        f"capped fps {video['fps_mean']} freezes {video['freezeCount']} "
        f"({video['totalFreezesDuration']} s) pauses {video['pauseCount']} loss {stream['loss_pct']} %"
    )
    assert base_video["fps_mean"] > 20  # type: ignore[operator]
    assert video["fps_mean"] < 0.7 * base_video["fps_mean"] or video["freezeCount"] + video["pauseCount"] >= 3  # type: ignore[operator]
