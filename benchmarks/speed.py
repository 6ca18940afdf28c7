"""Speed benchmark: encode / decode milliseconds per image for each codec alone, and with the detector's front/back.

``--threads`` applies to the detector and to the learned codecs' exact steps (their float analysis runs on one
thread, so that what is coded does not depend on the thread count). Every step is timed once per image in each of
``--repeat`` passes over all the images, and per image and step the fastest pass counts (the ``timeit`` convention:
the other runs measure the machine's other load, not the code). Passes rather than back-to-back repeats, because a
shared machine's load comes in bursts of seconds that back-to-back repeats all fall into; each pass times every
codec in turn, so that a slow stretch of tens of seconds does not fall on one codec only. Where ``hevc-image`` is
among the codecs, every row also gets its codec time as a ratio to the anchor's in the same task and run (the unit
issue 27's targets are stated in). ``--runs N`` repeats the whole measurement N times and reports per row the median
of the runs and the range of the ratio, since a shared machine's single runs move by several percent. Prints a table
and writes results/speed.json, results/speed.md, results/speed-runs.jsonl (every run's rows) and results/speed.png
(each point's ratio to the anchor, its range over the runs as a whisker, one panel per task). ``--report-only``
re-writes the table, the JSON and the plot from an earlier measurement's speed-runs.jsonl without measuring.

    python benchmarks/speed.py --data ../shared/data/coco-val212 --images 20
    python benchmarks/speed.py --images 10 --codecs mutual-fast=4,mutual-fast=7.75,hevc-image --repeat 6 --runs 4
    python benchmarks/speed.py --report-only
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
from mutualfc.io import atomic_write_bytes, atomic_write_text
from mutualfc.tasks import create_task

ROOT = Path(__file__).resolve().parents[1]
POINTS = {"mutual": 4, "separate": 4, "hevc-feature": 22, "hevc-image": 37}
ANCHOR = "hevc-image"  # the codec every row's time is also stated against


def _ms(f, *a):
    """-> f(*a) and its time in ms."""
    t = time.perf_counter()
    out = f(*a)
    return out, 1000 * (time.perf_counter() - t)


def measure(points: list, images: list, repeat: int) -> list[dict]:
    """One whole measurement: ``repeat`` passes, each timing every codec on every image in turn; per image and step
    the fastest pass counts. -> one row per codec."""
    best = [[[float("inf")] * 4 for _ in images] for _ in points]  # per point, image: front, encode, decode, back
    sizes = {}  # point index -> (bytes, pixels) of the first pass
    for r in range(repeat):  # each pass times every codec: all of them see the same stretches of load
        for j, (_, _, param, codec) in enumerate(points):
            nbytes = pixels = 0
            for i, im in enumerate(images):
                x, t_front = _ms(codec.prepare, im)  # the front half; nothing for an image codec
                data, t_enc = _ms(codec.encode, x, param)
                y, t_dec = _ms(codec.decode, data)
                _, t_back = _ms(codec.detections, y)
                best[j][i] = [min(a, b) for a, b in zip(best[j][i], (t_front, t_enc, t_dec, t_back), strict=True)]
                nbytes, pixels = nbytes + len(data), pixels + im.shape[0] * im.shape[1]
            sizes.setdefault(j, (nbytes, pixels))
        print(f"pass {r + 1}/{repeat} done", flush=True)
    rows = []
    for j, (task, name, param, _) in enumerate(points):
        front, enc, dec, back = (sum(b[k] for b in best[j]) for k in range(4))
        n, (nbytes, pixels) = len(images), sizes[j]
        rows.append({"task": task.name, "codec": name, "param": param, "images": n,
                     "bpp": round(8 * nbytes / pixels, 4), "encode_ms": round(enc / n, 1),
                     "decode_ms": round(dec / n, 1), "codec_ms": round((enc + dec) / n, 1),
                     "front_ms": round(front / n, 1), "back_ms": round(back / n, 1),
                     "end_to_end_ms": round((enc + dec + front + back) / n, 1)})  # fmt: skip
    return rows


def with_ratios(rows: list[dict]) -> list[dict]:
    """Each row with ``ratio``: its codec time over the anchor's of the same task in the same run (None without it)."""
    anchor = {r["task"]: r["codec_ms"] for r in rows if r["codec"] == ANCHOR}
    return [dict(r, ratio=round(r["codec_ms"] / anchor[r["task"]], 3) if r["task"] in anchor else None) for r in rows]


