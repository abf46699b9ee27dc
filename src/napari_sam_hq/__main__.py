"""``python -m napari_sam_hq``: napari with the SAM-HQ widget docked on a sample image."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m napari_sam_hq", description=__doc__)
    parser.add_argument("--sample", choices=["cells_2d", "cells_3d"], default="cells_2d")
    args = parser.parse_args(argv)

    import napari

    viewer = napari.Viewer(title="napari-sam-hq")
    viewer.open_sample("napari-sam-hq", args.sample)
    viewer.window.add_plugin_dock_widget("napari-sam-hq", "SAM-HQ")
    napari.run()


if __name__ == "__main__":
    main()
