#!/usr/bin/python3
"""Heatmap of one head's attention weights, for `attnlab weights --png`.

Usage: /usr/bin/python3 reports/heatmap.py SPEC.json
SPEC.json (written by the CLI): {"weights": "slice.npy" ([Lq, Lk] float32),
"png": "out.png", "keys": [Lk labels], "queries": [Lq labels], "title": "..."}

Rows are queries, columns keys; colour is the weight (0..row max). Token
labels are drawn when there are at most 64 of them on an axis.

The PNG is written to a uniquely named temporary file beside it and renamed
over it, so a failed write (missing directory, full disk) leaves a previous
PNG as it was. Errors are one line on stderr, never a traceback, and exit
with attnlab's codes: 1 unexpected (e.g. matplotlib missing), 2 a bad spec or
weights file, 3 the PNG could not be written.
"""
import json
import os
import sys
import tempfile

MAX_LABELS = 64
EXIT_FAILED, EXIT_USAGE, EXIT_IO = 1, 2, 3


class Error(Exception):
    """A failure with its exit code and one-line message."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def reason(e):
    """The OS's reason of an OSError, without Python's "[Errno N]" dressing."""
    return e.strerror or str(e)


def load_spec(path):
    try:
        with open(path) as f:
            spec = json.load(f)
    except OSError as e:
        raise Error(EXIT_USAGE, f"cannot read the spec {path}: {reason(e)}")
    except ValueError as e:
        raise Error(EXIT_USAGE, f"the spec {path} is not JSON: {e}")
    if not isinstance(spec, dict) or not isinstance(spec.get("weights"), str) or \
            not isinstance(spec.get("png"), str) or not spec["png"]:
        raise Error(EXIT_USAGE, f"the spec {path} lacks \"weights\" and \"png\" paths")
    return spec


def load_weights(np, path):
    try:
        w = np.load(path, allow_pickle=False)
    except OSError as e:
        raise Error(EXIT_USAGE, f"cannot read the weights {path}: {reason(e)}")
    except ValueError as e:
        raise Error(EXIT_USAGE, f"the weights {path} are not a .npy array: {e}")
    if w.ndim != 2:
        raise Error(EXIT_USAGE, f"the weights {path} have shape {w.shape}; want [Lq, Lk]")
    return w


def labels(spec, name, n):
    values = spec.get(name, [str(i) for i in range(n)])
    if not isinstance(values, list) or len(values) != n:
        count = len(values) if isinstance(values, list) else "no list of"
        raise Error(EXIT_USAGE, f"the spec's {name!r} has {count} labels; want {n}")
    return [str(v) for v in values]


def draw(plt, w, spec):
    lq, lk = w.shape
    keys, queries = labels(spec, "keys", lk), labels(spec, "queries", lq)
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
    return fig


def save_atomically(fig, png):
    """Writes the PNG beside `png` (through a symlink) and renames it over."""
    target = os.path.realpath(png)
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(target)[:200] + ".",
                                   suffix=".tmp", dir=os.path.dirname(target))
    except OSError as e:
        raise Error(EXIT_IO, f"cannot write {png}: {reason(e)}")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # what a plain open() would give, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
        os.replace(tmp, target)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise Error(EXIT_IO, f"cannot write {png}: {reason(e)}")
        raise


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return EXIT_USAGE
    try:
        spec = load_spec(argv[1])
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            import numpy as np
        except ImportError as e:
            raise Error(EXIT_FAILED, f"{e} (numpy and matplotlib live under /usr/bin/python3)")
        w = load_weights(np, spec["weights"])
        save_atomically(draw(plt, w, spec), spec["png"])
    except Error as e:
        print(f"heatmap.py: error: {e}", file=sys.stderr)
        return e.code
    except Exception as e:  # noqa: BLE001 - anything unforeseen: still one line
        print(f"heatmap.py: error: unexpected {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
