"""The audience model: seeded, valid wire events, effects in the documented direction."""

from __future__ import annotations

import itertools

import numpy as np

from analysis.audience import AudienceConfig, IncidentSpec, generate, iter_wire_events
from collector.events import event_from_dict

T0 = 1_790_000_040_000 - 1_790_000_040_000 % 60_000


def test_same_seed_same_events_and_wire_events_validate() -> None:
    cfg = AudienceConfig(start_ms=T0, minutes=30, seed=7, arrivals_per_min=20)
    a, _ = generate(cfg)
    b, _ = generate(cfg)
    assert np.array_equal(a.t_ms, b.t_ms) and np.array_equal(a.dims, b.dims)
    for d in itertools.islice(iter_wire_events(a), 2000):
        event_from_dict(d)


def test_incident_causes_leaves_only_in_its_segment() -> None:
    inc = IncidentSpec({"cdn": "cdn-b"}, T0 + 20 * 60_000, T0 + 40 * 60_000, stall_ratio_add=0.15)
    _, truth = generate(AudienceConfig(start_ms=T0, minutes=60, seed=3, arrivals_per_min=50, incident=inc))
    _, none = generate(AudienceConfig(start_ms=T0, minutes=60, seed=3, arrivals_per_min=50))
    assert truth.viewers_lost > 50
    assert none.viewers_lost == 0
    assert not (truth.caused & ~truth.affected).any()


def test_slow_startup_abandonment_follows_krishnan_sitaraman() -> None:
    inc = IncidentSpec({"region": "eu"}, T0, T0 + 30 * 60_000, stall_ratio_add=0.0, startup_add_ms=5000)
    _, truth = generate(AudienceConfig(start_ms=T0, minutes=30, seed=2, arrivals_per_min=100, incident=inc))
    # ~4 s past the 2 s knee → ~23 % abandon; eu is 40 % of ~3000 joins
    assert 150 < truth.viewers_lost < 450