def summarise(every: list[dict]) -> list[dict]:
    """Per task, codec and point: the median over the runs of every time and ratio, and the ratio's range."""
    groups: dict[tuple, list[dict]] = {}
    for r in every:
        groups.setdefault((r["task"], r["codec"], r["param"]), []).append(r)
    rows = []
    for rs in groups.values():
        row = {k: v for k, v in rs[0].items() if k != "run"}
        row.update({k: round(statistics.median(r[k] for r in rs), 1) for k in row if k.endswith("_ms")})
        ratios = [r["ratio"] for r in rs if r["ratio"] is not None]
        if ratios:
            row.update(ratio=round(statistics.median(ratios), 3), ratio_range=[min(ratios), max(ratios)])
        rows.append(row | {"runs": len(rs)})
    return rows


def table(rows: list[dict], runs: int) -> str:
    """The Markdown table of ``summarise``'s rows."""
    lines = ["| task | codec | param | bpp | front ms | encode ms | decode ms | back ms | codec enc+dec ms | "
             f"+ front/back (detector) ms | codec vs {ANCHOR} |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        ratio = "" if r.get("ratio") is None else f"{r['ratio']:.3f}x"
        if ratio and runs > 1:
            ratio += f" ({r['ratio_range'][0]:.3f}–{r['ratio_range'][1]:.3f})"
        lines.append(f"| {r['task']} | {r['codec']} | {r['param']:g} | {r['bpp']} | {r['front_ms']} | "
                     f"{r['encode_ms']} | {r['decode_ms']} | {r['back_ms']} | {r['codec_ms']} | "
                     f"{r['end_to_end_ms']} | {ratio} |")  # fmt: skip
    if runs > 1:
        lines.append(f"\nMedian of {runs} runs (ratio: median and range over the runs, each against its own "
                     f"run's {ANCHOR}); every run's rows: speed-runs.jsonl.")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], out: Path) -> bool:
    """Each point's codec time as a ratio to the anchor (a dot at the median, a whisker over the runs' range), one
    panel per task, the anchor's 1x dashed -> ``out`` (PNG). False where no row has a ratio (nothing to draw)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks: dict[str, list[dict]] = {}
    anchor_ms = {r["task"]: r["codec_ms"] for r in rows if r["codec"] == ANCHOR}
    for r in rows:
        if r.get("ratio") is not None and r["codec"] != ANCHOR:
            tasks.setdefault(r["task"], []).append(r)
    if not tasks:
        return False
    height = max(len(v) for v in tasks.values())
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 1.0 + 0.42 * height), dpi=120, squeeze=False)
    for ax, (task, pts) in zip(axes[0], tasks.items(), strict=True):
        for y, r in enumerate(pts):
            lo, hi = r.get("ratio_range") or (r["ratio"], r["ratio"])
            colour = f"C{sorted({p['codec'] for p in pts}).index(r['codec']) % 10}"
            ax.plot([lo, hi], [y, y], "-", color=colour, lw=2, alpha=0.5)
            ax.plot(r["ratio"], y, "o", color=colour, ms=5)
            ax.annotate(f"{r['codec_ms']} ms", (hi, y), xytext=(4, 0), textcoords="offset points", va="center",
                        fontsize=7)  # fmt: skip
        ax.set_yticks(range(len(pts)), [f"{r['codec']} {r['param']:g}" for r in pts], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(1.0, color="k", ls="--", lw=1)
        ax.set_xlim(0, max(1.15, max((r.get("ratio_range") or [r["ratio"]])[-1] for r in pts) * 1.25))
        ax.set_xlabel(f"codec encode + decode / {ANCHOR}'s, same run")
        ax.set_title(f"{task} ({ANCHOR}: {anchor_ms[task]} ms)", fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return True


def report(every: list[dict], meta: dict, out: Path) -> tuple[list[dict], str]:
    """Every run's rows -> speed.json, speed-runs.jsonl, speed.md and speed.png in ``out``; -> the summary rows and
    the Markdown table."""
    rows = summarise(every)
    markdown = table(rows, len({r["run"] for r in every}))  # both before anything is written
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "speed.json", json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    atomic_write_text(out / "speed-runs.jsonl", "".join(json.dumps(r) + "\n" for r in every))
    atomic_write_text(out / "speed.md", markdown)
    plot(rows, out / "speed.png")
    return rows, markdown


def _read(path: Path, parse):
    try:
        return parse(path.read_text())
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"speed.py: cannot read {path}: {e}") from None


def _report_only(out: Path) -> int:
    """``--report-only``: the table, the JSON (its ``meta`` kept) and the plot again from ``out``'s runs."""
    runs, summary = out / "speed-runs.jsonl", out / "speed.json"
    every = _read(runs, lambda text: [json.loads(line) for line in text.splitlines() if line.strip()])
    if not every or any(not isinstance(r, dict) or "run" not in r for r in every):
        raise SystemExit(f"speed.py: {runs} holds no measured runs")
    meta = _read(summary, lambda text: json.loads(text)["meta"]) if summary.is_file() else {}
    try:
        markdown = report(every, meta, out)[1]
    except (KeyError, TypeError, ValueError) as e:  # rows that are not speed.py's: raised before any write
        raise SystemExit(f"speed.py: {runs} is not a speed.py measurement ({type(e).__name__}: {e})") from None
    print(markdown, end="")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/coco-val212"), help="COCO folder with images/")
    ap.add_argument("--images", type=int, default=20, help="number of images (default: %(default)s)")
    ap.add_argument("--codecs", default=",".join(POINTS), help="codec=param pairs or names (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the detector (default: %(default)s)")
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="passes over the images; per image and step the fastest counts (default: %(default)s)",
    )
    ap.add_argument(
        "--tasks",
        default="yolov5n-coco",
        help="comma-separated task networks, side by side in one run (default: %(default)s)",
    )
    ap.add_argument("--checkpoint", help="mutual codec: this checkpoint instead of the zoo's (mutualfc train export)")
    ap.add_argument(
        "--runs",
        type=int,
        default=1,
        help="whole measurements in a row; each row reports the median of the runs (default: %(default)s)",
    )
    ap.add_argument("--out-dir", default=str(ROOT / "results"), help="where results go (default: results/)")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: re-write speed.md, speed.json and speed.png from --out-dir's speed-runs.jsonl",
    )
    args = ap.parse_args()
    if args.report_only:
        return _report_only(Path(args.out_dir))
    if args.runs < 1 or args.repeat < 1:
        ap.error("--runs and --repeat must be at least 1")
    torch.set_num_threads(args.threads)
    ds = CocoDataset(Path(args.data) / "images").subset(args.images)
    images = [load_image(r.path) for r in ds.records]
    points = []  # (task, name, param, codec)
    for task, spec in ((create_task(t), c) for t in args.tasks.split(",") for c in args.codecs.split(",")):
        name, _, p = spec.partition("=")
        param = float(p) if p else POINTS.get(name, 0)
        codec = create_codec(
            name, task, **({"checkpoint": args.checkpoint} if args.checkpoint and name.startswith("mutual") else {})
        )
        codec.decode(codec.encode(codec.prepare(images[0]), param))  # warm-up (caches, thread pools), not counted
        points.append((task, name, param, codec))
    every = []  # every run's rows
    for k in range(args.runs):
        every += [dict(row, run=k + 1) for row in with_ratios(measure(points, images, args.repeat))]
        print(f"run {k + 1}/{args.runs} done", flush=True)
    meta = {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__,
            "repeat": args.repeat, "runs": args.runs,
            "statistic": "mean over images of the fastest of `repeat` passes; with runs > 1, the median of the runs",
            "passes": "each pass times every codec in turn",
            "ratio": f"codec_ms / {ANCHOR}'s in the same run"}  # fmt: skip
    rows, markdown = report(every, meta, Path(args.out_dir))
    for row in rows:
        print(json.dumps(row), flush=True)
    print(markdown, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
