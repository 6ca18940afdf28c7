"""Where each millisecond of the learned codecs goes: a profile table per stage (cProfile's cumulative time of the
functions that make up each stage), per image, for encode and decode. Writes results/profile.md and
results/profile.json.

    python benchmarks/stages.py --images 10 --points mutual=4,mutual=7.75 --threads 2
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
from pathlib import Path

import torch

from mutualfc.codecs import create_codec
from mutualfc.eval.coco import CocoDataset
from mutualfc.images import load_image
from mutualfc.io import atomic_write_text
from mutualfc.tasks import create_task

ROOT = Path(__file__).resolve().parents[1]
_IN_LATENT = "latent_codecs/hyperprior.py:code"  # only the calls the latent's coding loop makes
_PARAMS = (
    "affine_columns",
    "accumulate",
    "activations",
    *(f"<method '{m}' of 'torch._C.TensorBase' objects>" for m in ("addmm", "addmm_")),
)
# the channel groups' context networks, with the layer composed into the entropy parameters (bitstream version 6)
_CHANNEL_CONTEXT = ("  channel context (exact, its composed layer included)", "latent_codecs/hyperprior.py",
                    "_with_channel_context")  # fmt: skip
# each group's checkerboard steps (``latent_codecs.group_pass``): cProfile sees them whole
_GROUPS = "  channel groups' steps (spatial context, entropy parameters, Gaussian coding)"
# stage -> (file suffix, function name(s)[, "file:function" that calls it]): cumulative time of the function (only
# in the calls that caller makes, where one is named); stages nest as the code does (the rows
# are not exclusive: "latent coding" includes its rANS calls)
STAGES = {
    "encode": [
        ("objectness map (skip mask)", "mutualfc/tasks/", "objectness_map"),
        ("analysis (float, 1 thread)", "models/bfc.py", "analysis"),
        ("latent coding (hyperprior, groups)", "latent_codecs/hyperprior.py", "compress"),
        ("  hyper-latent and hyper synthesis", "latent_codecs/hyper.py", "code"),
        _CHANNEL_CONTEXT,
        ("  entropy parameters' shared part (exact)", "", _PARAMS, _IN_LATENT),
        (_GROUPS, "latent_codecs/group_pass.py", "code_group"),
        ("  rANS encoder", "entropy/ans.py", "encode"),
        ("base synthesis (exact)", "models/bfc.py", "packed_cells"),
        ("MFCNet prediction (exact)", "models/mfc.py", "predict_cells"),
        ("residual decision (rate-distortion)", "models/residual.py", "worth"),
        ("residual coding", "models/residual.py", "compress"),
        ("residual context (exact)", "models/bfc.py", "context"),
        ("residual entropy parameters (exact)", "models/residual.py", "entropy_params"),
        ("container", "bitstream.py", "pack"),
    ],
    "decode": [
        ("latent decoding (hyperprior, groups)", "latent_codecs/hyperprior.py", "decompress"),
        ("  hyper-latent and hyper synthesis", "latent_codecs/hyper.py", "code"),
        _CHANNEL_CONTEXT,
        ("  entropy parameters' shared part (exact)", "", _PARAMS, _IN_LATENT),
        (_GROUPS, "latent_codecs/group_pass.py", "code_group"),
        ("base synthesis (exact)", "models/bfc.py", "packed_cells"),
        ("MFCNet prediction (exact)", "models/mfc.py", "predict_cells"),
        ("residual context (exact)", "models/bfc.py", "context"),
        ("residual entropy parameters (exact)", "models/residual.py", "entropy_params"),
        ("residual decoding", "models/residual.py", "decompress"),
        ("residual correction (exact)", "models/residual.py", "correction_cells"),
        ("painting the levels (inverse metric included)", "nn/packing.py", "paint_fixed"),
    ],
}


def _cumulative(stats: pstats.Stats, where: str, name: str | tuple[str, ...], caller: str = "") -> float:
    """Seconds spent in (and under) function ``name`` (or any of several) of files whose path contains ``where``;
    with ``caller`` ("file suffix:function"), only in the calls that function makes directly."""
    names = (name,) if isinstance(name, str) else name
    c_file, _, c_func = caller.partition(":")
    total = 0.0
    for (file, _, func), (_, _, _, cum, callers) in stats.stats.items():
        if where not in file or func not in names:
            continue
        if not caller:
            total += cum
            continue
        total += sum(v[3] for (f, _, fn), v in callers.items() if f.endswith(c_file) and fn == c_func)
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/coco-val212"), help="COCO folder with images/")
    ap.add_argument("--images", type=int, default=10, help="number of images (default: %(default)s)")
    ap.add_argument("--points", default="mutual=4,mutual=7.75", help="codec=quality pairs (default: %(default)s)")
    ap.add_argument("--task", default="yolov5n-coco", help="task network (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    ap.add_argument("--checkpoint", help="learned codecs: this model file instead of the zoo's (train export)")
    ap.add_argument("--out-dir", default=str(ROOT / "results"), help="where results go (default: results/)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = create_task(args.task)
    images = [load_image(r.path) for r in CocoDataset(Path(args.data) / "images").subset(args.images).records]
    rows = []
    for spec in args.points.split(","):
        name, _, q = spec.partition("=")
        codec, q = create_codec(name, task, checkpoint=args.checkpoint), float(q)
        xs = [codec.prepare(im) for im in images]
        codec.decode(codec.encode(xs[0], q))  # warm-up: integer weights, tables
        for side in ("encode", "decode"):
            data = [codec.encode(x, q) for x in xs]
            prof = cProfile.Profile()
            prof.enable()
            for x, d in zip(xs, data, strict=True):
                if side == "encode":
                    codec.encode(x, q)
                else:
                    codec.decode(d)
            prof.disable()
            stats = pstats.Stats(prof)
            whole = _cumulative(stats, "codecs/base.py", side)
            n = len(xs)
            stages = {label: 1000 * _cumulative(stats, *spec) / n for label, *spec in STAGES[side]}
            row = {"task": task.name, "codec": name, "quality": q, "side": side, "ms_per_image": 1000 * whole / n,
                   "stages": stages}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out_dir)
    atomic_write_text(out / "profile.json", json.dumps({"threads": args.threads, "rows": rows}, indent=1) + "\n")
    lines = [f"# Profile of the learned codecs: {task.name} ({args.images} images, {args.threads} threads, cProfile)",
             "",
             f"`python benchmarks/stages.py --images {args.images} --points {args.points} --threads {args.threads}"
             f"{'' if args.task == 'yolov5n-coco' else ' --task ' + args.task}`"
             "; ms per image, cumulative per stage (an indented row is part of the unindented row above it; "
             "stages nested in one another count in each; cProfile adds its own overhead to every call, so the "
             "sum is above benchmarks/speed.py's figures).", ""]  # fmt: skip
    for r in rows:
        lines += [f"## {r['codec']} quality {r['quality']:g}, {r['side']}: {r['ms_per_image']:.1f} ms", "",
                  "| stage | ms | share |", "|---|---|---|"]  # fmt: skip
        for label, ms in r["stages"].items():
            if ms > 0:
                lines.append(f"| {label} | {ms:.1f} | {100 * ms / r['ms_per_image']:.0f}% |")
        lines.append("")
    atomic_write_text(out / "profile.md", "\n".join(lines))
    print(f"wrote {out / 'profile.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
