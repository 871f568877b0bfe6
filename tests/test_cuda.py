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
