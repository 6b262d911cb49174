"""Render synthetic and real LArTPC events with the same event display, to compare them by eye.

    python docs/make_likeness.py [--shared ../shared/data]

Writes, beside this script:

- ``synth_events.png``: 8 synthetic events, 256 x 256 (``synth.lartpc_event([0, i])``, i < 8);
- ``real_events.png``: 8 real events, 256 x 256, collection plane (plane 2) of the LArCV tutorial
  files ``electron.root`` (events 0-3, single electrons) and ``proton.root`` (events 0-3, single
  protons);
- ``lartpc64.png``: the first 32 training images of the built-in ``lartpc64`` dataset (64 x 64
  centre-of-charge crops, regenerated here: event i of the file is ``lartpc_event([0, i])``).

Both 256 x 256 grids use ``pgen.display.event_grid`` with the same tile size, columns and colour
scale (``vmax`` fixed to the real grid's 99.5th percentile of non-zero values), so the colours
mean the same ADC counts in both. The real files have 5 mm pixels against the synthetic 3 mm,
so real events look smaller at the same image size. The real files come from ``--shared`` or
``$PGEN_SHARED_DATA`` (default ``../shared/data`` beside the repository) and are read with uproot.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BRANCH = "image2d_data_branch/_image_v/_image_v."


def real_events(shared: Path, name: str, entries: range, plane: int = 2) -> list[np.ndarray]:
    """Images [rows, cols] of one plane from a LArCV (larcv2) ROOT file."""
    import uproot

    tree = uproot.open(shared / "larcv" / f"{name}.root")["image2d_data_tree"]
    imgs = tree[BRANCH + "_img"].array(library="np", entry_start=entries.start, entry_stop=entries.stop)
    rows = tree[BRANCH + "_meta._row_count"].array(library="np", entry_start=entries.start, entry_stop=entries.stop)
    cols = tree[BRANCH + "_meta._col_count"].array(library="np", entry_start=entries.start, entry_stop=entries.stop)
    # flat float32 per projection, column-major
    return [np.asarray(img[plane]).reshape(int(c[plane]), int(r[plane])).T for img, r, c in zip(imgs, rows, cols)]


def main() -> None:
    from pgen.data import synth
    from pgen.data.builtin import LARTPC64
    from pgen.display import event_grid, save_png

    default = os.environ.get("PGEN_SHARED_DATA") or str(HERE.parent.parent / "shared" / "data")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=default, help="folder holding larcv/electron.root and larcv/proton.root")
    args = parser.parse_args()
    shared = Path(args.shared)
    if not (shared / "larcv" / "electron.root").is_file():
        raise SystemExit(f"{shared}/larcv/electron.root: not found; pass --shared or set PGEN_SHARED_DATA")

    real = np.stack(real_events(shared, "electron", range(4)) + real_events(shared, "proton", range(4)))
    nz = real[real > 0]
    vmax = float(np.percentile(nz, 99.5))
    fake = np.stack([synth.lartpc_event([0, i], size=256).image for i in range(8)])
    settings = dict(ncols=4, tile=256, vmax=vmax)
    save_png(event_grid(real, **settings), HERE / "real_events.png")
    save_png(event_grid(fake, **settings), HERE / "synth_events.png")
    crops = np.stack([synth.lartpc_event([LARTPC64["seed"], i], size=LARTPC64["size"], crop=LARTPC64["crop"]).image
                      for i in range(32)])
    save_png(event_grid(crops, ncols=8, tile=128), HERE / "lartpc64.png")

    def line(name, x):
        occ = (x > 0).reshape(len(x), -1).mean(axis=1) * 100
        v = x[x > 0]
        return (f"  {name:10s} occupancy {occ.min():.2f}-{occ.max():.2f}% (mean {occ.mean():.2f}%), "
                f"non-zero values median {np.median(v):.0f}, 90% {np.percentile(v, 90):.0f}, max {v.max():.0f}")

    print(f"wrote {HERE / 'real_events.png'}, {HERE / 'synth_events.png'}, {HERE / 'lartpc64.png'} (vmax {vmax:.0f})")
    print(line("real", real))
    print(line("synthetic", fake))


if __name__ == "__main__":
    main()
