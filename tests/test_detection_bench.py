"""bench/ood.py --quick: every statistic on every pair of its synthetic sets, in one table, in seconds."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "ood.py"


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
    assert len(rows) == 6 * 6 + 4  # squares -> bars; bars -> squares, noise, constant, flipped (all, asymmetric); 8-bit
    assert (tmp_path / "ood.json").exists() and (tmp_path / "model-squares" / "checkpoint.pt").exists()
