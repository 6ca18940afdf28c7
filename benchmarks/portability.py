"""Portability matrix: streams encoded on one kernel set decode to the same bytes on every other.

For every image and every learned operating point of the task's zoo codecs (mutual and mutual-fast 0..8 and the
fidelity tiers 7.25, 7.5, 7.75; separate 0..7), the streams are encoded once with PyTorch's native kernels and once
with its generic ones (``ATEN_CPU_CAPABILITY=default``: what another CPU model, an ARM server or an older x86
computes); each set is then decoded in separate processes under native kernels with 1 and 2 threads and generic
kernels with 1 and 2 threads, and the SHA-256 of every decoded feature set (the normative output,
``mutualfc.testing.conformance.digest``) is compared across the decoders. Resumable: streams and digests already on
disk are kept. Writes results/portability.json and results/portability.md.

    python benchmarks/portability.py --data ../shared/data/coco-val212 --work /tmp/portability
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_MUTUAL = (*range(8), 7.25, 7.5, 7.75, 8)
POINTS = [(c, q) for c in ("mutual", "mutual-fast") for q in _MUTUAL] + [("separate", q) for q in range(8)]


def task_points(task: str) -> list[tuple[str, float]]:
    """The points of the codecs the zoo has a model of for ``task``."""
    from mutualfc.zoo import ZOO

    return [(c, q) for c, q in POINTS if (c, task) in ZOO]


ENCODERS = {"native": {}, "default": {"ATEN_CPU_CAPABILITY": "default"}}
DECODERS = {
    "native-2t": {"OMP_NUM_THREADS": "2"},
    "native-1t": {"OMP_NUM_THREADS": "1"},
    "default-2t": {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "2"},
    "default-1t": {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"},
}


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="file", mininterval=10, file=sys.stderr)


def encode_worker(data: Path, images: int, out: Path, points: list[tuple[str, float]], task_name: str) -> None:
    """Encode ``images`` images of ``data`` at every point into ``out/<codec>-q<q>/<stem>.mfc`` (skipping files
    already there)."""
    import torch

    from mutualfc.codecs import create_codec
    from mutualfc.eval.coco import CocoDataset
    from mutualfc.images import load_image
    from mutualfc.io import atomic_write_bytes
    from mutualfc.tasks import create_task

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    task = create_task(task_name)
    codecs = {name: create_codec(name, task) for name in {c for c, _ in points}}
    records = CocoDataset(data / "images").subset(images).records
    bar = _progress(len(records) * len(points), f"encode {out.name}")
    for r in records:
        todo = [(c, q) for c, q in points if not (out / f"{c}-q{q:g}" / f"{r.path.stem}.mfc").exists()]
        bar.update(len(points) - len(todo))
        if not todo:
            continue
        x = codecs["mutual" if "mutual" in codecs else todo[0][0]].prepare(load_image(r.path))
        for c, q in todo:
            atomic_write_bytes(out / f"{c}-q{q:g}" / f"{r.path.stem}.mfc", codecs[c].encode(x, q))
            bar.update(1)
    bar.close()


def decode_worker(streams: Path, out: Path, task_name: str) -> None:
    """Decode every stream under ``streams``; append ``{"file", "sha256"}`` lines to ``out`` (skipping files
    already there)."""
    import torch

    from mutualfc import bitstream
    from mutualfc.pipeline import Decoder
    from mutualfc.tasks import create_task
    from mutualfc.testing.conformance import digest

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    done = {json.loads(line)["file"] for line in out.read_text().splitlines()} if out.exists() else set()
    files = sorted(str(p.relative_to(streams)) for p in streams.rglob("*.mfc"))
    decoder = Decoder(create_task(task_name))
    bar = _progress(len(files), f"decode {out.stem}")
    bar.update(len(done))
    with out.open("a") as f:
        for name in files:
            if name in done:
                continue
            data = (streams / name).read_bytes()
            features = decoder.codec_for(bitstream.unpack(data)[0]).decode(data)
            f.write(json.dumps({"file": name, "sha256": digest(features)}) + "\n")
            f.flush()
            bar.update(1)
    bar.close()


def _run(args: list[str], env: dict[str, str], log: Path) -> None:
    """This script as a worker in a fresh process with ``env`` added (kernel choice is made at process start)."""
    full = os.environ | {"OMP_NUM_THREADS": "2"} | env
    with log.open("a") as f:
        subprocess.run([sys.executable, __file__, *args], env=full, stderr=f, stdout=f, check=True)


def compare(work: Path, points: list[tuple[str, float]]) -> dict:
    """-> per encoder and point: files, files whose digests differ between decoders."""
    rows = []
    for enc in ENCODERS:
        digests = {}
        for dec in DECODERS:
            path = work / f"{enc}-by-{dec}.jsonl"
            digests[dec] = {d["file"]: d["sha256"] for d in map(json.loads, path.read_text().splitlines())}
        files = sorted(set().union(*digests.values()))
        for codec, q in points:
            prefix = f"{codec}-q{q:g}/"
            mine = [f for f in files if f.startswith(prefix)]
            differ = [f for f in mine if len({digests[d].get(f) for d in DECODERS}) != 1]
            rows.append({"encoder": enc, "codec": codec, "quality": q, "files": len(mine), "differ": len(differ),
                         "examples": differ[:3]})  # fmt: skip
    cross = []  # the same image and point encoded on both kernel sets: do the streams themselves agree?
    for codec, q in points:
        d = work / "streams-native" / f"{codec}-q{q:g}"
        same = sum((work / "streams-default" / d.name / p.name).read_bytes() == p.read_bytes()
                   for p in d.glob("*.mfc"))  # fmt: skip
        cross.append({"codec": codec, "quality": q, "identical_streams": same, "files": len(list(d.glob("*.mfc")))})
    return {"rows": rows, "streams": cross}


def report(result: dict, meta: dict) -> str:
    task = meta.get("task", "yolov5n-coco")
    lines = [f"# Portability matrix: {task} ({meta['images']} images of {meta['data']})", "",
             "Streams encoded with each kernel set, decoded in separate processes under native and generic "
             "(`ATEN_CPU_CAPABILITY=default`) kernels with 1 and 2 threads; a file *differs* when the SHA-256 of "
             "its decoded features is not the same for all four decoders.", "",
             f"`{meta['command']}` ({meta['minutes']:.0f} min, torch {meta['torch']})", "",
             "| encoded with | codec | quality | files | decoded features differ |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in result["rows"]:
        lines.append(f"| {r['encoder']} | {r['codec']} | {r['quality']} | {r['files']} | {r['differ']} |")
    total = sum(r["files"] for r in result["rows"])
    differ = sum(r["differ"] for r in result["rows"])
    same = sum(r["identical_streams"] for r in result["streams"])
    n = sum(r["files"] for r in result["streams"])
    lines += ["", f"**{differ} of {total} decoded feature sets differ** between decoders "
              f"({total * len(DECODERS)} decodes).", "",
              f"Streams of the same image and point written by the two encoders are byte-identical for {same} of {n} "
              "(the encoder's float analysis and front half may round differently on another kernel set; each "
              "stream then decodes identically everywhere, which is the contract).", ""]  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="role")
    enc = sub.add_parser("encode-worker", help="(internal) encode in this process")
    enc.add_argument("--data", type=Path, required=True)
    enc.add_argument("--images", type=int, required=True)
    enc.add_argument("--out", type=Path, required=True)
    enc.add_argument("--task", default="yolov5n-coco")
    dec = sub.add_parser("decode-worker", help="(internal) decode in this process")
    dec.add_argument("--streams", type=Path, required=True)
    dec.add_argument("--out", type=Path, required=True)
    dec.add_argument("--task", default="yolov5n-coco")
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/coco-val212"), help="COCO folder with images/")
    ap.add_argument("--images", type=int, default=212, help="number of images (default: %(default)s)")
    ap.add_argument("--task", default="yolov5n-coco", help="task network whose zoo codecs code (default: %(default)s)")
    ap.add_argument("--work", default="/tmp/mutualfc-portability", help="streams and digests (resumable)")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes at a time (default: %(default)s)")
    ap.add_argument("--out-dir", default=str(ROOT / "results"), help="where results go (default: results/)")
    args = ap.parse_args()
    if args.role == "encode-worker":
        encode_worker(args.data, args.images, args.out, task_points(args.task), args.task)
        return 0
    if args.role == "decode-worker":
        decode_worker(args.streams, args.out, args.task)
        return 0
    work, t0 = Path(args.work), time.time()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "workers.log"
    print(f"workers log to {log}", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda e: _run(["encode-worker", "--data", args.data, "--images", str(args.images), "--out",
                                      str(work / f"streams-{e}"), "--task", args.task], ENCODERS[e], log),
                      ENCODERS))  # fmt: skip
        jobs = [(e, d) for e in ENCODERS for d in DECODERS]
        decode = ["decode-worker", "--streams", "{work}/streams-{0}", "--out", "{work}/{0}-by-{1}.jsonl", "--task",
                  args.task]  # fmt: skip
        list(pool.map(lambda ed: _run([a.format(*ed, work=work) for a in decode], DECODERS[ed[1]], log), jobs))
    import torch

    result = compare(work, task_points(args.task))
    meta = {"data": args.data, "images": args.images, "torch": torch.__version__, "minutes": (time.time() - t0) / 60,
            "command": "python benchmarks/portability.py" + (f" --images {args.images}" if args.images != 212 else "")
            + (f" --task {args.task}" if args.task != "yolov5n-coco" else ""), "task": args.task,
            "decoders": DECODERS, "encoders": ENCODERS}  # fmt: skip
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = "portability" if args.task == "yolov5n-coco" else f"portability-{args.task}"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta} | result, indent=1) + "\n")
    text = report(result, meta)
    (out / f"{stem}.md").write_text(text)
    print(text)
    return 1 if any(r["differ"] for r in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
