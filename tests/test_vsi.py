"""The prompt-only VSI equals the naive full self-attention form, values and gradients."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from cprfl_zoo import create_cprfl
from cprfl_zoo.vsi import VSI


def reference_tokens(backbone: torch.nn.Module, feats: torch.Tensor, layout: str) -> torch.Tensor:
    """Local tokens written out per layout, independently of cprfl_zoo.backbone."""
    if layout == "NCHW":
        b, c, h, w = feats.shape
        return feats.permute(0, 2, 3, 1).reshape(b, h * w, c)
    if layout == "NHWC":
        b, h, w, c = feats.shape
        return feats.reshape(b, h * w, c)
    return feats[:, backbone.num_prefix_tokens :]


def reference_logits(model: torch.nn.Module, x: torch.Tensor, layout: str) -> torch.Tensor:
    """CPRFL from the equations: full self-attention over [F; P] for every image, last C rows."""
    feats = reference_tokens(model.backbone, model.backbone.forward_features(x), layout)
    f = feats @ model.visual_proj.weight.T + model.visual_proj.bias
    pi = model.prompt_init.net
    p = (
        F.gelu(model.class_embeddings @ pi.fc1.weight.T + pi.fc1.bias) @ pi.fc2.weight.T
        + pi.fc2.bias
    )
    b, c = f.shape[0], p.shape[0]
    tokens = torch.cat([f, p.unsqueeze(0).repeat(b, 1, 1)], dim=1)  # (B, v + C, d)
    vsi = model.vsi
    n1 = F.layer_norm(tokens, (tokens.shape[-1],), vsi.norm1.weight, vsi.norm1.bias)
    heads, hd = vsi.attn.num_heads, vsi.attn.head_dim
    qkv = n1 @ vsi.attn.qkv.weight.T
    q, k, v = qkv.split(heads * hd, dim=-1)

    def split_heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, -1, heads, hd).permute(0, 2, 1, 3)

    q, k, v = split_heads(q), split_heads(k), split_heads(v)
    scores = (q @ k.transpose(-1, -2)) * hd**-0.5
    attn = torch.softmax(scores, dim=-1) @ v
    attn = attn.permute(0, 2, 1, 3).reshape(b, -1, heads * hd)
    y = attn @ vsi.attn.proj.weight.T + vsi.attn.proj.bias  # no residual
    n2 = F.layer_norm(y, (y.shape[-1],), vsi.norm2.weight, vsi.norm2.bias)
    z = F.gelu(n2 @ vsi.mlp.fc1.weight.T + vsi.mlp.fc1.bias) @ vsi.mlp.fc2.weight.T
    z = z + vsi.mlp.fc2.bias  # no residual
    refined = z[:, -c:]
    return (refined * p.unsqueeze(0)).sum(-1)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


BACKBONES = [
    ("test_resnet", "NCHW", {}),
    ("test_vit", "NLC", {}),
    ("test_vit2", "NLC", {}),
    ("test_convnext", "NCHW", {}),
    ("test_mambaout", "NHWC", {}),
    (
        "swin_tiny_patch4_window7_224",
        "NHWC",
        {
            "img_size": 64,
            # backbone arguments whose names clash with head arguments go in backbone_kwargs
            "backbone_kwargs": {
                "window_size": 2,
                "embed_dim": 16,
                "depths": (1, 1),
                "num_heads": (1, 1),
            },
        },
    ),
]


@pytest.mark.parametrize(("name", "layout", "bb_kwargs"), BACKBONES, ids=[b[0] for b in BACKBONES])
@pytest.mark.parametrize("batch", [1, 3])
def test_logits_and_all_gradients_equal_naive_form(name, layout, bb_kwargs, batch, tiny_head):
    torch.manual_seed(0)
    names = [f"class_{i}" for i in range(7)]
    model = create_cprfl(
        name,
        class_names=names,
        text_embeddings=torch.randn(7, 12),
        pretrained=False,
        drop_rate=0.0,
        **tiny_head,
        **bb_kwargs,
    ).eval()  # batch-norm statistics fixed; gradients still flow everywhere
    size = timm.data.resolve_model_data_config(model)["input_size"][1:]
    x = torch.randn(batch, 3, *size)
    ours = model(x)
    assert ours.shape == (batch, 7)
    params = [p for p in model.parameters() if p.requires_grad]
    g_ours = torch.autograd.grad((ours * torch.linspace(-1, 1, 7)).sum(), params, allow_unused=True)
    ref = reference_logits(model, x, layout)
    g_ref = torch.autograd.grad((ref * torch.linspace(-1, 1, 7)).sum(), params, allow_unused=True)
    assert rel_err(ours, ref) < 1e-5
    names_params = [n for n, p in model.named_parameters() if p.requires_grad]
    for pname, ga, gb in zip(names_params, g_ours, g_ref, strict=True):
        assert (ga is None) == (gb is None), pname
        if ga is not None:
            assert rel_err(ga, gb) < 1e-5, pname


def test_explicit_attention_path_equals_fused():
    """The matmul-softmax path (CUDA with wide heads, or TIMM_FUSED_ATTN=0) gives the same."""
    torch.manual_seed(0)
    vsi = VSI(dim=16, num_heads=2, head_dim=4, mlp_hidden_dim=8, drop_rate=0.0)
    tokens = torch.randn(3, 9, 16, requires_grad=True)
    prompts = torch.randn(4, 16, requires_grad=True)
    outs = []
    for fused in (True, False):
        vsi.attn.fused_attn = fused
        out = vsi(tokens, prompts)
        grads = torch.autograd.grad(out.square().sum(), [tokens, prompts, vsi.attn.qkv.weight])
        outs.append((out, *grads))
    for a, b in zip(*outs, strict=True):
        assert rel_err(a, b) < 1e-5


def test_prompt_side_is_computed_once_per_batch():
    """The prompt queries are batch-independent: an image's logits do not depend on its batch."""
    torch.manual_seed(0)
    vsi = VSI(dim=16, num_heads=2, head_dim=4, mlp_hidden_dim=8, drop_rate=0.0).eval()
    tokens, prompts = torch.randn(5, 9, 16), torch.randn(4, 16)
    full = vsi(tokens, prompts)
    one = vsi(tokens[2:3], prompts)
    torch.testing.assert_close(full[2:3], one, rtol=1e-5, atol=1e-6)
    assert full.shape == (5, 4, 16)


