"""Root-cause localization: the smallest set of dimension-value slices that explains an anomaly.

Pure numpy, no I/O. Works for ratio metrics (stall ratio = stalled / total: ``actual`` = stalled count
of each leaf in the anomalous window, ``expected`` = its total × the leaf's baseline ratio) and for sums
(``actual`` = the value, ``expected`` = its forecast).

Method (a likelihood-ratio scan over the slice lattice, in the family of Kulldorff's scan statistic and
HotSpot/Squeeze/RobustSpot, written from scratch):

* A *leaf* is one combination of all dimension values; a *slice* fixes 1..``max_order`` dimensions.
* Model for a set C of disjoint slices: every leaf in slice s ∈ C has mean ``expected × k_s``; every
  leaf outside C has mean ``expected × k_out`` (one common drift factor, so a platform-wide shift in the
  baseline is not blamed on any slice). Each k is the maximum-likelihood factor (Σ actual / Σ expected).
* Under a Poisson (quasi-Poisson) likelihood the deviance of that model decomposes into per-slice sums,
  so the gain of adding a slice is ``2·[V_s log(V_s/E_s) + V_r log(V_r/E_r) − V_o log(V_o/E_o)]`` where
  o is the uncovered rest before and r after. A slice that holds the whole change has a large gain; a
  coarser slice that also holds normal leaves fits them badly (its single factor is diluted), and a
  finer slice leaves elevated leaves outside — so the exact cause wins (the "ripple" argument).
* Greedy forward selection of disjoint slices, each required to be elevated (k_s > k_out), while the
  gain beats a threshold. The threshold is calibrated on the data itself: the same scan is run on the
  baseline windows (where there is no incident) and the largest gain seen there, times ``margin``, is
  what a slice must beat. That is the false-alarm control: under the baseline's own noise, no slice
  would have been reported.
* Each added dimension in a slice costs ``order_cost`` of its gain (Occam: prefer the coarser slice
  unless the finer one explains clearly more).
* The ripple effect decides between a slice and its parent or child, in both directions: a chosen
  slice is generalised to its parent when the parent's other leaves are elevated too, and specialised
  to its best child when the child explains more and the slice's other leaves are not significantly
  elevated (a coarse slice is the cause only if its other viewers show it).
* Ranked alternatives (for top-k) come from starting the greedy search from each of the best first
  slices and ordering the finished sets by their penalised deviance, computed from each set's final
  slices alone (:func:`_set_gains`), so a set costs the same whichever start and ripple moves reached
  it. Each set that the specialisation narrowed is followed by its un-narrowed version (the same
  search without the specialisation, from the best first slice that was narrowed into it): the
  significance test that rejected the coarser set can be a close call, and an alternative list
  without it would hide the parent from the operator.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Slice:
    """One dimension-value combination: ``items`` are (dimension index, value code) pairs, sorted."""

    items: tuple[tuple[int, int], ...]

    def mask(self, codes: IntArray) -> NDArray[np.bool_]:
        """Boolean mask of the leaves (rows of ``codes``) inside this slice."""
        m = np.ones(codes.shape[0], dtype=bool)
        for dim, val in self.items:
            m &= codes[:, dim] == val
        return m

    @property
    def order(self) -> int:
        """Number of dimensions fixed."""
        return len(self.items)


@dataclass(frozen=True, slots=True)
class SliceEffect:
    """A slice in a result, with its evidence."""

    slice: Slice
    actual: float
    """Σ actual over the slice's leaves (e.g. stalled viewers)."""
    expected: float
    """Σ expected over the slice's leaves under the baseline."""
    factor: float
    """actual / expected: how many times the baseline the slice ran at."""
    gain: float
    """Deviance reduction (in units of the dispersion) when this slice was added."""


@dataclass(frozen=True, slots=True)
class RankedSet:
    """One candidate explanation: disjoint slices, best first within the set."""

    slices: tuple[SliceEffect, ...]
    cost: float
    """Penalised deviance (lower is better); comparable only between sets of the same input."""
    explained_share: float
    """Share of the total excess (Σ actual − Σ expected·k_out over the slices) the set accounts for."""


