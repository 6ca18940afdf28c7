"""Conformance streams: small containers covering every codec and coding path, with the SHA-256 of what decoding
them must give. The decoded features (and images) are normative: every machine, kernel set and thread count must
reproduce them bit for bit. Detections come from the task network's floating-point back half, so they are recorded
as a summary (boxes at score >= 0.25, rounded) for a looser check.

    python -m mutualfc.testing.conformance --write tests/conformance   # make the streams (on a change of format)
    python -m mutualfc.testing.conformance --check tests/conformance   # decode them here and compare
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from mutualfc.codecs import create_codec
from mutualfc.errors import MutualFCError
from mutualfc.images import load_image
from mutualfc.io import atomic_write_bytes, atomic_write_text
from mutualfc.pipeline import Decoder
from mutualfc.tasks import create_task
from mutualfc.tasks.base import FeatureSet
from mutualfc.testing import four_level
from mutualfc.zoo import ZOO

ROOT = Path(__file__).resolve().parents[3]
HAS_YOLOX_CODECS = ("mutual", "yolox-nano-coco") in ZOO
EXAMPLES = ROOT / "examples" / "coco-mini" / "images"
MANIFEST = "manifest.json"

# name, codec, parameter, codec options, image index, crop (rows, cols) or None; the task network is yolov5n-coco
# unless the options name one ("task"); a "checkpoint" option names a codec file in the conformance folder (the
# four-level test codec: random weights, ``testing.four_level``), whose streams record decoded features only
_FOUR = {"task": four_level.TASK, "checkpoint": four_level.CHECKPOINT}
_RESIDUAL_SKIP = {"residual": "on", "skip_below": 0.9}
CASES: tuple[tuple[str, str, float, dict, int, tuple[int, int] | None], ...] = (
    ("mutual-q0", "mutual", 0, {}, 0, (192, 256)),
    ("mutual-q1", "mutual", 1, {}, 1, (192, 256)),
    ("mutual-q2.5-fractional", "mutual", 2.5, {}, 2, (192, 256)),
    ("mutual-q3.1-fractional", "mutual", 3.1, {}, 3, (160, 224)),
    ("mutual-q4", "mutual", 4, {}, 4, (256, 192)),
    ("mutual-q5.75-fractional", "mutual", 5.75, {}, 0, (256, 256)),
    ("mutual-q6", "mutual", 6, {}, 1, (256, 320)),
    ("mutual-q7", "mutual", 7, {}, 2, (224, 288)),
    ("mutual-q7.5-fidelity", "mutual", 7.5, {}, 3, (224, 224)),
    ("mutual-q7.9-tier-rd-residual", "mutual", 7.9, {}, 0, (224, 288)),
    ("mutual-q8-fidelity", "mutual", 8, {}, 4, (256, 256)),
    ("mutual-q4-residual-on", "mutual", 4, {"residual": "on"}, 0, (192, 256)),
    ("mutual-q6-residual-auto", "mutual", 6, {"residual": "auto"}, 1, (192, 256)),
    ("mutual-q3-nothing-skipped", "mutual", 3, {"skip_below": 0}, 2, (128, 160)),
    ("mutual-q3-everything-skipped", "mutual", 3, {"skip_below": 0.999}, 3, (128, 160)),
    ("mutual-q4-odd-size", "mutual", 4, {}, 4, (97, 131)),
    ("mutual-q4-portrait", "mutual", 4, {}, 0, (300, 120)),
    ("mutual-q4-landscape", "mutual", 4, {}, 1, (120, 300)),
    ("mutual-q5-full-image", "mutual", 5, {}, 2, None),
    ("mutual-fast-q1", "mutual-fast", 1, {}, 2, (192, 256)),
    ("mutual-fast-q4", "mutual-fast", 4, {}, 3, (256, 192)),
    ("mutual-fast-q6.5-residual", "mutual-fast", 6.5, {}, 4, (224, 288)),
    ("mutual-fast-q7.75-fidelity", "mutual-fast", 7.75, {}, 0, (256, 256)),
    ("mutual-fast-q4-odd-size", "mutual-fast", 4, {}, 1, (97, 131)),
    ("separate-q0", "separate", 0, {}, 3, (192, 256)),
    ("separate-q4", "separate", 4, {}, 4, (192, 256)),
    ("separate-q7", "separate", 7, {}, 0, (160, 224)),
    ("separate-q4-odd-size", "separate", 4, {}, 1, (97, 131)),
    ("separate-q2-nothing-skipped", "separate", 2, {"skip_below": 0}, 2, (128, 160)),
    ("hevc-feature-qp30", "hevc-feature", 30, {}, 3, (192, 256)),
    ("hevc-image-qp37", "hevc-image", 37, {}, 4, (97, 131)),
    ("jpeg-q50", "jpeg", 50, {}, 0, (97, 131)),
    ("webp-q50", "webp", 50, {}, 1, (97, 131)),
    # four levels (P2-P5): strips whose short side the R-CNN resize brings to 50 rows, so P5 is 2 x 42 cells
    ("four-level-mutual-q2-residual-skipped-cells", "mutual", 2, _FOUR | _RESIDUAL_SKIP, 3, (24, 640)),
    ("four-level-mutual-q1.5-fractional", "mutual", 1.5, _FOUR, 2, (24, 640)),
    ("four-level-mutual-q3.5-fidelity", "mutual", 3.5, _FOUR | {"skip_below": 0.97}, 3, (24, 640)),
    ("yolox-hevc-feature-qp30", "hevc-feature", 30, {"task": "yolox-nano-coco"}, 2, (192, 256)),
    ("yolox-jpeg-q50", "jpeg", 50, {"task": "yolox-nano-coco"}, 3, (97, 131)),
    *(
        (f"yolox-{c}-q{q:g}{tag}", c, q, {"task": "yolox-nano-coco", **o}, i, crop)
        for c, q, o, tag, i, crop in (
            ("mutual", 1, {}, "", 0, (192, 256)),
            ("mutual", 4, {}, "", 1, (256, 192)),
            ("mutual", 5.5, {}, "-fractional-residual", 2, (224, 288)),
            ("mutual", 6.5, {}, "-fidelity-above-the-cap", 0, (160, 224)),
            ("mutual", 7.75, {}, "-fidelity", 3, (224, 224)),
            ("mutual", 4, {"skip_below": 0}, "-nothing-skipped", 4, (97, 131)),
            ("separate", 3, {}, "", 0, (160, 224)),
            ("mutual-fast", 2, {}, "", 1, (192, 256)),
            ("mutual-fast", 4, {}, "-residual", 2, (256, 192)),
            ("mutual-fast", 7.75, {}, "-fidelity", 4, (224, 224)),
        )
        if HAS_YOLOX_CODECS
    ),
)


def digest(decoded) -> str:
    """SHA-256 of the decoded levels (float32 bytes, level after level) or of the decoded image (uint8 RGB)."""
    h = hashlib.sha256()
    if isinstance(decoded, FeatureSet):
        for name, t in decoded.levels.items():
            h.update(name.encode())
            h.update(np.ascontiguousarray(t.numpy(), dtype="<f4").tobytes())
    else:
        h.update(np.ascontiguousarray(decoded, dtype=np.uint8).tobytes())
    return h.hexdigest()


def summary(detections) -> list[list]:
    """The boxes at score >= 0.25: category id, score (4 decimals), box (1 decimal)."""
    keep = detections.scores >= 0.25
    return [[int(c), round(float(s), 4), [round(float(v), 1) for v in b]]
            for b, s, c in zip(detections.boxes[keep], detections.scores[keep], detections.category_ids[keep],
                               strict=True)]  # fmt: skip


def _tasks(names, encoding: bool = False) -> dict:
    """The task networks by name; the four-level one with its random weights to encode, without weights to decode
    (decoding features needs only its levels)."""

    def build(n):
        if n != four_level.TASK:
            return create_task(n)
        return four_level.random_weight_task() if encoding else create_task(n, pretrained=False)

    return {n: build(n) for n in sorted(set(names))}


def _own_codec(folder: Path, codec_name: str, task, options: dict, encoding: bool = False):
    """The codec of a case whose options name a checkpoint in ``folder`` (encoder options only when ``encoding``)."""
    path = folder / options["checkpoint"]
    if encoding and options["checkpoint"] == four_level.CHECKPOINT and not path.is_file():
        four_level.build_checkpoint(path)
    opts = {k: v for k, v in options.items() if encoding and k not in ("task", "checkpoint")}
    return create_codec(codec_name, task, checkpoint=str(path), **opts)


def write(folder: Path, only_new: bool = False) -> dict:
    """Encode every case to ``folder`` and record what decoding must give; ``only_new``: keep the cases already in
    the manifest as they are and add the others."""
    old = json.loads((folder / MANIFEST).read_text()) if only_new and (folder / MANIFEST).is_file() else {}
    todo = [c for c in CASES if c[0] not in old]
    names = ["yolov5n-coco", *(c[3].get("task", "yolov5n-coco") for c in todo)]
    tasks, decoding = _tasks(names, encoding=True), _tasks(names)
    images = [load_image(p) for p in sorted(EXAMPLES.glob("*.jpg"))]
    decoder, manifest = Decoder(tasks["yolov5n-coco"], tasks=tasks), dict(old)
    for name, codec_name, param, options, index, crop in todo:
        image = images[index] if crop is None else images[index][: crop[0], : crop[1]]
        task = tasks[options.get("task", "yolov5n-coco")]
        if "checkpoint" in options:
            codec = _own_codec(folder, codec_name, task, options, encoding=True)
        else:
            codec = create_codec(codec_name, task, **{k: v for k, v in options.items() if k != "task"})
        data = codec.encode(codec.prepare(image), param)
        atomic_write_bytes(folder / f"{name}.mfc", data)
        if "checkpoint" in options:  # decoded as ``check`` does it: features only, the task without weights
            task = decoding[options["task"]]
            out = Decoder(task, codecs={codec_name: _own_codec(folder, codec_name, task, options)}).decode_payload(data)
            dets = None
        else:
            out = decoder.decode(data)
            dets = summary(out.detections)
        manifest[name] = {"file": f"{name}.mfc", "codec": codec_name, "param": param, "options": options,
                          "bytes": len(data), "sha256_container": hashlib.sha256(data).hexdigest(),
                          "sha256_decoded": digest(out.features if out.features is not None else out.image),
                          "detections": dets}  # fmt: skip
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return manifest


def check(folder: Path, detections: bool = True) -> list[str]:
    """Decode every stream of ``folder``; -> one line per difference from its manifest (empty: conformant)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    tasks = _tasks(["yolov5n-coco", *(m["options"].get("task", "yolov5n-coco") for m in manifest.values())])
    decoder, problems = Decoder(tasks["yolov5n-coco"], tasks=tasks), []
    for name, want in manifest.items():
        data, options = (folder / want["file"]).read_bytes(), want["options"]
        if "checkpoint" in options:  # a codec file of the folder: decoded features only
            task = tasks[options["task"]]
            own = Decoder(task, codecs={want["codec"]: _own_codec(folder, want["codec"], task, options)})
            out = own.decode_payload(data)
        else:
            out = decoder.decode(data)
        got = digest(out.features if out.features is not None else out.image)
        if got != want["sha256_decoded"]:
            problems.append(f"{name}: decoded SHA-256 {got[:16]}... differs from {want['sha256_decoded'][:16]}...")
        if detections and want["detections"] is not None and not _close(summary(out.detections), want["detections"]):
            problems.append(f"{name}: detections differ from the recorded ones")
    return problems


