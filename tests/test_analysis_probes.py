"""Probe reports in the analysis: per-segment probe series, probe-detected regressions, corroboration of
viewer incidents, and the no-probes case — through the collector's own schema and the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import duckdb
import numpy as np
import pytest

from analysis import cli
from analysis.audience import AudienceConfig, IncidentSpec, generate
from analysis.export import write_duckdb
from analysis.probe_qoe import consistent, detect_probe_incidents, fisher_greater, probe_series
from analysis.probe_reports import ProbeTable, empty_probes, net_stall_ratio, probes_from_duckdb
from collector.schema import DDL

T0 = 1_790_000_040_000 - 1_790_000_040_000 % 60_000
REGIONS = ("eu", "us", "ap")


def _probes(
    minutes: int,
    bad: dict[str, tuple[float, float]],
    *,
    seed: int = 0,
    fail: bool = False,
    start_ms: int = T0,
) -> ProbeTable:
    """Probe sessions every 10 s in each region; in ``bad[region] = (from, to)`` minutes the region's
    sessions lose 8 % of packets and stall 30 % (or fail to join with ``fail``). Every region sees the
    same background noise of small stalls (a loaded machine), at the same times."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(minutes * 6):
        t = start_ms + k * 10_000
        noise = float(rng.choice([0.0, 0.0, 0.03, 0.08]))
        for j, r in enumerate(REGIONS):
            is_bad = r in bad and bad[r][0] <= k / 6 < bad[r][1]  # minutes, fractions allowed
            failed = is_bad and fail
            rows.append(
                (
                    t + 300 * j,
                    8.0,
                    failed,
                    np.nan if failed else float(rng.uniform(150, 600)),
                    np.nan if failed else (0.3 if is_bad else noise),
                    np.nan if failed else (8.0 if is_bad else 0.0),
                    np.nan if failed else 0.0,
                    r,
                )
            )
    cols = list(zip(*rows, strict=True))
    return ProbeTable(
        np.array(cols[0], dtype=np.int64),
        np.array(cols[1]),
        np.array(cols[2], dtype=bool),
        np.array(cols[3]),
        np.array(cols[4]),
        np.array(cols[5]),
        np.array(cols[6]),
        {"region": list(cols[7]), "isp": ["(none)"] * len(rows), "cdn": ["edge-1"] * len(rows)},
    )


def test_fisher_exact_matches_hand_computed_values() -> None:
    assert fisher_greater(5, 6, 1, 16) == pytest.approx((6 * 16 + 1) / 74613)
    assert fisher_greater(0, 5, 3, 10) == 1.0
    assert fisher_greater(3, 3, 0, 0) == 1.0


def test_a_degraded_region_is_one_probe_incident_with_start_end_and_moved_metrics() -> None:
    p = _probes(8, {"eu": (4, 6)})
    incs = detect_probe_incidents(p, T0, 8)
    assert len(incs) == 1
    inc = incs[0]
    assert inc.segment == {"region": "eu"}
    assert T0 + 4 * 60_000 <= inc.start_ms < T0 + 4 * 60_000 + 10_000
    assert T0 + 6 * 60_000 - 10_000 <= inc.end_ms <= T0 + 6 * 60_000 + 8_000
    assert {"lossy", "stalled"} <= set(inc.detected_by)
    assert inc.metrics["loss_pct"]["before"] == 0.0 and inc.metrics["loss_pct"]["during"] == 8.0
    assert inc.metrics["stall_ratio"]["change"] is not None and inc.metrics["stall_ratio"]["change"] > 0.2
    assert "[probes] region=eu" in inc.summary


@pytest.mark.parametrize("seed", range(5))
def test_a_short_regression_straddling_a_minute_boundary_is_found(seed: int) -> None:
    """50 s of degraded sessions from minute 4.5: 3 of 6 in minute 4, 2 of 6 in minute 5, too few in
    either for the minute grid's test; the half-minute-offset grid sees them together."""
    incs = detect_probe_incidents(_probes(8, {"eu": (4.5, 4.5 + 50 / 60)}, seed=seed), T0, 8)
    assert [i.segment for i in incs] == [{"region": "eu"}]
    assert T0 + 4.5 * 60_000 <= incs[0].start_ms < T0 + 4.5 * 60_000 + 10_000
    assert incs[0].end_ms <= T0 + (4.5 + 50 / 60) * 60_000 + 8_000
    assert incs[0].incident_id == f"probe-{incs[0].start_ms // 1000}-1"


