"""Options the ``mutualfc`` commands share."""

from __future__ import annotations

import argparse

from mutualfc.errors import MutualFCError


# ---------------------------------------------------------------------------------------------------------
def add_task(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="yolov5n-coco", help="split task network (default: %(default)s)")
    p.add_argument(
        "--weights",
        help="detector weights file (state dict or upstream .pt); default: $MUTUALFC_WEIGHTS, $MUTUALFC_WEIGHTS_DIR, "
        "~/.cache/mutualfc/weights, then download",
    )


def add_dataset(p: argparse.ArgumentParser, annotations_required: bool = False) -> None:
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument(
        "--annotations",
        required=annotations_required,
        help="COCO instances JSON; only its listed images are used and image ids are taken from it",
    )
    p.add_argument("--limit", type=int, help="use only the first N images (sorted by image id)")


def add_codec_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint", help="learned codecs: use this checkpoint instead of the zoo's (mutualfc train export)"
    )
    p.add_argument(
        "--residual",
        choices=["auto", "on", "off"],
        help="mutual codec: the P3 residual stream; 'off' (default up to quality 7: P3 is predicted from the decoded "
        "base alone, the best trade-off measured; above 7 the default is 'on'), 'auto' sends it for an image only when "
        "its bits buy more accuracy than the rate-distortion trade-off the model was trained for, 'on' always (the "
        "highest accuracy); given explicitly, it holds at every quality",
    )
    p.add_argument(
        "--skip-below",
        type=float,
        metavar="OBJECTNESS",
        help="learned codecs: stride-32 cells where the detector, run on the original features, predicts no "
        "objectness above this value are skipped: they cost one mask bit each and decode to the mean features; "
        "0 codes every cell (default: 0.05, falling to 0.01 from quality 7 to 8; given explicitly, it holds at every "
        "quality)",
    )
    p.add_argument("--preset", help="x265 preset for the HEVC anchors (default: medium)")
    p.add_argument("--vvc-encoder", help="path to vvencapp or VTM EncoderApp for the VVC anchors (default: PATH)")
    p.add_argument("--vvc-config", help="VTM encoder config file (e.g. cfg/encoder_intra_vtm.cfg); VTM only")
    p.add_argument("--vvc-preset", choices=["faster", "fast", "medium", "slow", "slower"],
                   help="vvencapp preset for the VVC anchors (default: medium, the reference; fast is several times "
                   "faster at a few percent more rate)")  # fmt: skip


def codec_options(args) -> dict:
    return {
        "preset": args.preset,
        "vvc_encoder": args.vvc_encoder,
        "vvc_config": args.vvc_config,
        "vvc_preset": args.vvc_preset,
        "checkpoint": args.checkpoint,
        "residual": getattr(args, "residual", None),
        "skip_below": getattr(args, "skip_below", None),
    }


def parse_params(text: str | None, default: tuple) -> list[float]:
    if not text:
        return [float(x) for x in default]
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MutualFCError(f"--param must be a comma-separated list of numbers, got {text!r}") from None


def progress(args) -> bool:
    return not getattr(args, "quiet", False)
