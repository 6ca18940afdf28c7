"""BD-rate between two RD curves (accuracy vs bpp) with the ``bjontegaard`` package."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from mutualfc.errors import MutualFCError


@dataclass
class Curve:
    name: str
    rate: np.ndarray
    quality: np.ndarray
    dropped: int = 0  # points removed by the monotone envelope


def monotone_envelope(rate, quality) -> tuple[np.ndarray, np.ndarray, int]:
    """Keep the points whose quality exceeds that of every cheaper point (pchip needs rising curves)."""
    order = np.argsort(rate)
    r, q = np.asarray(rate, float)[order], np.asarray(quality, float)[order]
    keep, best = [], -np.inf
    for i in range(len(r)):
        if q[i] > best and (not keep or r[i] > r[keep[-1]]):
            keep.append(i)
            best = q[i]
    return r[keep], q[keep], len(r) - len(keep)


def curve_from_records(records: list[dict], metric: str = "map", codec: str | None = None) -> Curve:
    pts = [r for r in records if r.get("bpp") is not None and (codec is None or r.get("codec") == codec)]
    names = sorted({r["codec"] for r in pts})
    if not pts:
        raise MutualFCError(f"no rate points{f' for codec {codec}' if codec else ''} in the results")
    if len(names) > 1:
        raise MutualFCError(f"results hold several codecs ({', '.join(names)}); pick one with --test-codec/--ref-codec")
    r, q, dropped = monotone_envelope([p["bpp"] for p in pts], [p[metric] for p in pts])
    if len(r) < 4:
        raise MutualFCError(f"curve {names[0]} has {len(r)} usable points; BD-rate needs at least 4")
    return Curve(names[0], r, q, dropped)


def bd_rate(test: Curve, reference: Curve, method: str = "pchip") -> dict:
    """BD-rate (percent) of ``test`` against ``reference`` over their common quality interval."""
    import bjontegaard

    lo = max(test.quality.min(), reference.quality.min())
    hi = min(test.quality.max(), reference.quality.max())
    if hi <= lo:
        raise MutualFCError(
            f"curves do not overlap in quality ({test.name}: {test.quality.min():.4f}..{test.quality.max():.4f}, "
            f"{reference.name}: {reference.quality.min():.4f}..{reference.quality.max():.4f})"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = bjontegaard.bd_rate(
            reference.rate, reference.quality, test.rate, test.quality, method=method, require_matching_points=False
        )
    span = max(test.quality.max(), reference.quality.max()) - min(test.quality.min(), reference.quality.min())
    return {
        "bd_rate": float(value),
        "method": method,
        "overlap": [float(lo), float(hi)],
        "overlap_fraction": float((hi - lo) / span) if span > 0 else 0.0,
        "test": test.name,
        "reference": reference.name,
        "test_points": len(test.rate),
        "reference_points": len(reference.rate),
        "test_dropped_by_envelope": test.dropped,
        "reference_dropped_by_envelope": reference.dropped,
    }