@pytest.mark.parametrize("seed", range(20))
def test_shared_noise_and_quiet_probes_raise_nothing(seed: int) -> None:
    assert detect_probe_incidents(_probes(30, {}, seed=seed), T0, 30) == []


def test_join_failures_and_platform_wide_regressions() -> None:
    fails = detect_probe_incidents(_probes(8, {"ap": (5, 7)}, fail=True), T0, 8)
    assert [(i.segment, i.detected_by) for i in fails] == [({"region": "ap"}, ["join_failure"])]
    everywhere = detect_probe_incidents(_probes(8, {r: (5, 8) for r in REGIONS}), T0, 8)
    assert [i.segment for i in everywhere] == [{}]


def test_probe_series_per_region_and_minute() -> None:
    ser = probe_series(_probes(3, {"eu": (1, 2)}), T0, 4)
    assert set(ser) == {"all", "region=ap", "region=eu", "region=us"}
    assert ser["region=eu"]["reports"] == [6.0, 6.0, 6.0, 0.0]
    assert ser["region=eu"]["loss_pct"][1] == 8.0 and ser["region=us"]["loss_pct"][1] == 0.0
    assert ser["region=eu"]["stall_ratio"][3] is None
    assert ser["all"]["join_failure_share"][0] == 0.0
    assert probe_series(empty_probes(), T0, 2) == {"all": {k: [0.0, 0.0] if k == "reports" else [None, None]
                                                          for k in ser["all"]}}


def test_consistent_segments() -> None:
    assert consistent([{"region": "eu", "cdn": "cdn-b"}], {"region": "eu"})
    assert not consistent([{"region": "us"}], {"region": "eu"})
    assert not consistent([{"device": "tv"}], {"region": "eu"})
    assert consistent([{"device": "tv"}], {})


def _db_with_viewers_and_probes(tmp_path: Path, with_probes: bool) -> Path:
    """Viewer events for 100 minutes with an eu incident in minutes 80–100; probe sessions in minutes
    96–101 (after the last viewer event, as in the demo) with eu degraded from minute 98."""
    inc = IncidentSpec({"region": "eu"}, T0 + 80 * 60_000, T0 + 100 * 60_000, 0.15)
    table, _ = generate(AudienceConfig(start_ms=T0, minutes=100, seed=7, arrivals_per_min=60, incident=inc))
    db = tmp_path / "c.duckdb"
    con = duckdb.connect(str(db))
    for stmt in DDL:
        con.execute(stmt)
    con.close()
    write_duckdb(table, db)
    if with_probes:
        p = _probes(5, {"eu": (2, 4)}, start_ms=T0 + 96 * 60_000)
        con = duckdb.connect(str(db))
        for i in range(p.n):
            ok = not p.failed[i]
            con.execute(
                """INSERT INTO probe_reports (report_id, probe_id, probe_version, region, room, target_url,
                signaling, started_ms, duration_s, failure, labels, mode, ttff_ms, stall_ratio, loss_pct,
                hd_share, body, received_ms) VALUES (?, ?, '1', ?, 'live', 'http://x/whep/live', 'whep', ?, ?,
                ?, ?, 'no-decode', ?, ?, ?, ?, '{}', ?)""",
                [
                    f"r{i}",
                    f"demo-{p.dims['region'][i]}",
                    p.dims["region"][i],
                    int(p.started_ms[i]),
                    float(p.duration_s[i]),
                    None if ok else "ice_timeout",
                    json.dumps({"cdn": "edge-1"}),
                    float(p.ttff_ms[i]) if ok else None,
                    float(p.stall_ratio[i]) if ok else None,
                    float(p.loss_pct[i]) if ok else None,
                    float(p.hd_share[i]) if ok else None,
                    int(p.started_ms[i]) + 9000,
                ],
            )
        con.close()
    return db


def _analyze(db: Path, out: Path) -> dict[str, object]:
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    assert cli.run(p.parse_args(["--db", str(db), "--out", str(out), "--write-incidents"])) == 0
    rep: dict[str, object] = json.loads((out / "report.json").read_text())
    return rep


