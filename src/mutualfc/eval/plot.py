"""RD plots: accuracy against bpp (log x), one line per codec, the uncompressed accuracy as a dashed line."""

from __future__ import annotations

from pathlib import Path

from mutualfc.io import atomic_write_bytes


def plot_rd(records: list[dict], out: str | Path, metric: str = "map", title: str | None = None) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8), dpi=120)
    codecs: dict[str, list[dict]] = {}
    for r in records:
        codecs.setdefault(r["codec"], []).append(r)
    styles = ("o-", "s--", "^-.", "D:")  # a new line style every 10 colours: no two curves look alike
    for i, (name, pts) in enumerate(codecs.items()):
        if name == "none" or all(p.get("bpp") is None for p in pts):
            ax.axhline(pts[-1][metric], color="k", ls="--", lw=1, label=f"uncompressed ({pts[-1][metric]:.3f})")
            continue
        pts = sorted((p for p in pts if p.get("bpp") is not None), key=lambda p: p["bpp"])
        style = styles[(i // 10) % len(styles)]
        ax.plot([p["bpp"] for p in pts], [p[metric] for p in pts], style, ms=4, label=name, color=f"C{i % 10}")
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel of the original image")
    ax.set_ylabel({"map": "mAP@[.5:.95]", "map50": "mAP@.5"}.get(metric, metric))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
