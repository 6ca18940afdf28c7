"""``mutualfc``: detect, encode/decode files, serve split inference, evaluate codecs on COCO, train, BD-rate and RD
plots. Each command module declares its own options (``register``) and imports heavy modules only when it runs."""

from __future__ import annotations

import argparse
import os
import sys

from mutualfc import __version__, cli
from mutualfc.errors import MutualFCError


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="mutualfc",
        description="Feature coding for machines: an edge device codes a vision network's split features into a "
        "bitstream, a server decodes them and finishes the task; evaluate codecs on COCO (mAP vs bpp).",
    )
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--version", action="version", version=f"mutualfc {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (cli.coding, cli.service, cli.commands, cli.complexity, cli.train):
        module.register(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # the reader of our output went away (e.g. `| head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except MutualFCError as e:
        print(f"mutualfc: error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"mutualfc: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mutualfc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
