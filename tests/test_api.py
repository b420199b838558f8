"""The README's Python quickstart runs as written, and the top-level API names resolve lazily."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart() -> str:
    match = re.search(r"## Python quickstart\n\n```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert match, "README has no Python quickstart block"
    return match.group(1)


@pytest.mark.slow
def test_the_readme_quickstart_runs_and_trains(tmp_path):
    namespace: dict = {}
    import os

    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(quickstart(), "README quickstart", "exec"), namespace)
    finally:
        os.chdir(here)
    history = namespace["result"].history
    assert len(history) == 2 and history[-1]["test_loss"] < history[0]["test_loss"] < 200
    assert tuple(namespace["images"].shape) == (16, 784)
    assert (tmp_path / "runs" / "quickstart" / "checkpoint.pt").is_file()
    assert namespace["saved_config"] == namespace["config"]
    assert namespace["codes"].shape == (200, 20)
    detector = namespace["detector"]
    assert detector.predict(namespace["test_x"][1000:1400]).mean() < 0.15  # near its 5 % false-positive rate
    assert detector.predict(1 - namespace["test_x"][:100]).mean() > 0.9  # negatives of digits are flagged


def test_importing_vaelab_does_not_import_torch():
    """The command line's help starts fast: the package's names load on first use."""
    code = "import sys, vaelab; assert 'torch' not in sys.modules; vaelab.ModelSpec; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"


def test_the_api_names_resolve():
    import vaelab

    for name in vaelab.__all__:
        assert getattr(vaelab, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        vaelab.nonsense
