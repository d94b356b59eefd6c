"""``streamqoe probe`` as a user runs it: real subprocesses for room, collector and probe, over TCP."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.realtime]

PROBE_TOKEN = "probe-token-0123456789abcdef"
READER_TOKEN = "reader-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


def streamqoe(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamqoe", *args]


@contextlib.contextmanager
def room_process(name: str, spec: str = "640x360@30:vp8:600") -> Iterator[str]:
    """``streamqoe room`` as a subprocess serving one room; yields its WHEP URL."""
    port = free_port()
    proc = subprocess.Popen(streamqoe("room", "--port", str(port), "--room", f"{name}:{spec}"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/rooms")
        yield f"http://127.0.0.1:{port}/whep/{name}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def room() -> Iterator[str]:
    with room_process("cli") as url:
        yield url


def start_collector(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    config = tmp / "collector.toml"
    config.write_text(f"""
db_path = "{tmp / 'c.duckdb'}"
[[tokens]]
name = "probe-eu"
role = "probe"
regions = ["eu"]
secret = "{PROBE_TOKEN}"
[[tokens]]
name = "reader"
role = "reader"
secret = "{READER_TOKEN}"
""")
    proc = subprocess.Popen(streamqoe("collector", "--config", str(config), "--port", str(port)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/healthz")
    return proc


def metrics(port: int) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                 headers={"Authorization": f"Bearer {READER_TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return str(r.read().decode())


def test_probe_writes_json_and_exits_0(room: str, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    res = subprocess.run(streamqoe("probe", room, "--duration", "3", "--json", str(out), "--region", "eu",
                                   "--label", "isp=acme"), capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    report = json.loads(out.read_text())
    assert report["failure"] is None and report["region"] == "eu" and report["labels"] == {"isp": "acme"}
    assert report["summary"]["video"]["height"] == 360


def test_failed_join_is_a_report_and_exit_1(room: str) -> None:
    res = subprocess.run(streamqoe("probe", room.replace("/cli", "/missing"), "--duration", "2"),
                         capture_output=True, timeout=60)
    assert res.returncode == 1
    report = json.loads(res.stdout)  # not a TTY: the JSON report on stdout
    assert report["failure"] == "whep_http_404"


def test_bad_command_line_exits_2() -> None:
    res = subprocess.run(streamqoe("probe", "http://127.0.0.1:9/whep/x", "--label", "NoEquals"),
                         capture_output=True, timeout=30)
    assert res.returncode == 2 and b"label must be key=value" in res.stderr
    res = subprocess.run(streamqoe("probe", "http://127.0.0.1:9/whep/x", "--collector", "http://127.0.0.1:9"),
                         capture_output=True, timeout=30)
    assert res.returncode == 2 and b"--token" in res.stderr
    res = subprocess.run(streamqoe("probe", "http://127.0.0.1:9/whep/x", "--no-decode", "--no-loop-filter"),
                         capture_output=True, timeout=30)
    assert res.returncode == 2 and b"cannot go with --no-decode" in res.stderr


def test_report_reaches_collector_and_survives_an_outage(room: str, tmp_path: Path) -> None:
    port = free_port()
    spool = tmp_path / "spool"
    collector = f"http://127.0.0.1:{port}"
    common = ("--collector", collector, "--token", PROBE_TOKEN, "--region", "eu", "--spool", str(spool))
    # 1. the collector is down: the report stays in the spool, exit 3
    res = subprocess.run(streamqoe("probe", room, "--duration", "2", *common), capture_output=True, timeout=120)
    assert res.returncode == 3, res.stderr.decode()[-2000:]
    assert b"sent on the next run" in res.stderr
    first_id = json.loads(res.stdout)["report_id"]
    assert [p.stem for p in spool.glob("*.json")] == [first_id]
    # 2. the collector is up: the next run delivers both, and the spool is empty
    proc = start_collector(tmp_path, port)
    try:
        res = subprocess.run(streamqoe("probe", room, "--duration", "2", *common), capture_output=True,
                             timeout=120)
        assert res.returncode == 0, res.stderr.decode()[-2000:]
        assert list(spool.glob("*.json")) == []
        second_id = json.loads(res.stdout)["report_id"]
        req = urllib.request.Request(f"{collector}/v1/qoe?source=probes&bucket=60",
                                     headers={"Authorization": f"Bearer {READER_TOKEN}"})
        m = metrics(port)
        assert 'region="eu"' in m
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200
        assert first_id != second_id
    finally:
        proc.terminate()
        proc.wait(10)


def test_every_runs_sessions_until_sigterm(room: str, tmp_path: Path) -> None:
    port = free_port()
    proc = start_collector(tmp_path, port)
    try:
        probe = subprocess.Popen(
            streamqoe("probe", room, "--duration", "1.5", "--every", "3s", "--collector", f"http://127.0.0.1:{port}",
                      "--token", PROBE_TOKEN, "--region", "eu", "--spool", str(tmp_path / "spool"),
                      "--json", str(tmp_path / "last.json")),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(7.5)  # sessions start at 0, 3 and 6 s
        probe.send_signal(signal.SIGTERM)
        rc = probe.wait(30)
        stderr = probe.stderr.read().decode() if probe.stderr else ""
        assert rc == 0, stderr[-2000:]
        assert "probe_schedule_stopped" in stderr
        sessions = stderr.count("probe_session_done")
        assert sessions >= 2
        assert list((tmp_path / "spool").glob("*.json")) == []  # all delivered
        m = metrics(port)
        delivered = [line for line in m.splitlines()
                     if line.startswith("streamqoe_ingest_items_total") and 'endpoint="reports"' in line
                     and 'result="accepted"' in line]
        assert delivered and float(delivered[0].split()[-1]) == sessions
    finally:
        proc.terminate()
        proc.wait(10)
