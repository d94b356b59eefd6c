"""``streamqoe analyze --collector``: a real collector subprocess, the audience model's events sent to it
over HTTP, and the analysis reading them back through the collector's export API."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_probe_cli import free_port, wait_http

pytestmark = pytest.mark.slow

PLATFORM = "platform-token-0123456789abcdef"
READER = "reader-token-0123456789abcdef"


def streamqoe(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamqoe", *args]


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("collector")
    (tmp / "c.toml").write_text(f"""
db_path = "{tmp / 'c.duckdb'}"
[[tokens]]
name = "platform"
role = "platform"
secret = "{PLATFORM}"
[[tokens]]
name = "reader"
role = "reader"
secret = "{READER}"
""")
    port = free_port()
    proc = subprocess.Popen(streamqoe("collector", "--config", str(tmp / "c.toml"), "--port", str(port)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz")
        # 100 simulated minutes ending now, an incident on cdn-b for the last 25 of them
        start_ms = int(time.time() * 1000) - 100 * 60_000
        res = subprocess.run(streamqoe("audience", "--seed", "3", "--minutes", "100", "--rate", "120",
                                       "--start-ms", str(start_ms), "--incident", "cdn=cdn-b@75-100:0.15",
                                       "--collector", url, "--token", PLATFORM, "--batch", "5000",
                                       "--truth", str(tmp / "truth.json")),
                             capture_output=True, timeout=300)
        assert res.returncode == 0, res.stderr.decode()[-2000:]
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_analyze_reads_the_collector_and_finds_the_incident(collector: str, tmp_path: Path) -> None:
    out = tmp_path / "report"
    res = subprocess.run(streamqoe("analyze", "--collector", collector, "--token", READER, "--out", str(out)),
                         capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    assert b"downloading events" in res.stderr
    report = json.loads((out / "report.json").read_text())
    segments = [s for inc in report["incidents"] for s in inc["segment"]]
    assert {"cdn": "cdn-b"} in segments, report["incidents"]
    assert (out / "report.html").stat().st_size > 1000 and (out / "winback.csv").exists()


def test_wrong_token_is_a_clear_error_and_exit_2(collector: str, tmp_path: Path) -> None:
    res = subprocess.run(streamqoe("analyze", "--collector", collector, "--token", "wrong-token-0123456789",
                                   "--out", str(tmp_path / "r")), capture_output=True, timeout=60)
    assert res.returncode == 2
    assert b"refused the token" in res.stderr and b"Traceback" not in res.stderr


def test_collector_down_is_a_clear_error_and_exit_2(tmp_path: Path) -> None:
    res = subprocess.run(streamqoe("analyze", "--collector", f"http://127.0.0.1:{free_port()}", "--token", READER,
                                   "--out", str(tmp_path / "r")), capture_output=True, timeout=60)
    assert res.returncode == 2
    assert b"not reachable" in res.stderr and b"Traceback" not in res.stderr
