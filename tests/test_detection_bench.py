"""bench/ood.py --quick: every statistic on every pair of its synthetic sets, in one table, in seconds."""

import importlib.util
import subprocess
import sys
from pathlib import Path

from vaelab.detection import STATISTICS

BENCH = Path(__file__).resolve().parents[1] / "bench" / "ood.py"


def bench_module():
    spec = importlib.util.spec_from_file_location("ood_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_prints_every_statistic_on_every_pair(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr
    rows = [
        line
        for line in completed.stdout.splitlines()
        if line.startswith("| ") and " -> " in line and "statistic" not in line
    ]
    # squares -> bars; bars -> squares, noise, constant, flipped (all, asymmetric): every statistic; then the 8-bit pair
    assert len(rows) == len(STATISTICS) * 6 + len(bench_module().EIGHT_BIT_STATISTICS)
    assert {row.split(" | ")[1] for row in rows} == set(STATISTICS)
    assert (tmp_path / "ood.json").exists() and (tmp_path / "model-squares" / "checkpoint.pt").exists()
