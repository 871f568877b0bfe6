"""Tests for the cprfl_zoo.losses package: its names and its imports."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import cprfl_zoo.losses
from cprfl_zoo.losses import (
    asymmetric,
    distribution_balanced,
    logit_adjustment,
    prompt_anchor,
    single_label,
    two_way,
)


def test_every_name_is_importable_from_the_package():
    assert cprfl_zoo.losses.__all__ == [
        "ANCHOR_KINDS",
        "DB_LOSS_PRESETS",
        "UNKNOWN_TARGET",
        "ASLSingleLabel",
        "AsymmetricLoss",
        "DistributionBalancedLoss",
        "LogitAdjustedLoss",
        "LogitAdjustment",
        "PromptAnchorLoss",
        "TwoWayLoss",
        "adjust_logits",
        "asymmetric_loss",
        "logit_adjustment_offset",
        "prompt_anchor_loss",
        "two_way_loss",
    ]
    modules = (
        asymmetric,
        single_label,
        logit_adjustment,
        distribution_balanced,
        two_way,
        prompt_anchor,
    )
    assert sorted(n for m in modules for n in m.__all__) == sorted(cprfl_zoo.losses.__all__)
    for module in modules:
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


def test_loss_modules_import_only_torch_and_the_standard_library():
    # The package's own imports (cprfl_zoo/__init__) are another matter; the loss modules must
    # not pull in timm, open_clip or anything else, so that they stay usable on their own.
    allowed = {"torch", "math", "collections", "typing", "__future__"}
    for path in Path(asymmetric.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, f"{path.name} imports {roots - allowed}"