def _xlogx_ratio(v: FloatArray | float, e: FloatArray | float) -> FloatArray:
    """v · log(v / e), with 0 · log 0 = 0; the building block of the Poisson deviance."""
    v_a = np.asarray(v, dtype=np.float64)
    e_a = np.maximum(np.asarray(e, dtype=np.float64), _EPS)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(v_a > 0, v_a * np.log(np.maximum(v_a, _EPS) / e_a), 0.0)
    return np.asarray(out, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class _Cuboids:
    """Every slice of order 1..max_order: its dimensions, value codes and the leaf → slice map."""

    dims: tuple[tuple[int, ...], ...]
    group_of_leaf: tuple[IntArray, ...]
    values: tuple[IntArray, ...]  # per cuboid: (n_groups, order) value codes


def _cuboids(codes: IntArray, max_order: int) -> _Cuboids:
    n, d = codes.shape
    dims_l: list[tuple[int, ...]] = []
    groups: list[IntArray] = []
    values: list[IntArray] = []
    radix = codes.max(axis=0) + 1 if n else np.ones(d, dtype=np.int64)
    for order in range(1, min(max_order, d) + 1):
        for combo in itertools.combinations(range(d), order):
            key = np.zeros(n, dtype=np.int64)
            for c in combo:
                key = key * int(radix[c]) + codes[:, c]
            uniq, inv = np.unique(key, return_inverse=True)
            vals = np.empty((uniq.size, order), dtype=np.int64)
            rem = uniq.copy()
            for j in range(order - 1, -1, -1):
                r = int(radix[combo[j]])
                vals[:, j] = rem % r
                rem //= r
            dims_l.append(combo)
            groups.append(inv.astype(np.int64))
            values.append(vals)
    return _Cuboids(tuple(dims_l), tuple(groups), tuple(values))


def _best_slices(
    cub: _Cuboids,
    actual: FloatArray,
    expected: FloatArray,
    free: NDArray[np.bool_],
    order_cost: float,
    limit: int,
) -> list[tuple[float, float, Slice]]:
    """The ``limit`` best slices disjoint from the covered leaves: (penalised gain, raw gain, slice)."""
    vo = float(actual[free].sum())
    eo = float(expected[free].sum())
    base = float(_xlogx_ratio(vo, eo))
    covered_w = (~free).astype(np.float64)
    v_free = np.where(free, actual, 0.0)
    e_free = np.where(free, expected, 0.0)
    out: list[tuple[float, float, Slice]] = []
    for dims, grp, vals in zip(cub.dims, cub.group_of_leaf, cub.values, strict=True):
        ng = vals.shape[0]
        vs = np.bincount(grp, weights=v_free, minlength=ng).astype(np.float64)
        es = np.bincount(grp, weights=e_free, minlength=ng).astype(np.float64)
        overlap = np.bincount(grp, weights=covered_w, minlength=ng)
        vr = np.asarray(vo - vs, dtype=np.float64)
        er = np.asarray(eo - es, dtype=np.float64)
        gain = 2.0 * (_xlogx_ratio(vs, es) + _xlogx_ratio(vr, er) - base)
        # elevated relative to the rest, not overlapping what is already chosen, not the whole space
        ok = (overlap == 0) & (es > _EPS) & (er > _EPS) & (vs * er > vr * es) & (vs > 0)
        pen = gain * (1.0 - order_cost * (len(dims) - 1))
        idx = np.flatnonzero(ok)
        if idx.size == 0:
            continue
        top = idx[np.argsort(-pen[idx])[:limit]]
        for g in top:
            sl = Slice(tuple((int(dm), int(vv)) for dm, vv in zip(dims, vals[g], strict=True)))
            out.append((float(pen[g]), float(gain[g]), sl))
    out.sort(key=lambda t: -t[0])
    return out[:limit]


class Scanner:
    """The slice lattice of a fixed set of leaves, built once and scanned for many windows."""

    def __init__(self, codes: IntArray, max_order: int = 3) -> None:
        self.codes = np.asarray(codes, dtype=np.int64)
        self._cub = _cuboids(self.codes, max_order)

    def top(self, actual: FloatArray, expected: FloatArray) -> tuple[float, Slice | None]:
        """The largest single-slice deviance gain and its slice (0, None when nothing is elevated)."""
        best = _best_slices(self._cub, actual, expected, np.ones(self.codes.shape[0], dtype=bool), 0.0, 1)
        return (best[0][1], best[0][2]) if best else (0.0, None)


    def top_many(self, actual: FloatArray, expected: FloatArray) -> tuple[FloatArray, list[Slice | None]]:
        """:meth:`top` for many windows at once: ``actual``/``expected`` are (n_leaves, n_windows)."""
        n_w = actual.shape[1]
        vo, eo = actual.sum(0), expected.sum(0)
        base = _xlogx_ratio(vo, eo)
        best = np.zeros(n_w)
        best_sl: list[Slice | None] = [None] * n_w
        for dims, grp, vals in zip(self._cub.dims, self._cub.group_of_leaf, self._cub.values, strict=True):
            ng = vals.shape[0]
            key = (grp[:, None] * n_w + np.arange(n_w)[None, :]).ravel()
            vs = np.bincount(key, weights=actual.ravel(), minlength=ng * n_w).reshape(ng, n_w).astype(np.float64)
            es = np.bincount(key, weights=expected.ravel(), minlength=ng * n_w).reshape(ng, n_w).astype(np.float64)
            vr = np.asarray(vo[None, :] - vs, dtype=np.float64)
            er = np.asarray(eo[None, :] - es, dtype=np.float64)
            gain = 2.0 * (_xlogx_ratio(vs, es) + _xlogx_ratio(vr, er) - base[None, :])
            ok = (es > _EPS) & (er > _EPS) & (vs * er > vr * es) & (vs > 0)
            gain = np.where(ok, gain, -np.inf)
            g_arg = gain.argmax(axis=0)
            g_max = gain[g_arg, np.arange(n_w)]
            for w in np.flatnonzero(g_max > best):
                best[w] = g_max[w]
                best_sl[w] = Slice(tuple((int(dm), int(vv)) for dm, vv in zip(dims, vals[g_arg[w]], strict=True)))
        return best, best_sl


def max_scan_gain(codes: IntArray, actual: FloatArray, expected: FloatArray, max_order: int = 3) -> float:
    """Largest single-slice deviance gain on this input (used on baseline windows to calibrate)."""
    cub = _cuboids(codes, max_order)
    best = _best_slices(cub, actual, expected, np.ones(codes.shape[0], dtype=bool), 0.0, 1)
    return best[0][1] if best else 0.0


def localize(
    codes: IntArray,
    actual: FloatArray,
    expected: FloatArray,
    *,
    threshold: float,
    max_order: int = 3,
    max_slices: int = 3,
    order_cost: float = 0.1,
    top_k: int = 5,
    beam: int = 8,
    rho: float = 0.3,
    min_share: float = 0.5,
    require_first: bool = False,
    totals: FloatArray | None = None,
) -> list[RankedSet]:
    """Ranked explanations (best first) of where ``actual`` exceeds ``expected``.

    ``codes``: (n_leaves, n_dims) integer value codes; ``actual``/``expected``: per-leaf counts (or
    sums) in the anomalous window. ``threshold``: deviance gain a slice must exceed to be reported
    (calibrate it with :func:`max_scan_gain` on baseline windows). Returns at most ``top_k`` sets; an
    empty list when no slice beats the threshold. The sets after the first are in order of cost, each
    followed by its un-narrowed version when the specialisation changed it, so costs are not monotonic.
    """
    codes = np.asarray(codes, dtype=np.int64)
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    n = codes.shape[0]
    if n == 0:
        return []
    cub = _cuboids(codes, max_order)
    everything = np.ones(n, dtype=bool)
    firsts = _best_slices(cub, actual, expected, everything, order_cost, beam)
    if not require_first:
        firsts = [f for f in firsts if f[0] > threshold]
    results: dict[tuple[Slice, ...], RankedSet] = {}
    # per refined set: its un-narrowed version, the coarser set that the best first slice narrowed
    # into it gives without the specialisation
    unnarrowed: dict[tuple[Slice, ...], tuple[tuple[Slice, ...], RankedSet]] = {}
    for first in firsts:
        args = (cub, codes, actual, expected, first, threshold, max_slices, min_share, rho, totals, max_order)
        key = _grow(*args, order_cost=order_cost, narrow=True)
        if key not in results:
            results[key] = _summarise(codes, actual, expected, key, threshold, order_cost)
        if key in unnarrowed:
            continue
        key_u = _grow(*args, order_cost=order_cost, narrow=False)
        if _coarser(key_u, key):
            unnarrowed[key] = (key_u, _summarise(codes, actual, expected, key_u, threshold, order_cost))
    # The refined sets decide the order (the first one is the answer, unchanged); each is followed by
    # its un-narrowed version unless that is already listed.
    ranked: dict[tuple[Slice, ...], RankedSet] = {}
    for key, rs in sorted(results.items(), key=lambda kv: kv[1].cost):
        ranked.setdefault(key, rs)
        if key in unnarrowed:
            ranked.setdefault(*unnarrowed[key])
    return list(ranked.values())[:top_k]


def _coarser(coarse: Sequence[Slice], fine: Sequence[Slice]) -> bool:
    """Whether the set ``coarse`` is the set ``fine`` with dimensions dropped: a different set of as many
    slices, each slice of ``fine`` inside one of ``coarse`` and each of ``coarse`` containing one of ``fine``."""
    if len(coarse) != len(fine) or set(coarse) == set(fine):
        return False
    inside = [[set(c.items) <= set(f.items) for c in coarse] for f in fine]
    return all(map(any, inside)) and all(map(any, zip(*inside, strict=True)))


def _grow(
    cub: _Cuboids,
    codes: IntArray,
    actual: FloatArray,
    expected: FloatArray,
    first: tuple[float, float, Slice],
    threshold: float,
    max_slices: int,
    min_share: float,
    rho: float,
    totals: FloatArray | None,
    max_order: int,
    *,
    order_cost: float,
    narrow: bool,
) -> tuple[Slice, ...]:
    """Greedy forward selection of disjoint slices from ``first``, each passed through the ripple-effect
    test (both directions when ``narrow``, else :func:`_generalise` only). Returns the set (its slices
    sorted); its cost is computed from the set alone (:func:`_summarise`)."""

    def ripple(pick: tuple[float, float, Slice], free: NDArray[np.bool_]) -> tuple[float, float, Slice]:
        if narrow:
            return _refine(codes, actual, expected, pick, free, rho, totals, max_order, order_cost)
        return _generalise(codes, actual, expected, pick, free, rho, totals)

    chosen = [ripple(first, np.ones(codes.shape[0], dtype=bool))]
    free = ~chosen[0][2].mask(codes)
    while len(chosen) < max_slices:
        nxt = _best_slices(cub, actual, expected, free, order_cost, 1)
        if not nxt or nxt[0][0] <= max(threshold, min_share * chosen[0][1]):
            break
        g = ripple(nxt[0], free)
        anc = _ancestor(codes, actual, expected, chosen, g, free)
        if anc is not None:
            chosen[0] = anc
            free = ~np.logical_or.reduce([c[2].mask(codes) for c in chosen])
            continue
        chosen.append(g)
        free &= ~g[2].mask(codes)
    return tuple(sorted((c[2] for c in chosen), key=lambda s: s.items))


def _ancestor(
    codes: IntArray,
    actual: FloatArray,
    expected: FloatArray,
    chosen: list[tuple[float, float, Slice]],
    nxt: tuple[float, float, Slice],
    free: NDArray[np.bool_],
) -> tuple[float, float, Slice] | None:
    """The common ancestor P of the first chosen slice and the next one, when P's other leaves are
    significantly elevated too (z >= ``_RIPPLE_Z`` against the factor of the leaves outside P): two
    elevated slices inside one component and an elevated remainder are the ripple effect of one cause."""
    first = chosen[0][2]
    common = tuple(sorted(set(first.items) & set(nxt[2].items)))
    if not common:
        return None
    anc = Slice(common)
    p_mask = anc.mask(codes)
    if any((c[2].mask(codes) & p_mask).any() for c in chosen[1:]):
        return None
    rest = p_mask & free & ~nxt[2].mask(codes)
    out = free & ~p_mask
    if not rest.any() or not out.any():
        return None
    k_o = _factor(float(actual[out].sum()), float(expected[out].sum()))
    mu = float(expected[rest].sum()) * k_o
    if (float(actual[rest].sum()) - mu) / max(mu, 1.0) ** 0.5 < _RIPPLE_Z:
        return None
    vp, ep = float(actual[p_mask].sum()), float(expected[p_mask].sum())
    vo, eo = float(actual[out].sum()), float(expected[out].sum())
    gain = 2.0 * float(_xlogx_ratio(vp, ep) + _xlogx_ratio(vo, eo) - _xlogx_ratio(vp + vo, ep + eo))
    return (gain, gain, anc)


def _factor(v: float, e: float) -> float:
    return v / e if e > _EPS else 1.0


def _generalise(
    codes: IntArray,
    actual: FloatArray,
    expected: FloatArray,
    pick: tuple[float, float, Slice],
    free: NDArray[np.bool_],
    rho: float,
    totals: FloatArray | None,
) -> tuple[float, float, Slice]:
    """Replace a slice by its parent (one dimension dropped) while the parent's other leaves are
    elevated too — at least ``rho`` of the slice's own elevation over the leaves outside the parent —
    or when the parent has no other leaves (the same viewers under a shorter name). A parent whose other
    leaves are few but normal is not taken: the ripple effect has to be seen, not assumed."""
    cur = pick
    while cur[2].order > 1:
        s_mask = cur[2].mask(codes) & free
        k_s = _factor(float(actual[s_mask].sum()), float(expected[s_mask].sum()))
        best: tuple[float, float, Slice] | None = None
        for drop in range(cur[2].order):
            parent = Slice(tuple(it for j, it in enumerate(cur[2].items) if j != drop))
            p_mask = parent.mask(codes)
            if (p_mask & ~free).any():
                continue
            rest = p_mask & ~s_mask
            out = free & ~p_mask
            e_r, e_p = float(expected[rest].sum()), float(expected[p_mask].sum())
            if out.sum() == 0:
                continue
            k_o = _factor(float(actual[out].sum()), float(expected[out].sum()))
            if totals is None:
                k_r = _factor(float(actual[rest].sum()), e_r)
                elevated = (k_r - k_o) >= rho * (k_s - k_o)
            else:
                # excess per unit of total (e.g. extra stall probability per viewer), additive scale
                n_r, n_s = float(totals[rest].sum()), float(totals[s_mask].sum())
                d_r = (float(actual[rest].sum()) - e_r * k_o) / max(n_r, _EPS)
                d_s = (float(actual[s_mask].sum()) - float(expected[s_mask].sum()) * k_o) / max(n_s, _EPS)
                elevated = d_r >= rho * d_s
            # generalise on evidence of the ripple effect only; a parent with no other leaves of
            # its own (e_r = 0) covers the same viewers, and the coarser name wins (Occam)
            if elevated or e_r <= _EPS:
                vp, vo = float(actual[p_mask].sum()), float(actual[out].sum())
                eo = float(expected[out].sum())
                vf, ef = vp + vo, e_p + eo
                gain = 2.0 * float(_xlogx_ratio(vp, e_p) + _xlogx_ratio(vo, eo) - _xlogx_ratio(vf, ef))
                if best is None or gain > best[1]:
                    best = (gain, gain, parent)
        if best is None:
            break
        cur = best
    return cur


_RIPPLE_Z = 2.0
"""One-sided z (Poisson) the parent's other leaves must reach to count as elevated (about 2.3 %)."""


def _refine(
    codes: IntArray,
    actual: FloatArray,
    expected: FloatArray,
    pick: tuple[float, float, Slice],
    free: NDArray[np.bool_],
    rho: float,
    totals: FloatArray | None,
    max_order: int,
    order_cost: float,
) -> tuple[float, float, Slice]:
    """Apply the ripple-effect test in both directions until the slice no longer changes: generalise
    (:func:`_generalise`), then specialise (:func:`_specialise`); stop at a slice seen before."""
    seen: set[Slice] = set()
    cur = pick
    for _ in range(2 * max_order):
        up = _generalise(codes, actual, expected, cur, free, rho, totals)
        down = _specialise(codes, actual, expected, up, free, max_order, order_cost)
        if down[2] == up[2] or down[2] in seen:
            return up
        seen.add(down[2])
        cur = down
    return cur


def _specialise(
    codes: IntArray,
    actual: FloatArray,
    expected: FloatArray,
    pick: tuple[float, float, Slice],
    free: NDArray[np.bool_],
    max_order: int,
    order_cost: float,
) -> tuple[float, float, Slice]:
    """Replace a slice by its child (one dimension added) while the child explains more deviance and
    the slice's other leaves are not significantly elevated (z < ``_RIPPLE_Z`` against the factor of
    the leaves outside the slice).

    The order cost makes the greedy search prefer the coarser slice when gains are close; that is
    Occam's razor, but if the coarser slice's other viewers were observed and were not worse than
    normal, the ripple effect that would make it the cause is absent, and the child is the cause."""
    cur = pick
    while cur[2].order < max_order:
        s_mask = cur[2].mask(codes) & free
        vf, ef = float(actual[free].sum()), float(expected[free].sum())
        base = float(_xlogx_ratio(vf, ef))
        vs, es = float(actual[s_mask].sum()), float(expected[s_mask].sum())
        g_s = 2.0 * float(_xlogx_ratio(vs, es) + _xlogx_ratio(vf - vs, ef - es) - base)
        best: tuple[float, Slice, NDArray[np.bool_]] | None = None
        used = {d for d, _ in cur[2].items}
        for d in range(codes.shape[1]):
            if d in used:
                continue
            col = codes[s_mask, d]
            vc = np.bincount(col, weights=actual[s_mask]).astype(np.float64)
            ec = np.bincount(col, weights=expected[s_mask]).astype(np.float64)
            present = np.bincount(col) > 0
            gains = 2.0 * (_xlogx_ratio(vc, ec) + _xlogx_ratio(vf - vc, ef - ec) - base)
            gains = np.where(present, gains, -np.inf)
            v = int(np.argmax(gains))
            if best is None or gains[v] > best[0]:
                child = Slice(tuple(sorted((*cur[2].items, (d, v)))))
                best = (float(gains[v]), child, s_mask & (codes[:, d] == v))
        if best is None or best[0] <= g_s:
            break
        rest = s_mask & ~best[2]
        out = free & ~s_mask
        if not out.any():
            break
        k_o = _factor(float(actual[out].sum()), float(expected[out].sum()))
        mu = float(expected[rest].sum()) * k_o
        z = (float(actual[rest].sum()) - mu) / max(mu, 1.0) ** 0.5
        if z >= _RIPPLE_Z:
            break
        cur = (best[0] * (1.0 - order_cost * (best[1].order - 1)), best[0], best[1])
    return cur


def _set_gains(
    codes: IntArray,
    actual: FloatArray,
    expected: FloatArray,
    slices: Sequence[Slice],
    order_cost: float,
) -> list[tuple[float, float, Slice]]:
    """The set's slices in the order the greedy search would add them if offered only these: at each step
    the slice with the largest penalised gain over the leaves still uncovered. Returns (penalised gain,
    gain, slice) per slice; the gains are deviance reductions (in units of the dispersion) and sum to the
    whole set's, whatever order the search met the slices in, so the set's cost depends on the set only."""
    free = np.ones(codes.shape[0], dtype=bool)
    left = list(slices)
    out: list[tuple[float, float, Slice]] = []
    while left:
        vo, eo = float(actual[free].sum()), float(expected[free].sum())
        base = float(_xlogx_ratio(vo, eo))
        scored = []
        for sl in left:
            m = sl.mask(codes) & free
            vs, es = float(actual[m].sum()), float(expected[m].sum())
            gain = 2.0 * float(_xlogx_ratio(vs, es) + _xlogx_ratio(vo - vs, eo - es) - base)
            scored.append((gain * (1.0 - order_cost * (sl.order - 1)), gain, sl))
        best = max(scored, key=lambda t: (t[0], t[2].items))
        out.append(best)
        left.remove(best[2])
        free &= ~best[2].mask(codes)
    return out


def _summarise(
    codes: IntArray,
    actual: FloatArray,
    expected: FloatArray,
    slices: Sequence[Slice],
    threshold: float,
    order_cost: float,
) -> RankedSet:
    """The set's evidence and cost, computed from its slices alone (not from how the search reached them)."""
    chosen = _set_gains(codes, actual, expected, slices, order_cost)
    free = np.ones(codes.shape[0], dtype=bool)
    for _, _, sl in chosen:
        free &= ~sl.mask(codes)
    vo = float(actual[free].sum())
    eo = float(expected[free].sum())
    k_out = vo / eo if eo > _EPS else 1.0
    effects = []
    dev_gain = 0.0
    excess = 0.0
    for pen, gain, sl in chosen:
        m = sl.mask(codes)
        v = float(actual[m].sum())
        e = float(expected[m].sum())
        effects.append(SliceEffect(sl, v, e, v / e if e > _EPS else float("inf"), gain))
        dev_gain += pen
        excess += max(v - e * k_out, 0.0)
    total_excess = max(float(actual.sum() - expected.sum() * k_out), _EPS)
    # penalised deviance relative to "no explanation": each slice costs the threshold
    cost = -dev_gain + threshold * len(chosen)
    return RankedSet(tuple(effects), cost, min(excess / total_excess, 1.0))
