"""How much of the residual cells' P3 loss is quantisation: at quality 7.5's previous setting (see
loss_breakdown.py), add to each residual cell's decoded P3 the unquantised projection of its remaining error on the
residual's first N principal components, and score on the tuning fold (docs/results.md).

    python experiments/residual_projection.py 0,128,256,512
"""

import json
import sys

import torch
import torch.nn.functional as F
from fold import PREVIOUS_75, code, load, maps

from mutualfc.nn.packing import pad_levels
from mutualfc.tasks.base import FeatureSet

task, codec, sets, feats = load()
net = codec.net
ncomp = [int(c) for c in sys.argv[1].split(",")]
p = net.res.pack
Wa, Ws = net.res.lin_a.weight, net.res.lin_s.weight
dets = {n: [] for n in ncomp}
err = {n: 0.0 for n in ncomp}
with torch.inference_mode():
    for i, fs, _ in feats:
        keep, rk, _, meta = code(net, task, fs, **PREVIOUS_75)
        rec = meta["levels"]
        x, size = pad_levels(dict(fs.levels), net.cfg.levels, net.pad_multiple)
        r, _ = pad_levels(dict(rec), net.cfg.levels, net.pad_multiple)
        xp, rp = p.pack({"p3": x["p3"]}), p.pack({"p3": r["p3"]})
        d = xp - rp
        m = (rk & keep).float()
        m = F.pad(m, (0, d.shape[-1] - m.shape[-1], 0, d.shape[-2] - m.shape[-2]))
        for n in ncomp:
            proj = F.conv2d(F.conv2d(d, Wa[:n]), Ws[:, :n]) if n else 0 * d
            err[n] += float(((d - proj) ** 2 * m).sum())
            # the projection as a change of the decoded P3 (the packing's round trip is not bit-exact)
            t = r["p3"] + p.unpack(rp + proj * m)["p3"] - p.unpack(rp)["p3"]
            lv = dict(rec) | {"p3": t[..., : rec["p3"].shape[-2], : rec["p3"].shape[-1]]}
            dets[n] += task.back(FeatureSet(lv, fs.geometry)).to_coco(i)
for n in ncomp:
    print(json.dumps({"components": n, "err": err[n], "maps": maps(sets, dets[n])}), flush=True)
