"""What the commands read, checked before anything heavy is imported: files and folders expanded, image ids, output
names, and per-file error handling (``--skip-errors``)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from mutualfc.errors import MutualFCError

T = TypeVar("T")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
BITSTREAM_SUFFIXES = (".mfc",)


def expand(items: Iterable[str], suffixes: tuple[str, ...], what: str) -> list[Path]:
    """Files as given and folders as their files with one of ``suffixes`` (sorted); a missing path or an empty
    selection is a one-line error naming it."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in suffixes)
            if not found:
                raise MutualFCError(f"{p}: no {what} in this folder ({', '.join(suffixes)})")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise MutualFCError(f"{what} not found: {p}")
    if not out:
        raise MutualFCError(f"no {what} given")
    return out


def image_ids(paths: list[Path]) -> list[int]:
    """One numbering rule for every command: the file stems when all are numbers and distinct (COCO file names),
    else 1..N in the order given."""
    stems = [p.stem for p in paths]
    if all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [int(s) for s in stems]
    return list(range(1, len(paths) + 1))


def outputs(paths: list[Path], out_dir: str | Path, suffix: str) -> list[Path]:
    """``out_dir/<stem><suffix>`` for each input; refuses inputs whose stems collide (one would overwrite the
    other)."""
    seen: dict[str, Path] = {}
    for p in paths:
        if p.stem in seen:
            raise MutualFCError(
                f"{seen[p.stem]} and {p} would both be written to {Path(out_dir) / (p.stem + suffix)}; "
                "rename one or encode them into different --out-dir folders"
            )
        seen[p.stem] = p
    return [Path(out_dir) / (p.stem + suffix) for p in paths]


def unreadable_images(paths: list[Path]) -> list[tuple[Path, str]]:
    """The images whose header Pillow cannot read, each with the reason: checked up front (headers only, fast), so
    that a folder's bad files are all named at once rather than the first one after minutes of work."""
    from PIL import Image, UnidentifiedImageError

    bad = []
    for p in paths:
        try:
            with Image.open(p) as im:
                if im.width < 1 or im.height < 1:
                    bad.append((p, f"{im.width}x{im.height} image"))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            bad.append((p, str(e).replace(str(p), "").strip(" :'") or type(e).__name__))
        except Image.DecompressionBombError:
            pass  # load_image gives the full explanation when the file's turn comes
    return bad


class Batch:
    """Runs one step per input file. A failing file is a one-line error naming it; with ``skip_errors`` the batch
    goes on, each skipped file is reported, and ``exit_code`` is 1 at the end."""

    def __init__(self, skip_errors: bool):
        self.skip_errors, self.skipped = skip_errors, 0

    def run(self, path: Path, step: Callable[[], T]) -> T | None:
        try:
            return step()
        except (MutualFCError, OSError, ValueError) as e:
            msg = str(e) if str(path) in str(e) else f"{path}: {e}"
            if not self.skip_errors:
                raise MutualFCError(msg) from None
            self.skipped += 1
            print(f"mutualfc: skipped {msg}", file=sys.stderr)
            return None

    def readable(self, paths: list[Path]) -> list[Path]:
        """``paths`` less the images whose headers cannot be read: all of them named in one error, or with
        ``skip_errors`` each reported and skipped."""
        bad = unreadable_images(paths)
        if bad and not self.skip_errors:
            listed = "; ".join(f"{p}: {why}" for p, why in bad)
            raise MutualFCError(f"{len(bad)} of {len(paths)} images cannot be read: {listed}")
        for p, why in bad:
            self.skipped += 1
            print(f"mutualfc: skipped {p}: {why}", file=sys.stderr)
        skip = {p for p, _ in bad}
        return [p for p in paths if p not in skip]

    @property
    def exit_code(self) -> int:
        if self.skipped:
            print(f"mutualfc: {self.skipped} file(s) skipped", file=sys.stderr)
        return 1 if self.skipped else 0
