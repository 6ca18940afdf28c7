"""A finer base in the top tier: qualities above 7 read as quality 7's gains times 2 ** (quality - 7) for the base
(the tier and the residual unchanged), on the tuning fold (docs/results.md). Settings: ';'-separated, each
comma-separated Q, tau, tau_r, tau_hi, q_lo.

    python experiments/base_boost.py \
        "Q=7,tau=0.0447,tau_r=0.1,tau_hi=0.1,q_lo=5.5;Q=7.5,tau=0.0447,tau_r=0.1,tau_hi=0.1,q_lo=5.5"
"""

import json
import sys
import types

from fold import code, load, maps

from mutualfc import bitstream
from mutualfc.models.gain import GainUnit
from mutualfc.tasks.base import FeatureSet

task, codec, sets, feats = load(sys.argv[2] if len(sys.argv) > 2 else "mutual")
net = codec.net
g = net.bfc.gain
fwd, inv = GainUnit.forward, GainUnit.inverse_fixed


def split(q, boost):
    if q > 7:
        return 7.0, boost + round((q - 7) * 2)
    return q, boost


g.forward = types.MethodType(lambda self, q, boost=0: fwd(self, *split(q, boost)), g)
g.inverse_fixed = types.MethodType(lambda self, q, boost=0: inv(self, *split(q, boost)), g)
pixels = sum(p for _, _, p in feats)
for setting in sys.argv[1].split(";"):
    o = dict(kv.split("=") for kv in setting.split(","))
    Q = float(o.pop("Q"))
    bits = {"base": 0, "res": 0, "other": 0}
    dets = []
    for i, fs, _ in feats:
        _, _, strings, meta = code(net, task, fs, Q, **{k: float(v) for k, v in o.items()})
        header = bitstream.Header(codec.codec_id, codec.task_id, min(Q, 8.0), codec.model_tag, 640, 480)
        size = 8 * len(bitstream.pack(header, strings))
        bits["base"] += 8 * len(strings[1])
        bits["res"] += 8 * sum(len(s) for s in strings[2:])
        bits["other"] += size - 8 * sum(len(s) for s in strings[1:])
        dets += task.back(FeatureSet(meta["levels"], fs.geometry)).to_coco(i)
    print(
        json.dumps(
            {
                "setting": setting,
                "bpp": sum(bits.values()) / pixels,
                **{k: v / pixels for k, v in bits.items()},
                "maps": maps(sets, dets),
            }
        ),
        flush=True,
    )
