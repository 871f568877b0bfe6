"""GPU checks: run where CUDA is available (CI has none; they are run on a lent GPU)."""

from __future__ import annotations

import pytest
import torch
from test_vsi import reference_logits, rel_err

from cprfl_zoo import AsymmetricLoss, create_cprfl

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

HEAD = {"embed_dim": 256, "num_heads": 8, "head_dim": 64, "mlp_hidden_dim": 256}


def _model(backbone: str = "test_resnet", classes: int = 20, **kwargs):
    torch.manual_seed(0)
    names = [f"class {i}" for i in range(classes)]
    return create_cprfl(
        backbone,
        names,
        torch.randn(classes, 64),
        pretrained=False,
        **{**HEAD, **kwargs},
    ).cuda()


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize(("backbone", "layout"), [("test_resnet", "NCHW"), ("test_vit", "NLC")])
def test_cuda_fp32_equals_naive_form(backbone, layout):
    model = _model(backbone, drop_rate=0.0).eval()
    x = torch.randn(4, 3, 160, 160, device="cuda")
    ours = model(x)
    ref = reference_logits(model, x, layout)
    assert rel_err(ours, ref) < 1e-5
    params = [p for p in model.parameters() if p.requires_grad]
    g1 = torch.autograd.grad(ours.sum(), params, allow_unused=True)
    g2 = torch.autograd.grad(ref.sum(), params, allow_unused=True)
    for a, b in zip(g1, g2, strict=True):
        if a is not None:
            assert rel_err(a, b) < 1e-4


def test_cuda_bf16_training_step_is_finite():
    model = _model().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = AsymmetricLoss(gamma_pos=0, gamma_neg=4, clip=0.05, reduction="mean")
    x = torch.randn(8, 3, 160, 160, device="cuda")
    y = (torch.rand(8, 20, device="cuda") < 0.2).float()
    for _ in range(3):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_cuda_inductor_compile_matches_eager():
    model = _model().eval()
    x = torch.randn(4, 3, 160, 160, device="cuda")
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-3, atol=1e-3)


def test_cuda_ten_thousand_classes_train_step():
    torch.cuda.reset_peak_memory_stats()
    model = _model(classes=10_000, **{"embed_dim": 2048, "head_dim": 512, "mlp_hidden_dim": 2048})
    x = torch.randn(4, 3, 160, 160, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(x)
    logits.float().sum().backward()
    assert logits.shape == (4, 10_000)
    peak_gib = torch.cuda.max_memory_allocated() / 2**30
    print(f"10,000 classes, batch 4, d=2048: peak {peak_gib:.2f} GiB")
    assert peak_gib < 40


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_cuda_deploy_matches_the_model_in_every_dtype(dtype):
    model = _model(drop_rate=0.0).eval().to(dtype)
    x = torch.randn(2, 3, 96, 96, device="cuda", dtype=dtype)
    with torch.no_grad():
        deployed = model.deploy()
        assert all(t.device.type == "cuda" for t in deployed.state_dict().values())
        got, expected = deployed(x), model(x)
    tol = {torch.float32: 1e-4, torch.float64: 1e-10}.get(dtype, 5e-2)
    torch.testing.assert_close(got.double(), expected.double(), rtol=tol, atol=tol)
    assert deployed.thresholds.dtype == torch.float32


# ---------------------------------------------------------------------- deploy, export, predict
DEVICE = "cuda"


def test_cuda_deploy_matches_the_eval_model_on_the_gpu():
    model = _model(drop_rate=0.0).eval()
    deployed = model.deploy()
    where = {t.device.type for t in [*deployed.parameters(), *deployed.buffers()]}
    assert where == {torch.device(DEVICE).type}, f"deploy() left tensors on {where}"
    x = torch.randn(3, 3, 96, 96, device=DEVICE)
    with torch.no_grad():
        assert rel_err(deployed(x), model(x)) < 1e-5


def test_cuda_model_exports_to_onnx_with_the_same_logits(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from cprfl_zoo.export import export_onnx

    model = _model(drop_rate=0.0).eval()
    path = export_onnx(model, tmp_path / "model.onnx", input_size=(3, 64, 64))
    x = torch.randn(2, 3, 64, 64)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        expected = model(x.to(DEVICE)).cpu()
    assert rel_err(torch.from_numpy(logits), expected) < 1e-4


def test_cuda_predict_and_evaluate_commands_match_the_cpu(tmp_path, capsys):
    import json

    from PIL import Image

    from cprfl_zoo.cli import main

    model = _model(drop_rate=0.0).eval()
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 64, 64), crop_pct=1.0)
    saved = model.cpu().save_pretrained(tmp_path / "model")
    g = torch.Generator().manual_seed(0)
    lines = []
    for i in range(4):
        pixels = (torch.rand(48, 56, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(tmp_path / f"img{i}.png")
        lines.append(f"img{i}.png {i} {i + 5}")
    (tmp_path / "val.txt").write_text("\n".join(lines) + "\n")
    probs = {}
    for device in ("cpu", DEVICE):
        out = tmp_path / f"preds-{device}.jsonl"
        argv = ["predict", str(saved), *(str(tmp_path / f"img{i}.png") for i in range(4))]
        argv += ["--device", device, "--workers", "0", "--no-progress", "--threshold", "0"]
        assert main([*argv, "--output", str(out)]) == 0, capsys.readouterr().err
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        by_class = [dict(zip(r["indices"], r["probabilities"], strict=True)) for r in rows]
        probs[device] = torch.tensor([[p[c] for c in range(20)] for p in by_class])
        metrics = tmp_path / f"metrics-{device}.json"
        argv = ["evaluate", str(saved), str(tmp_path / "val.txt"), "--images", str(tmp_path)]
        argv += ["--device", device, "--workers", "0", "--output", str(metrics)]
        assert main(argv) == 0, capsys.readouterr().err
    assert rel_err(probs[DEVICE], probs["cpu"]) < 1e-4
    cpu_map = json.loads((tmp_path / "metrics-cpu.json").read_text())["metrics"]["mAP"]
    gpu_map = json.loads((tmp_path / f"metrics-{DEVICE}.json").read_text())["metrics"]["mAP"]
    assert gpu_map == pytest.approx(cpu_map, abs=1e-3)