def test_cli_reports_probe_incident_corroborating_the_viewer_incident(tmp_path: Path) -> None:
    db = _db_with_viewers_and_probes(tmp_path, with_probes=True)
    rep = _analyze(db, tmp_path / "rep")
    probes = rep["probes"]
    assert isinstance(probes, dict) and probes["reports"] == 90
    assert "synthetic probes" in probes["source"]
    # the default window reaches past the last viewer event to the probes' last session
    assert rep["to_ms"] > T0 + 100 * 60_000 + 50_000
    [pinc] = probes["incidents"]
    assert pinc["segment"] == {"region": "eu"} and "lossy" in pinc["detected_by"]
    incs = rep["incidents"]
    assert isinstance(incs, list)
    [vinc] = [i for i in incs if i["segment"] == [{"region": "eu"}]]
    assert vinc["corroborated_by"] == [pinc["incident_id"]] and pinc["corroborated_by"] == [vinc["incident_id"]]
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "Corroborated by synthetic probes" in html and "probes, region=eu" in html
    con = duckdb.connect(str(db), read_only=True)
    ids = {r[0] for r in con.execute("SELECT incident_id FROM incidents").fetchall()}
    con.close()
    assert pinc["incident_id"] in ids and vinc["incident_id"] in ids


def test_cli_without_probe_reports(tmp_path: Path) -> None:
    db = _db_with_viewers_and_probes(tmp_path, with_probes=False)
    rep = _analyze(db, tmp_path / "rep")
    assert rep["probes"] == {
        "source": "synthetic probes (streamqoe probe sessions run by us), not viewers' beacons",
        "reports": 0,
        "host_stall_sessions": 0,
        "series": {},
        "incidents": [],
    }
    assert all(i["corroborated_by"] == [] for i in rep["incidents"])  # type: ignore[union-attr]
    assert "No probe reports in this window" in (tmp_path / "rep" / "report.html").read_text()


def test_net_stall_ratio_leaves_out_what_the_probe_host_froze() -> None:
    ratio = np.array([0.3, 0.3, 0.3, np.nan, 0.0, 0.3])
    frozen = np.array([2.4, 2.4, 2.4, np.nan, 0.0, 2.4])
    host = np.array([2.4, 1.2, np.nan, 0.5, 0.0, 9.0])  # 9 s: more than froze, clipped to 2.4
    net, left_out = net_stall_ratio(ratio, frozen, host)
    np.testing.assert_allclose(net, [0.0, 0.15, 0.3, np.nan, 0.0, 0.0])
    np.testing.assert_allclose(left_out, [2.4, 1.2, 0.0, 0.0, 0.0, 2.4])


@pytest.mark.parametrize("host_stalled", [False, True], ids=["stream-froze", "probe-host-froze"])
def test_freezes_the_probe_host_caused_raise_no_probe_incident(tmp_path: Path, host_stalled: bool) -> None:
    """ap's probes freeze 30 % of minutes 2–4. Through the collector's schema: as the stream's doing, a
    probe incident; inside the probe's own host stalls (the report says so), none."""
    db = tmp_path / "p.duckdb"
    con = duckdb.connect(str(db))
    for stmt in DDL:
        con.execute(stmt)
    for k in range(6 * 6):
        t = T0 + k * 10_000
        for j, region in enumerate(REGIONS):
            frozen = 2.4 if region == "ap" and 2 <= k // 6 < 5 else 0.0
            body = {"summary": {"host_stalls": {"count": 3, "stalled_s": frozen, "max_ms": 900.0,
                                                "freezes_during": 3, "frozen_s_during": frozen}}}
            con.execute(
                """INSERT INTO probe_reports (report_id, probe_id, probe_version, region, target_url, signaling,
                started_ms, duration_s, labels, mode, ttff_ms, stall_ratio, total_freezes_s, loss_pct, hd_share,
                body, received_ms) VALUES (?, ?, '1', ?, 'http://x/whep/live', 'whep', ?, 8.0, '{}', 'decode',
                300.0, ?, ?, 0.0, 1.0, ?, ?)""",
                [f"r{k}-{j}", f"p-{region}", region, t + 300 * j, frozen / 8.0, frozen,
                 json.dumps(body if host_stalled else {}), t + 9000],
            )
    con.close()
    p = probes_from_duckdb(db, T0, T0 + 6 * 60_000)
    assert p.n == 6 * 6 * 3
    incs = detect_probe_incidents(p, T0, 6)
    if host_stalled:
        assert incs == [] and p.host_stall_sessions == 18
        assert np.nanmax(p.stall_ratio) == 0.0
    else:
        [inc] = incs
        assert inc.segment == {"region": "ap"} and "stalled" in inc.detected_by and p.host_stall_sessions == 0