def reencode(folder: Path) -> list[str]:
    """Encode every case of ``folder``'s manifest again; -> one line per container that differs from the recorded
    one. The encoder's float analysis may round differently on another CPU, so this is a check of an encoder change
    on the machine that wrote the streams, not a conformance requirement (decoding is)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    cases = {c[0]: c for c in CASES}
    tasks = _tasks(["yolov5n-coco", *(m["options"].get("task", "yolov5n-coco") for m in manifest.values())], True)
    images = [load_image(p) for p in sorted(EXAMPLES.glob("*.jpg"))]
    problems = []
    for name, want in manifest.items():
        if name not in cases:
            problems.append(f"{name}: no such case in this release")
            continue
        _, codec_name, param, options, index, crop = cases[name]
        image = images[index] if crop is None else images[index][: crop[0], : crop[1]]
        task = tasks[options.get("task", "yolov5n-coco")]
        if "checkpoint" in options:
            codec = _own_codec(folder, codec_name, task, options, encoding=True)
        else:
            codec = create_codec(codec_name, task, **{k: v for k, v in options.items() if k != "task"})
        got = hashlib.sha256(codec.encode(codec.prepare(image), param)).hexdigest()
        if got != want["sha256_container"]:
            was = want["sha256_container"][:16]
            problems.append(f"{name}: re-encoded container {got[:16]}... differs from {was}...")
    return problems


def _close(a: list, b: list) -> bool:
    """Same boxes to the floating-point back half's rounding (scores within 1e-3, boxes within 0.5 pixel)."""
    if len(a) != len(b):
        return False
    return all(ca == cb and abs(sa - sb) <= 1e-3 and max(abs(x - y) for x, y in zip(ba, bb, strict=True)) <= 0.5
               for (ca, sa, ba), (cb, sb, bb) in zip(a, b, strict=True))  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", metavar="FOLDER", help="encode the conformance streams into FOLDER")
    group.add_argument("--check", metavar="FOLDER", help="decode FOLDER's streams and compare with its manifest")
    group.add_argument(
        "--reencode",
        metavar="FOLDER",
        help="encode FOLDER's cases again and compare the containers (an encoder change's check on "
        "the machine that wrote them; the float analysis may round differently elsewhere)",
    )
    ap.add_argument("--features-only", action="store_true", help="with --check: only the normative decoded values")
    ap.add_argument("--only-new", action="store_true", help="with --write: add the cases not in the manifest yet")
    args = ap.parse_args()
    try:
        if args.write:
            Path(args.write).mkdir(parents=True, exist_ok=True)
            print(f"{len(write(Path(args.write), args.only_new))} streams in {args.write}")
            return 0
        if args.reencode:
            problems = reencode(Path(args.reencode))
            print("\n".join(problems) if problems else f"every container of {args.reencode} re-encodes identically")
            return 1 if problems else 0
        problems = check(Path(args.check), detections=not args.features_only)
    except MutualFCError as e:  # missing weights, an unreadable manifest: one line, not a traceback
        print(f"mutualfc.testing.conformance: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(problems) if problems else f"conformant: every stream of {args.check} decodes as recorded")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
