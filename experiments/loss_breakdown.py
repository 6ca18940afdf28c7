"""Where quality 7.5's operating point loses accuracy: code the tuning fold as the codec does at 7.5 (threshold
0.0447, tier below 0.1 at quality 5.5, residual in the cells of objectness >= 0.1: the setting before the
rate-distortion choice of the residual's cells), then put the original features back in one part of the decoded map
at a time and score against the pseudo-labels at cut-offs 0.1 and 0.02 (docs/results.md, "Rate-distortion choice of
the residual's cells"). Variants: comma-separated, each ``+``-joined ``WHERE:LEVEL`` with WHERE one of kept, skipped,
res (the residual's cells), nores (kept cells without it), all.

    python experiments/loss_breakdown.py \
        "none:p3,kept:p3,res:p3,nores:p3,skipped:p3+skipped:p4+skipped:p5,kept:p4+kept:p5"
"""

import json
import sys

import torch
from fold import PREVIOUS_75, code, load, maps

from mutualfc.tasks.base import FeatureSet

task, codec, sets, feats = load()
variants = sys.argv[1].split(",")
dets = {v: [] for v in variants}


def up(m, f, like):
    m = m.repeat_interleave(f, -1).repeat_interleave(f, -2)
    return m[..., : like.shape[-2], : like.shape[-1]]


for i, fs, _ in feats:
    keep, rk, _, meta = code(codec.net, task, fs, **PREVIOUS_75)
    dec = meta["levels"]
    for v in variants:
        lv = dict(dec)
        for part in v.split("+"):
            where, lev = part.split(":")  # where: kept|skipped|res|nores|all ; lev: p3|p4|p5
            m = {
                "kept": keep,
                "skipped": ~keep,
                "res": rk & keep,
                "nores": keep & ~rk,
                "all": torch.ones_like(keep),
            }.get(where)
            if m is None:
                continue
            f = {"p3": 4, "p4": 2, "p5": 1}[lev]
            mm = up(m.float(), f, lv[lev]) > 0
            lv[lev] = torch.where(mm, fs.levels[lev], lv[lev])
        dets[v] += task.back(FeatureSet(lv, fs.geometry)).to_coco(i)
for v in variants:
    print(json.dumps({"variant": v, "maps": maps(sets, dets[v])}), flush=True)
