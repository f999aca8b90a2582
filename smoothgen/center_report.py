"""What `smoothgen center` prints and draws for a pretrained detector or recogniser (smoothgen.pretrained):
each certificate in the output's own units — the IoU every attacked box keeps, the characters of a line
that may change — and a PNG of the clean and smoothed outputs (Kumar & Goldstein's Figure 3b)."""
from __future__ import annotations

import io
import math
import statistics
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from smoothgen.errors import ResultsFileError
from smoothgen.results import write_atomically


def _box_text(box: Sequence[float] | None) -> str:
    return "no box" if box is None else "(" + ", ".join(f"{v:.0f}" for v in box) + ")"


def print_readable(records: list[dict[str, Any]], kind: str, most: int = 20) -> None:
    """One line per certificate (the first `most`), then the medians a reader compares with the output's size.

    The guarantee is about the smoothed output: within eps_in of the input, the smoothed detector's box keeps
    IoU >= 1 - eps_out with the smoothed box printed here (not with the base model's clean box), and the
    smoothed reading changes by at most floor(eps_out) characters."""
    rows = sorted(records, key=lambda r: (r["idx"], r["eps_in"]))
    for r in rows[:most]:
        head = f"input {r['idx']:3d}  eps_in {r['eps_in']:.3g}: "
        if kind == "boxes":
            if r.get("iou_guaranteed") is None:
                print(head + f"abstained ({r.get('reason')}); clean box {_box_text(r.get('clean_box'))}")
            else:
                print(head + f"IoU >= {r['iou_guaranteed']:.2f} with the smoothed box guaranteed (eps_out {r['eps_out']:.3f}); "
                      f"smoothed box {_box_text(r['smoothed_box'])}, clean box {_box_text(r['clean_box'])}")
        else:
            clean = r.get("clean_text", "")
            if r.get("max_changed_characters") is None:
                print(head + f"abstained ({r.get('reason')}); clean {clean!r}")
            else:
                print(head + f"at most {r['max_changed_characters']} characters of the smoothed reading change "
                      f"({r['changed_share']:.0%} of {len(clean)}); smoothed {r.get('smoothed_text', '')!r}, clean {clean!r}")
    if len(rows) > most:
        print(f"... {len(rows) - most} more certificates in the results file")
    for eps in sorted({r["eps_in"] for r in rows}):
        ok = [r for r in rows if r["eps_in"] == eps and not r["abstained"]]
        if not ok:
            continue
        if kind == "boxes":
            iou = statistics.median(r["iou_guaranteed"] for r in ok)
            print(f"eps_in {eps:.3g}: median guaranteed IoU {iou:.2f} over {len(ok)} certified input{'s' if len(ok) != 1 else ''}")
        else:
            share = statistics.median(r["changed_share"] for r in ok)
            chars = statistics.median(r["max_changed_characters"] for r in ok)
            print(f"eps_in {eps:.3g}: at most {chars:g} characters change (median), {share:.0%} of the line, "
                  f"over {len(ok)} certified line{'s' if len(ok) != 1 else ''}")


def write_png(path: str, records: list[dict[str, Any]], x: np.ndarray, start: int, kind: str, eps_in: float,
              most: int = 24) -> None:
    """Draw the inputs with their clean (dashed) and smoothed (solid) outputs at `eps_in` into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rows = sorted((r for r in records if r["eps_in"] == eps_in), key=lambda r: r["idx"])[:most]
    if not rows:
        return
    if kind == "boxes":
        cols = min(6, len(rows))
        lines = math.ceil(len(rows) / cols)
        fig, axes = plt.subplots(lines, cols, figsize=(max(2.2 * cols, 4.0), 2.6 * lines + 0.4), squeeze=False)
    else:
        cols, lines = 1, len(rows)
        fig, axes = plt.subplots(lines, 1, figsize=(8, 1.2 * lines), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, r in zip(axes.ravel(), rows):
        image = np.asarray(x[r["idx"] - start], dtype=np.float32)
        picture = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        ax.imshow(np.clip(picture, 0, 1), cmap="gray" if image.shape[0] == 1 else None, vmin=0, vmax=1)
        if kind == "boxes":
            for box, style, colour in ((r.get("clean_box"), "--", "tab:blue"), (r.get("smoothed_box"), "-", "tab:red")):
                if box is not None:
                    ax.add_patch(Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False,
                                           linestyle=style, edgecolor=colour, linewidth=1.5))
            label = "abstained" if r.get("iou_guaranteed") is None else f"IoU >= {r['iou_guaranteed']:.2f}"
            ax.set_title(f"#{r['idx']}  {label}", fontsize=8)
        else:
            bound = ("abstained" if r.get("max_changed_characters") is None
                     else f"<= {r['max_changed_characters']} chars change")
            ax.set_title(f"#{r['idx']} {bound}\nclean:    {r.get('clean_text', '')}\nsmoothed: {r.get('smoothed_text', '')}",
                         fontsize=7, loc="left", family="monospace")
    fig.suptitle(f"clean (dashed) and smoothed (solid) boxes\neps_in = {eps_in:g}" if kind == "boxes"
                 else f"clean and smoothed recognitions, eps_in = {eps_in:g}", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    try:  # whole or not at all, as every file a run writes
        write_atomically(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))
    except OSError as exc:
        raise ResultsFileError(f"cannot write --png {path}: {exc.strerror or exc}") from exc
