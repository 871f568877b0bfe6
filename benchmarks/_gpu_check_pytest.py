"""``gpu_check.py``'s section 1: the CUDA tests through pytest in a subprocess, counted.

``tests/test_cuda.py`` holds the checks that need a GPU (equality with the naive form in fp32, a
bf16 step, ``torch.compile``, 10,000 classes, ``deploy()``, ONNX export and the prediction
commands on CUDA). Its module is skipped where no GPU is visible, so on the CPU the section
reports every test as skipped. The counts come from pytest's JUnit XML report, or, when pytest
was killed at the section's deadline before writing it, from its verbose output so far.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from _gpu_check_core import REPO, Context, python_command, run_command

TEST_FILES = ("tests/test_cuda.py",)
_VERBOSE_LINE = re.compile(r"^(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR)", re.MULTILINE)


def read_junit(path: Path) -> dict[str, Any]:
    """Counts and failing test ids of a pytest JUnit XML report (written by this run)."""
    root = ET.parse(path).getroot()  # the file pytest just wrote
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    failures: list[dict[str, str]] = []
    for case in root.iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                if child.tag != "skipped":
                    message = (child.get("message") or "").strip()
                    failures.append({"test": test_id, "outcome": outcome, "message": message[:500]})
                break
        counts[outcome] += 1
    return {"counts": counts, "failures": failures}


def read_verbose(output: str) -> dict[str, Any]:
    """Counts and failing test ids from ``pytest -v`` output (what ran before a kill)."""
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    failures = []
    for test_id, outcome in _VERBOSE_LINE.findall(output):
        counts[outcome.lower()] += 1
        if outcome in ("FAILED", "ERROR"):
            failures.append({"test": test_id, "outcome": outcome.lower(), "message": ""})
    return {"counts": counts, "failures": failures}


def run_pytest(ctx: Context, files: tuple[str, ...] = TEST_FILES) -> dict[str, Any]:
    """Section 1: run the CUDA tests; ``ok`` when none failed (all skipped is ``skipped``)."""
    report = ctx.work / "pytest.xml"
    cmd = python_command(
        "-m", "pytest", "-v", "-p", "no:cacheprovider", f"--junitxml={report}", *files
    )
    log_start = ctx.log_path.stat().st_size
    result = run_command(cmd, ctx.left(), ctx.log_path, cwd=REPO)
    out: dict[str, Any] = {"files": list(files), "command": result.as_dict()}
    if not report.is_file():
        with open(ctx.log_path, encoding="utf-8", errors="replace") as log:
            log.seek(log_start)
            out.update(read_verbose(log.read()))
        out["status"] = "timeout" if result.timed_out else "failed"
        return out
    out.update(read_junit(report))
    counts = out["counts"]
    if counts["failed"] or counts["error"] or result.returncode not in (0, 5):
        out["status"] = "failed"
    elif counts["passed"] == 0:
        out.update(status="skipped", reason="no test ran (no CUDA device visible)")
    else:
        out["status"] = "ok"
    return out
