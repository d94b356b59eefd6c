"""Alert rules pass promtool; a real Prometheus scrapes a real collector subprocess on loopback."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.collector_helpers import (
    PROBE_EU,
    READER,
    ROOT,
    auth,
    collector_process,
    free_port,
    report,
    write_config,
)

RULES = ROOT / "docs" / "prometheus" / "alerts.yml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
needs_promtool = pytest.mark.skipif(not Path(PROMTOOL).exists(), reason="promtool missing (Debian package prometheus)")
needs_prometheus = pytest.mark.skipif(
    not Path(PROMETHEUS).exists(), reason="prometheus missing (Debian package prometheus; scripts/setup-system)"
)


@pytest.mark.prometheus
@needs_promtool
def test_alert_rules_check() -> None:
    p = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.prometheus
@needs_promtool
def test_alert_rules_unit_tests() -> None:
    p = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], capture_output=True, text=True, cwd=RULES.parent)
    assert p.returncode == 0, p.stdout + p.stderr


def _query(prom_port: int, expr: str) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    assert body["status"] == "success"
    return list(body["data"]["result"])


@pytest.mark.prometheus
@needs_prometheus
@pytest.mark.timeout(120)
def test_real_prometheus_scrapes_collector(tmp_path: Path) -> None:
    port, prom_port = free_port(), free_port()
    cfg = write_config(tmp_path / "c.toml", tmp_path / "db.duckdb", port)
    (tmp_path / "reader.token").write_text(READER)
    shutil.copy(RULES, tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "rule_files: [alerts.yml]\n"
        "scrape_configs:\n"
        "  - job_name: streamqoe-collector\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
        f"    authorization: {{type: Bearer, credentials_file: {tmp_path / 'reader.token'}}}\n"
    )
    with collector_process(cfg, port, tmp_path / "collector.log"):
        reps = [
            report("eu-west", ttff_ms=900.0, stall_ratio=0.05),
            report("eu-west", target="http://room/whep/other", failure="ice_timeout", ttff_ms=None),
        ]
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/reports",
            data=json.dumps(reps).encode(),
            headers={**auth(PROBE_EU), "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
        prom = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "prometheus.log", "wb"),  # noqa: SIM115
        )
        try:
            deadline = time.monotonic() + 60
            ttff: list[dict[str, object]] = []
            while time.monotonic() < deadline:
                try:
                    ttff = _query(prom_port, "streamqoe_probe_ttff_seconds")
                    if ttff:
                        break
                except OSError:
                    pass
                time.sleep(0.5)
            assert ttff, "no series arrived; prometheus.log: " + (tmp_path / "prometheus.log").read_text()[-2000:]
            assert ttff[0]["metric"]["region"] == "eu-west"  # type: ignore[index]
            assert float(ttff[0]["value"][1]) == pytest.approx(0.9)  # type: ignore[index]
            assert _query(prom_port, 'up{job="streamqoe-collector"}')[0]["value"][1] == "1"  # type: ignore[index]
            fails = _query(prom_port, "streamqoe_probe_join_failures_total")
            assert fails[0]["metric"]["failure"] == "ice_timeout"  # type: ignore[index]
            accepted = _query(prom_port, 'streamqoe_ingest_items_total{endpoint="reports",result="accepted"}')
            assert accepted[0]["value"][1] == "2"  # type: ignore[index]
            rules = json.load(urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/api/v1/rules", timeout=5))
            assert rules["data"]["groups"][0]["name"] == "streamqoe-synthetic-slo"
        finally:
            prom.terminate()
            prom.wait(20)
