"""Every benchmark runs in its quick mode (tiny inputs, the same code path), so that a change
which breaks one fails the suite. Its figures are not judged here: `make bench` measures."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHES = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if not p.stem.startswith("_"))


def test_every_benchmark_is_listed_here_and_in_make_bench() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert BENCHES and all(f"bench/{name}.py" in makefile for name in BENCHES)


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHES)
def test_the_benchmark_runs_in_quick_mode_and_ends_with_its_figures(
    name: str, tiny_model_dir: Path
) -> None:
    # The tiny random model: the same code path in seconds (`make bench` uses the default one).
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "LRS_BASE_MODEL": str(tiny_model_dir)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{name}.py"), "--quick"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert isinstance(figures, dict)
    for key in ("ratio", "target"):
        assert isinstance(figures[key], int | float) and math.isfinite(figures[key]), figures
