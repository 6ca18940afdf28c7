"""Where ``exact.FEW_COLUMNS`` should lie: the wide (23-bit) synthesis, prediction and correction products timed
inside the codec, as rows (``x.T @ w.T``) up to each candidate threshold and as columns (``w @ x``) above it.

Isolated timings of one product repeated (``torch.mm`` at the same shapes) rank the two orders differently from the
codec, where the other layers and the detector's halves run between two uses of a weight; so each candidate runs
the whole codec (encode + decode of the same images), alternating candidates pass by pass, and ``exact.wide_linear``
is timed at every call. Both orders give the same bits (``tests/test_mutual_model.py``), so only the time differs.
Prints one JSON line per candidate (median per image over the passes after the first) and writes
results/wide-orders.json.

    python benchmarks/wide_orders.py --quality 7.75 --thresholds 0,16,96,192
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from mutualfc.codecs import create_codec
from mutualfc.eval.coco import CocoDataset
from mutualfc.eval.runner import cpu_model
from mutualfc.images import load_image
from mutualfc.io import atomic_write_text
from mutualfc.nn import exact
from mutualfc.tasks import create_task

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/coco-val212"), help="COCO folder with images/")
    ap.add_argument("--images", type=int, default=10, help="images per pass (default: %(default)s)")
    ap.add_argument("--task", default="yolov5n-coco", help="task network (default: %(default)s)")
    ap.add_argument("--quality", type=float, default=7.75, help="mutual codec quality (default: %(default)s)")
    ap.add_argument("--thresholds", default="0,16,96,192", help="candidate FEW_COLUMNS values (default: %(default)s)")
    ap.add_argument("--passes", type=int, default=12, help="passes per candidate (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=ROOT / "results/wide-orders.json", help="JSON written")
    args = ap.parse_args()
    candidates = [int(v) for v in args.thresholds.split(",")]
    if args.passes < 2 or args.images < 1 or min(candidates) < 0:
        ap.error("--passes must be at least 2, --images at least 1, thresholds at least 0")
    torch.set_num_threads(args.threads)
    codec = create_codec("mutual", create_task(args.task))
    records = CocoDataset(Path(args.data) / "images").subset(args.images).records
    xs = [codec.prepare(load_image(r.path)) for r in records]
    spent = [0.0]
    product = exact.wide_linear

    def timed(weights: exact.WideWeights, x: torch.Tensor) -> torch.Tensor:
        t = time.perf_counter()
        out = product(weights, x)
        spent[0] += time.perf_counter() - t
        return out

    runs = {c: [] for c in candidates}
    chosen = exact.FEW_COLUMNS
    exact.wide_linear = timed  # every caller looks it up in the module
    try:
        for p in range(args.passes):
            for c in candidates if p % 2 == 0 else candidates[::-1]:  # alternate: slow minutes fall on all of them
                exact.FEW_COLUMNS, spent[0] = c, 0.0
                t = time.perf_counter()
                for x in xs:
                    codec.decode(codec.encode(x, args.quality))
                runs[c].append(((time.perf_counter() - t) / len(xs), spent[0] / len(xs)))
    finally:
        exact.wide_linear, exact.FEW_COLUMNS = product, chosen
    rows = []
    for c in candidates:
        after_first = runs[c][1:]
        rows.append({"few_columns": c, "codec_ms": round(1000 * statistics.median(a for a, _ in after_first), 2),
                     "wide_ms": round(1000 * statistics.median(b for _, b in after_first), 2)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    setup = {"task": args.task, "quality": args.quality, "images": args.images, "passes": args.passes,
             "threads": args.threads, "processor": cpu_model(), "chosen": chosen}  # fmt: skip
    atomic_write_text(args.out, json.dumps({"setup": setup, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
