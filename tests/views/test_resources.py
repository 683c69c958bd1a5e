"""What the server keeps loaded stays out of the garbage collector's way while pages run: a full
collection over a loaded model held the GIL 0.7-1.2 s, stalling every answer being decoded."""

from __future__ import annotations

import gc
import tomllib
from pathlib import Path

from views.support.resources import settled

ROOT = Path(__file__).resolve().parents[2]


def test_streamlit_does_not_collect_all_garbage_after_every_script_run() -> None:
    options = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert options["runner"]["postScriptGC"] is False


def test_a_loaded_resource_is_frozen_out_of_the_collectors_scans() -> None:
    gc.unfreeze()
    try:
        loaded = [[number] for number in range(20_000)]  # stands for a model's many objects
        assert settled(loaded) is loaded
        assert gc.get_freeze_count() >= 20_000  # a full collection no longer walks them
    finally:
        gc.unfreeze()
