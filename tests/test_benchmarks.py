"""benchmarks/run_all.py: assembling rows, ratios, the table and the JSON, with fake benchmarks."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import run_all  # noqa: E402


def _fake_module(name: str, run) -> types.ModuleType:
    module = types.ModuleType(name)
    module.run = run
    return module


def _fake_summary(rows: list[dict]) -> list[dict]:
    return [
        run_all.ratio_row("fake", r["case"], "ours", "other", r["ours_s"], r["other_s"])
        for r in rows
    ]


def test_run_benchmarks_passes_only_accepted_options_and_summarizes():
    calls = {}

    def run_cpu_only(quick=False):
        calls["cpu_only"] = {"quick": quick}
        return [{"case": "a", "ours_s": 0.5, "other_s": 1.5}]

    def run_full(quick=False, device="cpu", dtype="float32"):
        calls["full"] = {"quick": quick, "device": device, "dtype": dtype}
        return [{"case": "b", "ours_s": 2.0, "other_s": 1.0}]

    modules = {"m1": _fake_module("m1", run_cpu_only), "m2": _fake_module("m2", run_full)}
    modules["m2"].format_rows = lambda rows: f"TABLE of {len(rows)} row(s)"
    benches = [
        run_all.Benchmark("one", "m1", _fake_summary, "first"),
        run_all.Benchmark("two", "m2", _fake_summary, "second"),
    ]
    messages = []
    out = run_all.run_benchmarks(
        benches, quick=True, device="cpu", dtype="float32", load=modules.__getitem__,
        log=messages.append,
    )  # fmt: skip
    assert "TABLE of 1 row(s)" in messages
    assert messages[0] == "[run_all] one: first ..."
    assert calls == {
        "cpu_only": {"quick": True},
        "full": {"quick": True, "device": "cpu", "dtype": "float32"},
    }
    assert out["results"]["one"]["rows"] == [{"case": "a", "ours_s": 0.5, "other_s": 1.5}]
    assert out["results"]["two"]["error"] is None
    assert out["results"]["two"]["elapsed_s"] >= 0
    ratios = [r["time_ratio"] for r in out["summary"]]
    assert ratios == [pytest.approx(3.0), pytest.approx(0.5)]


def test_failing_benchmark_is_recorded_and_the_others_still_run():
    def broken(quick=False):
        raise RuntimeError("out of memory in case 3")

    def fine(quick=False):
        return [{"case": "x", "ours_s": 1.0, "other_s": 4.0}]

    modules = {"bad": _fake_module("bad", broken), "good": _fake_module("good", fine)}
    benches = [
        run_all.Benchmark("bad", "bad", _fake_summary, ""),
        run_all.Benchmark("good", "good", _fake_summary, ""),
    ]
    out = run_all.run_benchmarks(
        benches, quick=False, device="cpu", dtype="float32", load=modules.__getitem__, log=None
    )
    assert out["results"]["bad"]["error"] == "RuntimeError: out of memory in case 3"
    assert "Traceback" in out["results"]["bad"]["traceback"]
    assert out["results"]["good"]["rows"] == [{"case": "x", "ours_s": 1.0, "other_s": 4.0}]
    failed = out["summary"][0]
    assert failed["bench"] == "bad" and failed["time_ratio"] is None
    assert "out of memory in case 3" in failed["note"]
    assert out["summary"][1]["time_ratio"] == pytest.approx(4.0)


def test_cpu_only_benchmark_refuses_another_device():
    def cpu_only(quick=False):
        return []

    with pytest.raises(ValueError, match="runs on the CPU only, not on 'cuda'"):
        run_all.call_run(cpu_only, quick=True, device="cuda", dtype="bfloat16")


def test_summarizers_compute_other_over_ours():
    head = run_all.summarize_head(
        [
            {"impl": "cprfl", "batch": 4, "v": 196, "classes": 80, "time_s": 0.1, "peak_mib": 10},
            {"impl": "naive", "batch": 4, "v": 196, "classes": 80, "time_s": 0.3, "peak_mib": 40},
            {"impl": "cprfl", "batch": 1, "v": 196, "classes": 10000, "time_s": 1.0, "peak_mib": 5},
            {"impl": "naive", "batch": 1, "v": 196, "classes": 10000, "skipped": "needs ~30 GiB"},
        ]
    )
    assert head[0]["time_ratio"] == pytest.approx(3.0) and head[0]["mem_ratio"] == 4.0
    assert head[1]["time_ratio"] is None and head[1]["note"] == "needs ~30 GiB"

    step = run_all.summarize_train_step(
        [
            {"mode": "cached", "backbone": "r", "img_size": 448, "batch": 2, "classes": 80,
             "time_s": 2.0, "text_context": 0},
            {"mode": "official-style", "backbone": "r", "img_size": 448, "batch": 2,
             "classes": 80, "time_s": 6.6, "text_context": 77},
        ]
    )  # fmt: skip
    assert len(step) == 1 and step[0]["other"] == "official-style"
    assert step[0]["time_ratio"] == pytest.approx(3.3) and "77" in step[0]["note"]

    asl = run_all.summarize_asl(
        [{"setting": "s", "batch": 64, "classes": 80, "ours_ms": 2.0, "ref_ms": 3.0,
          "ours_peak_bytes": 100, "ref_peak_bytes": 250}]
    )  # fmt: skip
    assert asl[0]["time_ratio"] == pytest.approx(1.5) and asl[0]["mem_ratio"] == 2.5

    create = run_all.summarize_create(
        [
            {"case": "embeddings given", "backbone": "r", "classes": 80, "time_s": 4.0},
            {"case": "cache miss", "backbone": "r", "classes": 80, "time_s": 18.0},
            {"case": "cache hit", "backbone": "r", "classes": 80, "time_s": 4.5},
        ]
    )
    assert [r["other"] for r in create] == ["cache miss", "embeddings given"]
    assert create[0]["time_ratio"] == pytest.approx(4.0)
    assert create[1]["time_ratio"] == pytest.approx(4.0 / 4.5)

    text = run_all.summarize_text_encode(
        [
            {"pass": "encode", "context": 77, "time_s": 0.8},
            {"pass": "encode", "context": 9, "time_s": 0.1},
        ]
    )
    assert text[0]["ours"] == "context 9" and text[0]["time_ratio"] == pytest.approx(8.0)


def test_format_summary_shows_ratios_notes_and_previous_run():
    now = [
        run_all.ratio_row("head", "C=80", "cprfl", "naive", 0.002, 0.005, mem_ratio=3.0),
        run_all.ratio_row("head", "C=10,000", "cprfl", "naive", None, None, note="skipped: big"),
    ]
    before = [run_all.ratio_row("head", "C=80", "cprfl", "naive", 0.002, 0.004)]
    text = run_all.format_summary(now, before)
    lines = text.splitlines()
    assert lines[0].split() == [
        "bench", "case", "ours", "vs", "ours", "other", "time", "×", "mem", "×", "before"
    ]  # fmt: skip
    assert "2.50x" in lines[2] and "3.00x" in lines[2] and lines[2].rstrip().endswith("2.00x")
    assert "2.0 ms" in lines[2] and "5.0 ms" in lines[2]
    assert "head / C=10,000 / naive: skipped: big" in text
    assert "before" not in run_all.format_summary(now).splitlines()[0]


def test_write_report_is_atomic_json_with_timestamp_and_latest(tmp_path):
    report = {
        "schema": run_all.SCHEMA,
        "created": "2026-01-02T03:04:05+00:00",
        "env": {"torch": "x"},
        "results": {"fake": {"rows": [{"time_s": math.inf}], "error": None}},
        "summary": [run_all.ratio_row("fake", "c", "a", "b", 1.0, 2.0)],
    }
    stamped, latest = run_all.write_report(report, tmp_path / "results")
    assert stamped.name == "run_all-20260102T030405Z.json" and latest.name == "latest.json"
    assert json.loads(stamped.read_text()) == json.loads(latest.read_text())
    loaded = json.loads(latest.read_text())
    assert loaded["summary"][0]["time_ratio"] == 2.0
    assert loaded["results"]["fake"]["rows"][0]["time_s"] == math.inf
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [
        "latest.json",
        "run_all-20260102T030405Z.json",
    ]


def test_write_json_atomic_keeps_the_old_file_when_serialising_fails(tmp_path):
    path = tmp_path / "latest.json"
    path.write_text('{"old": true}')
    with pytest.raises(TypeError, match="keys must be"):
        run_all.write_json_atomic(path, {"bad": {(1, 2): 3}})
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["latest.json"]


def test_main_runs_only_the_chosen_benchmark_and_writes_json(tmp_path, monkeypatch, capsys):
    def run(quick=False, device="cpu"):
        return [{"case": f"quick={quick} {device}", "ours_s": 1.0, "other_s": 2.5}]

    monkeypatch.setitem(sys.modules, "fake_bench_mod", _fake_module("fake_bench_mod", run))
    monkeypatch.setattr(
        run_all,
        "BENCHMARKS",
        (
            run_all.Benchmark("fake", "fake_bench_mod", _fake_summary, "a fake"),
            run_all.Benchmark("other", "not_a_module_xyz", _fake_summary, "never run"),
        ),
    )
    report = run_all.main(
        ["--quick", "--device", "cpu", "--only", "fake", "--out-dir", str(tmp_path)]
    )
    assert list(report["results"]) == ["fake"]
    assert report["args"] == {"quick": True, "device": "cpu", "dtype": "float32", "only": ["fake"]}
    assert report["env"]["torch_threads"] >= 1 and report["env"]["cpu_model"]
    saved = json.loads((tmp_path / "latest.json").read_text())
    assert saved["summary"][0]["case"] == "quick=True cpu"
    assert saved["summary"][0]["time_ratio"] == pytest.approx(2.5)
    out = capsys.readouterr().out
    assert "2.50x" in out and "latest.json" in out

    with pytest.raises(SystemExit):
        run_all.main(["--only", "nonexistent", "--out-dir", str(tmp_path)])
    assert "invalid choice: 'nonexistent'" in capsys.readouterr().err


def test_summarize_deploy_pairs_deploy_with_eval():
    rows = [
        {"kind": "head", "impl": "deploy", "batch": 1, "v": 196, "classes": 10000,
         "time_s": 2.0, "deploy_s": 30.0},
        {"kind": "head", "impl": "eval", "batch": 1, "v": 196, "classes": 10000, "time_s": 9.0},
    ]  # fmt: skip
    (row,) = run_all.summarize_deploy(rows)
    assert row["ours"] == "deploy" and row["other"] == "eval"
    assert row["time_ratio"] == pytest.approx(4.5) and "30.00 s" in row["note"]
    assert "C=10,000" in row["case"]
    assert "deploy" in [b.name for b in run_all.BENCHMARKS]
