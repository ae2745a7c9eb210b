#!/usr/bin/python3
"""Heatmap of one head's attention weights, for `attnlab weights --png`.

Usage: /usr/bin/python3 reports/heatmap.py SPEC.json
SPEC.json (written by the CLI): {"weights": "slice.npy" ([Lq, Lk] float32),
"png": "out.png", "keys": [Lk labels], "queries": [Lq labels], "title": "..."}

Rows are queries, columns keys; colour is the weight (0..row max). Token
labels are drawn when there are at most 64 of them on an axis.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MAX_LABELS = 64


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    w = np.load(spec["weights"])
    lq, lk = w.shape
    keys, queries = spec["keys"], spec["queries"]
    width = min(16.0, 2.5 + 0.28 * lk)
    height = min(16.0, 2.0 + 0.28 * lq)
    fig, ax = plt.subplots(figsize=(max(width, 4.0), max(height, 3.0)))
    im = ax.imshow(w, cmap="viridis", aspect="auto", interpolation="nearest", vmin=0.0)
    if lk <= MAX_LABELS:
        ax.set_xticks(range(lk))
        ax.set_xticklabels(keys, rotation=90, fontsize=8)
    if lq <= MAX_LABELS:
        ax.set_yticks(range(lq))
        ax.set_yticklabels(queries, fontsize=8)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    ax.set_title(spec.get("title", "attention weights"), fontsize=10)
    fig.colorbar(im, ax=ax, label="weight")
    fig.tight_layout()
    fig.savefig(spec["png"], dpi=100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
