"""Shared helpers for the collector tests: valid wire items, tokens, a collector subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from collector.config import CollectorConfig, Token

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "fixtures" / "report_ok.json"  # the lead's golden report

PROBE_EU = "probe-eu-secret-0123456789"
PROBE_ANY = "probe-any-secret-0123456789"
PLATFORM = "platform-secret-0123456789"
READER = "reader-secret-0123456789abc"
ANALYSIS = "analysis-secret-0123456789"

TOKENS = (
    Token(name="probe-eu", role="probe", secret=PROBE_EU, regions=("eu-west",)),
    Token(name="probe-any", role="probe", secret=PROBE_ANY, regions=("*",)),
    Token(name="platform", role="platform", secret=PLATFORM),
    Token(name="reader", role="reader", secret=READER),
    Token(name="analysis", role="analysis", secret=ANALYSIS),
)

T0_MS = 1_794_999_600_000  # 2026-11-18T…Z, on an hour boundary (buckets are epoch-aligned)


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def config(db_path: str = ":memory:", **kw: Any) -> CollectorConfig:
    return CollectorConfig(db_path=db_path, tokens=TOKENS, **kw)


def utc(ms: int) -> str:
    from collector.events import format_t_ms

    return format_t_ms(ms)


def report(
    region: str | None = "eu-west",
    *,
    started_ms: int = T0_MS,
    failure: str | None = None,
    ttff_ms: float | None = 850.0,
    stall_ratio: float | None = 0.01,
    target: str = "http://room/whep/main",
    report_id: str | None = None,
) -> dict[str, Any]:
    """A valid probe report (the golden fixture's shape when the lead has put one in tests/fixtures)."""
    if GOLDEN.exists():
        d: dict[str, Any] = json.loads(GOLDEN.read_text())
    else:
        d = {
            "schema_version": 1,
            "report_id": "",
            "probe_id": "probe-1",
            "probe_version": "0.1.0",
            "started_at": "",
            "duration_s": 30.0,
            "target": {"url": target, "signaling": "whep", "room": "main"},
            "labels": {"isp": "isp-a", "cdn": "edge-1"},
            "summary": {
                "mode": "decode",
                "join": {
                    "signaling_ms": 40.0,
                    "ice_connected_ms": 120.0,
                    "dtls_connected_ms": 160.0,
                    "first_rtp_ms": 200.0,
                    "first_keyframe_ms": 400.0,
                    "ttff_ms": 850.0,
                },
                "video": {
                    "framesReceived": 900,
                    "framesDecoded": 900,
                    "keyframesReceived": 10,
                    "freezeCount": 1,
                    "totalFreezesDuration": 0.3,
                    "freeze_in_progress": False,
                    "pauseCount": 0,
                    "totalPausesDuration": 0.0,
                    "watch_time_s": 29.0,
                    "stall_ratio": 0.01,
                    "stalls_per_minute": 2.0,
                    "fps_mean": 30.0,
                    "width": 1280,
                    "height": 720,
                    "hd_share": 1.0,
                },
                "streams": [
                    {
                        "kind": "video",
                        "ssrc": 1234,
                        "packetsReceived": 5000,
                        "packetsLost": 10,
                        "loss_pct": 0.2,
                        "residual_loss_pct": 0.0,
                        "jitter_ms": 3.0,
                        "bitrate_kbps": 1500.0,
                        "nackCount": 2,
                        "pliCount": 1,
                    }
                ],
            },
        }
    d["report_id"] = report_id or str(uuid.uuid4())
    d["labels"] = {"isp": "isp-a", "cdn": "edge-1"}
    d["region"] = region
    d["started_at"] = utc(started_ms)
    d["target"] = {**d["target"], "url": target}
    d["failure"] = failure
    if failure:
        d["failure_message"] = "simulated"
    d["summary"]["join"]["ttff_ms"] = ttff_ms
    if d["summary"].get("video"):
        d["summary"]["video"]["stall_ratio"] = stall_ratio
    return d


def event(
    i: int = 0,
    *,
    type: str = "heartbeat",
    t_ms: int = T0_MS,
    session: str | None = None,
    viewer: str | None = None,
    region: str = "eu-west",
    **qoe: Any,
) -> dict[str, Any]:
    """A valid viewer event."""
    return {
        "event_id": f"ev-{uuid.uuid4().hex}-{i}",
        "viewer_id": viewer or f"viewer-{i % 50}",
        "session_id": session or f"sess-{i % 50}",
        "room": "main",
        "t": utc(t_ms),
        "type": type,
        "region": region,
        "isp": "isp-a",
        "cdn": "edge-1",
        "device": "android",
        "app_version": "5.1.0",
        **qoe,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, db: Path, port: int, **extra: Any) -> Path:
    """A TOML config with the test tokens."""
    lines = ['listen_host = "127.0.0.1"', f"listen_port = {port}", f'db_path = "{db}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    for t in TOKENS:
        lines += [
            "[[tokens]]",
            f'name = "{t.name}"',
            f'role = "{t.role}"',
            f'secret = "{t.secret}"',
            f"regions = {json.dumps(list(t.regions))}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def collector_process(cfg_path: Path, port: int, log_path: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m streamqoe collector --config …`` on loopback, waiting for /healthz; killed on exit."""
    proc = start_collector(cfg_path, port, log_path)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_collector(cfg_path: Path, port: int, log_path: Path | None = None) -> subprocess.Popen[bytes]:
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 (closed with the process)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamqoe", "collector", "--config", str(cfg_path)],
        stdout=out,
        stderr=out,
        env=env,
        cwd=ROOT,
    )
    wait_healthy(port, proc)
    return proc


def wait_healthy(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"collector exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("collector did not become healthy")