def test_vsi_dropout_only_in_training():
    torch.manual_seed(0)
    vsi = VSI(dim=16, num_heads=2, head_dim=4, mlp_hidden_dim=8, drop_rate=0.5)
    tokens, prompts = torch.randn(2, 9, 16), torch.randn(4, 16)
    vsi.eval()
    torch.testing.assert_close(vsi(tokens, prompts), vsi(tokens, prompts))
    vsi.train()
    assert not torch.allclose(vsi(tokens, prompts), vsi(tokens, prompts))


def test_attention_dropout_only_in_training():
    """attn_drop_rate acts on the attention weights in training only (both attention paths)."""
    torch.manual_seed(0)
    vsi = VSI(dim=16, num_heads=2, head_dim=4, mlp_hidden_dim=8, drop_rate=0.0, attn_drop_rate=0.5)
    tokens, prompts = torch.randn(2, 9, 16), torch.randn(4, 16)
    for fused in (True, False):
        vsi.attn.fused_attn = fused
        vsi.eval()
        reference = vsi(tokens, prompts)
        vsi.attn.attn_drop = 0.0
        torch.testing.assert_close(vsi(tokens, prompts), reference, rtol=0, atol=0)
        vsi.attn.attn_drop = 0.5
        vsi.train()
        assert not torch.allclose(vsi(tokens, prompts), reference)


@pytest.mark.parametrize(("num_heads", "head_dim"), [(1, 8), (2, 4), (4, 16), (3, 300)])
def test_explicit_attention_path_equals_fused_at_every_head_shape(num_heads, head_dim):
    """The matmul-softmax path runs on CUDA for wide heads; here it is forced on the CPU."""
    torch.manual_seed(num_heads)
    vsi = VSI(dim=24, num_heads=num_heads, head_dim=head_dim, mlp_hidden_dim=16, drop_rate=0.0)
    tokens, prompts = torch.randn(2, 7, 24, dtype=torch.float64), torch.randn(5, 24).double()
    vsi = vsi.double()
    outs = []
    for fused in (True, False):
        vsi.attn.fused_attn = fused
        outs.append(vsi(tokens, prompts))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)


def test_deploy_stays_finite_where_attention_logits_are_huge():
    """The deployed split softmax must shift by its running max (the log-sum-exp guard)."""
    from cprfl_zoo import create_cprfl

    torch.manual_seed(0)
    names = ["a", "b", "c"]
    model = create_cprfl(
        "test_resnet", names, torch.randn(3, 8), embed_dim=16, num_heads=2, head_dim=4,
        mlp_hidden_dim=8,
    ).eval()  # fmt: skip
    with torch.no_grad():
        model.vsi.attn.qkv.weight.mul_(300.0)  # scores of order 1e4: exp overflows without a shift
        x = torch.rand(2, 3, 32, 32)
        expected = model(x)
        got = model.deploy()(x)
    assert torch.isfinite(expected).all() and torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-3)
