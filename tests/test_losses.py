"""Tests for the cprfl_zoo.losses package: its names and its imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import cprfl_zoo.losses
from cprfl_zoo.losses import asymmetric, single_label


def test_every_name_is_importable_from_the_package():
    assert cprfl_zoo.losses.__all__ == [
        "UNKNOWN_TARGET",
        "ASLSingleLabel",
        "AsymmetricLoss",
        "asymmetric_loss",
    ]
    for module in (asymmetric, single_label):
        for name in module.__all__:
            assert getattr(cprfl_zoo.losses, name) is getattr(module, name)
    assert cprfl_zoo.losses.Reduction is asymmetric.Reduction


# --- import isolation -----------------------------------------------------------------------


def test_import_does_not_load_open_clip():
    code = textwrap.dedent(
        """
        import sys
        import cprfl_zoo.losses
        assert "open_clip" not in sys.modules, "cprfl_zoo.losses imported open_clip"
        from cprfl_zoo import ASLSingleLabel, AsymmetricLoss
        assert "open_clip" not in sys.modules, "from cprfl_zoo import AsymmetricLoss: open_clip"
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
