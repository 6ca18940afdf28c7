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


def add_decoder_options(p: argparse.ArgumentParser) -> None:
    """What a decoder may need besides the container: a user's checkpoint."""
    p.add_argument(
        "--checkpoint", help="learned codecs: use this checkpoint instead of the zoo's (mutualfc train export)"
    )


def add_codec_options(p: argparse.ArgumentParser) -> None:
    """Encoder settings (and the decoder's)."""
    add_decoder_options(p)
    p.add_argument(
        "--residual",
        choices=["auto", "on", "off"],
        help="mutual codec: the finest level's residual stream; default: the model's schedule, e.g. 'off' below "
        "quality 6 (the finest level is predicted from the decoded "
        "base alone: at low rates the base's bits buy more accuracy) and 'on' from 6 (measured trade-off, "
        "codecs.learned.RESIDUAL_FROM); 'auto' sends it for an image only when its bits buy more accuracy than the "
        "rate-distortion trade-off the model was trained for, 'on' always, 'off' never; given explicitly, it holds "
        "at every quality",
    )
    p.add_argument(
        "--residual-rd",
        type=float,
        metavar="ERROR_PER_BIT",
        help="mutual codec: where the residual stream is sent, a kept cell carries it only if it removes at least "
        "this much squared error (the codec's feature space) per estimated bit; 0 = every kept cell (default: "
        "0.25 where the schedule sends it, codecs.learned.RESIDUAL_RD; 0 with an explicit '--residual on')",
    )
    p.add_argument(
        "--skip-below",
        type=float,
        metavar="OBJECTNESS",
        help="learned codecs: stride-32 cells where the detector, run on the original features, predicts no "
        "objectness above this value are skipped: they cost one mask bit each and decode to the mean features; "
        "0 codes every cell (default: a schedule falling with quality, 0.3 up to quality 2, geometrically to 0.1 at "
        "quality 5 and above, then to 0.02 at quality 8; given explicitly, it holds at every quality)",
    )
    p.add_argument("--preset", help="x265 preset for the HEVC anchors (default: medium)")
    p.add_argument("--vvc-encoder", help="path to vvencapp or VTM EncoderApp for the VVC anchors (default: PATH)")
    p.add_argument("--vvc-config", help="VTM encoder config file (e.g. cfg/encoder_intra_vtm.cfg); VTM only")
    p.add_argument(
        "--vvc-preset",
        choices=["faster", "fast", "medium", "slow", "slower"],
        help="vvencapp preset for the VVC anchors (default: medium, the reference; fast is several times "
        "faster at a few percent more rate)",
    )


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="cpu",
        help="where the task network runs: cpu, cuda or cuda:N (default: %(default)s); entropy coding "
        "always runs on the CPU, where it is exact",
    )


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def add_batch(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--batch",
        type=positive_int,
        default=8,
        metavar="N",
        help="run the task network on up to N images at once, grouped by input shape (default: %(default)s); "
        "the results are identical to --batch 1, which is slower per image but holds one image in memory",
    )


def add_exif(p: argparse.ArgumentParser, default: str = "on") -> None:
    p.add_argument(
        "--exif-transpose",
        choices=["on", "off"],
        default=default,
        help="apply the EXIF orientation of the images (phone photos stored sideways are seen upright; "
        "default: %(default)s; COCO evaluation with --annotations always uses the stored pixel order, "
        "which its boxes refer to)",
    )


def add_skip_errors(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--skip-errors",
        action="store_true",
        help="report an unreadable input file and go on with the others; the exit status is then 1",
    )


CODEC_OPTIONS = (
    "checkpoint", "residual", "residual_rd", "skip_below", "preset", "vvc_encoder", "vvc_config", "vvc_preset"
)  # fmt: skip


def codec_options(args) -> dict:
    """The codec constructor options a command was given (decoders get only ``checkpoint``)."""
    return {k: getattr(args, k) for k in CODEC_OPTIONS if getattr(args, k, None) is not None}


def load_task(args, name: str | None = None):
    """The task network the command names (or ``name``, with its default weights), on ``--device``; one-line error
    for a device that is not there."""
    import torch

    from mutualfc.tasks import create_task

    device = getattr(args, "device", "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MutualFCError(f"--device {device}: no CUDA device is available here (torch {torch.__version__})")
    try:
        if name is not None and name != args.task:
            return create_task(name).to(device)
        return create_task(args.task, weights=args.weights).to(device)
    except RuntimeError as e:
        raise MutualFCError(f"--device {device}: {str(e).splitlines()[0]}") from None


def parse_params(text: str | None, default: tuple) -> list[float]:
    if not text:
        return [float(x) for x in default]
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MutualFCError(f"--param must be a comma-separated list of numbers, got {text!r}") from None


def progress(args) -> bool:
    return not getattr(args, "quiet", False)
