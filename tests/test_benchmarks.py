"""benchmarks/run_all.py: assembling rows, ratios, the table and the JSON, with fake benchmarks."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import _gpu_check_core  # noqa: E402
import _gpu_check_pytest  # noqa: E402
import bench_head  # noqa: E402
import run_all  # noqa: E402

CUDA_TESTS = (Path(__file__).resolve().parent / "test_cuda.py").read_text()


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


# ---------------------------------------------------------------------- gpu_check.py
GPU_CHECK = BENCH_DIR / "gpu_check.py"

FAKE_OFFICIAL = {
    "config.py": "feature_d = 2048\nhead_num = 8\ndim_head = 512\nmlp_dim = 2048\n",
    "clip/clip.py": (
        "import torch\n\n\n"
        "def tokenize(texts, context_length=77):\n"
        "    out = torch.zeros(len(texts), context_length, dtype=torch.long)\n"
        "    for i, text in enumerate(texts):\n"
        "        ids = [len(w) % 97 + 1 for w in text.split()]\n"
        "        out[i, : len(ids)] = torch.tensor(ids)\n"
        "    return out\n"
    ),
    "clip/model.py": (
        "import torch\nfrom torch import nn\n\n\n"
        "class CLIP(nn.Module):\n"
        "    def __init__(self, embed_dim, image_resolution, vision_layers, vision_width,\n"
        "                 vision_patch_size, context_length, vocab_size, transformer_width,\n"
        "                 transformer_heads, transformer_layers):\n"
        "        super().__init__()\n"
        "        self.token_embedding = nn.Embedding(vocab_size, transformer_width)\n"
        "        self.text_projection = nn.Parameter(torch.randn(transformer_width, embed_dim))\n"
    ),
    "src/models/TF.py": (
        "from torch import nn\nfrom config import *\n\n\n"
        "class Transformer(nn.Module):\n"
        "    def __init__(self, dim):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(dim, dim)\n\n"
        "    def forward(self, x):\n"
        "        return self.fc(x)\n"
    ),
    # The official module's shape: config globals, `import clip`, torchvision's resnet101 with
    # the `pretrained` argument, prompts put on CUDA when one is visible, (score, attr) out.
    "src/models/build_model_TF.py": (
        "import torch\nimport torch.nn as nn\nimport torchvision.models as models\n"
        "from .TF import Transformer\nfrom config import *\n\nimport clip\n\n\n"
        "class MyModel(nn.Module):\n"
        "    def __init__(self, args, classnames, clip_model):\n"
        "        super().__init__()\n"
        "        r = models.resnet101(pretrained=False)\n"
        "        self.Backbone = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1,\n"
        "                                      r.layer2, r.layer3, r.layer4)\n"
        "        prompts = clip.tokenize([f'a photo of a {c}.' for c in classnames])\n"
        "        self.prompts = prompts.to('cuda' if torch.cuda.is_available() else 'cpu')\n"
        "        self.token_embedding = clip_model.token_embedding\n"
        "        self.text_projection = clip_model.text_projection\n"
        "        self.fc = nn.Linear(2048, feature_d)\n"
        "        self.label_emb = nn.Linear(1024, feature_d)\n"
        "        self.attention = Transformer(feature_d)\n\n"
        "    def forward(self, img):\n"
        "        text = self.token_embedding(self.prompts).mean(1) @ self.text_projection\n"
        "        attr = self.label_emb(text)\n"
        "        f = self.fc(self.Backbone(img).flatten(2).transpose(1, 2))\n"
        "        x = torch.cat([f, attr.expand(img.shape[0], -1, -1)], 1)\n"
        "        x = self.attention(x)[:, -attr.shape[0]:]\n"
        "        return (x * attr).sum(-1), attr\n"
    ),
}


def _fake_official(root: Path) -> Path:
    for rel, text in FAKE_OFFICIAL.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_gpu_check_tiny_on_the_cpu_writes_every_section(tmp_path):
    """The whole script end to end with tiny sizes (what the GPU run does, on the CPU)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH_DIR.parent), env.get("PYTHONPATH", "")])
    out = tmp_path / "results"
    cmd = [sys.executable, str(GPU_CHECK), "--tiny", "--device", "cpu", "--out-dir", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check-latest.json").read_text())
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 5 and names[-2:] == ["gpu_check-latest.json", "gpu_check-latest.md"]
    assert [n.rsplit(".", 1)[1] for n in names[:3]] == ["json", "log", "md"]
    assert report["schema"] == "cprfl_zoo.benchmarks.gpu_check/1"
    assert report["args"]["tiny"] and report["args"]["device"] == "cpu"
    assert report["env"]["torch"] == torch.__version__
    sections = report["sections"]
    assert list(sections) == ["pytest", "train", "torchrun", "official", "head"]
    assert all(s["elapsed_s"] >= 0 and "traceback" not in s for s in sections.values())

    tests = sections["pytest"]
    assert tests["status"] == "skipped" and tests["counts"]["failed"] == 0
    assert tests["counts"]["passed"] == 0  # the module is skipped without a GPU
    assert tests["counts"]["skipped"] >= len(re.findall(r"^def test_", CUDA_TESTS, re.M))

    train = sections["train"]
    assert train["status"] == "ok"
    sizes = _gpu_check_core.TINY
    steps = sizes.steps_per_epoch * sizes.epochs
    modes = {m["mode"]: m for m in train["modes"]}
    assert list(modes) == ["fp32", "bf16", "bf16+channels_last", "bf16+compile"]
    assert modes["bf16+compile"]["status"] == "skipped"
    for name in ("fp32", "bf16", "bf16+channels_last"):
        mode = modes[name]
        assert mode["status"] == "ok" and mode["steps"] == steps
        assert mode["images_per_s"] > 0 and mode["first_epoch_images_per_s"] > 0
        assert len(mode["losses"]) == steps and all(math.isfinite(v) for v in mode["losses"])
        # the per-step losses average to train.py's own epoch means
        per_epoch = [mode["losses"][i : i + sizes.steps_per_epoch] for i in (0, 2)]
        assert [sum(e) / len(e) for e in per_epoch] == pytest.approx(mode["epoch_losses"])
    resume = train["resume"]
    assert resume["status"] == "ok" and resume["model_equal"] and resume["ema_equal"]
    assert resume["losses_uninterrupted"] == resume["losses_resumed"]
    assert any("--max-steps" in flag for flag in train["missing_train_flags"])

    runs = {r["name"]: r for r in sections["torchrun"]["runs"]}
    assert sections["torchrun"]["status"] == "ok" and list(runs) == ["gloo-1proc", "gloo-2proc"]
    assert runs["gloo-2proc"]["checks"] == dict.fromkeys(
        ["all_ranks_reported", "world_size", "same_weights", "steps"], True
    )
    assert {r["backend"] for r in runs["gloo-2proc"]["ranks"].values()} == {"gloo"}

    assert sections["official"] == {
        "status": "skipped", "reason": "no --official-dir", "elapsed_s": pytest.approx(0, abs=1)
    }  # fmt: skip

    head = sections["head"]
    assert head["status"] == "ok"
    cases = {(r["batch"], r["classes"], r["impl"]): r for r in head["rows"]}
    assert set(cases) == {(b, c, i) for b, c in sizes.head_cases for i in bench_head.IMPLS}
    assert all(r["time_s"] > 0 and r["peak_mib"] >= 0 for r in cases.values())
    assert [(s["batch"], s["classes"]) for s in head["summary"]] == list(sizes.head_cases)
    assert all(s["vs_fastest_naive"] > 0 for s in head["summary"])

    markdown = (out / "gpu_check-latest.md").read_text()
    for title in ("1. CUDA tests", "2. examples/train.py", "3. train.py under torchrun",
                  "4. Training step", "5. The head"):  # fmt: skip
        assert f"## {title}" in markdown
    assert "| fp32 | ok |" in markdown and "| gloo-2proc | 2 | gloo | ok | True |" in markdown
    assert runs["gloo-1proc"]["note"].startswith("no process group")


def test_official_step_compare_imports_a_checkout_and_restores_modules(tmp_path, monkeypatch):
    import _gpu_check_step
    import _official

    sentinel = types.ModuleType("config")
    monkeypatch.setitem(sys.modules, "config", sentinel)
    official = _fake_official(tmp_path / "CPRFL")
    result = _gpu_check_step.run_step_compare(_gpu_check_core.TINY, "cpu", "float32", official)
    assert sys.modules["config"] is sentinel
    assert not [n for n in sys.modules if n in ("clip", "src") or n.startswith(("clip.", "src."))]
    assert result["status"] == "ok"
    rows = {r["impl"]: r for r in result["rows"]}
    assert list(rows) == ["official", "ours-cached"]
    for row in rows.values():
        assert row["logits_shape"] == [4, 8] and row["time_s"] > 0 and row["images_per_s"] > 0
    assert rows["official"]["official_over_this"] == 1.0
    # config.py's feature_d is overridden by the tiny sizes: fc is 2048 -> 32
    model = _official.build_official_model(
        official, ["cat"], model_sizes={"feature_d": 32}, clip_sizes={"transformer_width": 8}
    )
    assert model.model.fc.out_features == 32 and model.model.prompts.device.type == "cpu"

    assert _gpu_check_step.run_step_compare(_gpu_check_core.TINY, "cpu", "float32", None) == {
        "status": "skipped", "reason": "no --official-dir"
    }  # fmt: skip
    (official / "clip" / "model.py").unlink()
    with pytest.raises(FileNotFoundError, match=r"clip/model\.py not found; expected a checkout"):
        _official.build_official_model(official, ["cat"])


def test_run_sections_records_a_failing_section_and_keeps_the_later_ones_their_time(tmp_path):
    seen = {}

    def broken(ctx):
        raise RuntimeError("CUDA error: an illegal memory access")

    def fine(ctx):
        seen["left"] = ctx.left()
        return {"status": "ok", "value": 1}

    sections = [
        _gpu_check_core.Section("a", "breaks", broken, cap_s=100, floor_s=10),
        _gpu_check_core.Section("b", "fine", fine, cap_s=30, floor_s=10),
        _gpu_check_core.Section("c", "fine", fine, cap_s=30, floor_s=200),
    ]
    ctx = _gpu_check_core.Context("cpu", "float32", _gpu_check_core.TINY, tmp_path,
                                  tmp_path / "log", None, log=lambda m: None)  # fmt: skip
    out = _gpu_check_core.run_sections(sections, ctx, _gpu_check_core.Budget(420.0))
    assert out["a"]["status"] == "error" and "illegal memory access" in out["a"]["error"]
    assert "Traceback" in out["a"]["traceback"]
    assert out["b"] == {"status": "ok", "value": 1, "elapsed_s": pytest.approx(0, abs=1)}
    assert out["c"]["status"] == "ok" and 25 < seen["left"] <= 30  # its cap, not the budget's end
    # a budget too small for a section's start skips it by name
    out = _gpu_check_core.run_sections(sections[1:2], ctx, _gpu_check_core.Budget(2.0))
    assert out["b"]["status"] == "skipped" and out["b"]["reason"] == "time budget spent"


def test_read_junit_counts_outcomes_and_names_failures(tmp_path):
    path = tmp_path / "report.xml"
    path.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_cuda" name="test_a"/>'
        '<testcase classname="tests.test_cuda" name="test_b">'
        '<failure message="RuntimeError: Expected all tensors to be on the same device">'
        "tb</failure></testcase>"
        '<testcase classname="tests.test_cuda" name="test_c"><skipped message="no GPU"/>'
        "</testcase>"
        '<testcase classname="tests.test_cuda" name="test_d"><error message="fixture"/>'
        "</testcase></testsuite></testsuites>"
    )
    verbose = _gpu_check_pytest.read_verbose(
        "tests/test_cuda.py::test_a PASSED [ 50%]\ntests/test_cuda.py::test_b FAILED [100%]\n"
    )
    assert verbose["counts"] == {"passed": 1, "failed": 1, "error": 0, "skipped": 0}
    assert verbose["failures"][0]["test"] == "tests/test_cuda.py::test_b"
    result = _gpu_check_pytest.read_junit(path)
    assert result["counts"] == {"passed": 1, "failed": 1, "error": 1, "skipped": 1}
    assert result["failures"] == [
        {"test": "tests.test_cuda::test_b", "outcome": "failed",
         "message": "RuntimeError: Expected all tensors to be on the same device"},
        {"test": "tests.test_cuda::test_d", "outcome": "error", "message": "fixture"},
    ]  # fmt: skip
