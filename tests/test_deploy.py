"""The deploy module: same logits as the model, from an independent reference, eval-only."""

from __future__ import annotations

import copy
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import torch.nn.functional as F
from tiny_clip import TINY_NAME, register_tiny_clip, save_tiny_checkpoint

import cprfl_zoo.deploy
from cprfl_zoo import create_cprfl
from cprfl_zoo.deploy import DeployedCPRFL
from cprfl_zoo.model import CPRFL

SIZES = {"test_resnet": 64, "test_vit": 160}


def make(backbone: str, classes: int, tiny_head: dict, seed: int = 0, **kwargs) -> CPRFL:
    torch.manual_seed(seed)
    names = [f"class {i}" for i in range(classes)]
    return CPRFL(backbone, names, torch.randn(classes, 16), **tiny_head, **kwargs)


def images(backbone: str, batch: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    size = SIZES[backbone]
    return torch.randn(batch, 3, size, size, generator=g)


def reference_logits(model: CPRFL, x: torch.Tensor) -> torch.Tensor:
    """CPRFL from the equations in float64: full attention over [F; P] per image, last C rows."""
    m = copy.deepcopy(model).double().eval()
    feats = m.backbone.forward_features(x.double())
    if feats.ndim == 4:  # NCHW feature map
        feats = feats.flatten(2).transpose(1, 2)
    else:  # NLC tokens with prefix tokens first
        feats = feats[:, m.backbone.num_prefix_tokens :]
    f = feats @ m.visual_proj.weight.T + m.visual_proj.bias
    pi = m.prompt_init.net
    w = m.class_embeddings.double()
    if isinstance(pi, torch.nn.Linear):
        p = w @ pi.weight.T + pi.bias
    else:
        p = F.gelu(w @ pi.fc1.weight.T + pi.fc1.bias) @ pi.fc2.weight.T + pi.fc2.bias
    b, c = f.shape[0], p.shape[0]
    x_all = torch.cat([f, p.expand(b, -1, -1)], dim=1)
    vsi = m.vsi
    n1 = F.layer_norm(x_all, (x_all.shape[-1],), vsi.norm1.weight, vsi.norm1.bias)
    heads, hd = vsi.attn.num_heads, vsi.attn.head_dim
    qkv = n1 @ vsi.attn.qkv.weight.T
    if vsi.attn.qkv.bias is not None:
        qkv = qkv + vsi.attn.qkv.bias
    q, k, v = (t.reshape(b, -1, heads, hd).transpose(1, 2) for t in qkv.split(heads * hd, -1))
    attn = torch.softmax(q @ k.transpose(-1, -2) / hd**0.5, dim=-1) @ v
    y = attn.transpose(1, 2).reshape(b, -1, heads * hd) @ vsi.attn.proj.weight.T
    y = y + vsi.attn.proj.bias
    n2 = F.layer_norm(y, (y.shape[-1],), vsi.norm2.weight, vsi.norm2.bias)
    z = F.gelu(n2 @ vsi.mlp.fc1.weight.T + vsi.mlp.fc1.bias) @ vsi.mlp.fc2.weight.T
    refined = (z + vsi.mlp.fc2.bias)[:, -c:]
    if getattr(m, "cosine_classifier", False):
        cos = (refined * p).sum(-1) / (refined.norm(dim=-1) * p.norm(dim=-1))
        return m.logit_scale.exp() * cos + m.logit_bias
    return (refined * p).sum(-1)


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    expected = expected.to(actual.dtype)
    err = ((actual - expected).norm() / expected.norm()).item()
    assert err < rtol, f"relative error {err:.2e}"
    # and elementwise, relative to the logits' scale
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("backbone", ["test_resnet", "test_vit"])
@pytest.mark.parametrize(
    ("classes", "options"),
    [(1, {}), (7, {"qkv_bias": True}), (40, {"pi_linear": True}), (40, {})],
)
def test_same_logits_as_the_model_and_the_equations(backbone, classes, options, tiny_head):
    model = make(backbone, classes, tiny_head, **options)
    deployed = model.deploy()
    x = images(backbone)
    with torch.no_grad():
        ours = deployed(x)
        model.eval()
        theirs = model(x)
    assert ours.shape == (3, classes) and ours.dtype == torch.float32
    assert_rel_close(ours, theirs)
    assert_rel_close(ours, reference_logits(model, x))


def test_cosine_classifier(tiny_head):
    model = make("test_vit", 11, tiny_head, cosine_classifier=True)
    with torch.no_grad():
        model.logit_scale.fill_(2.5)
        model.logit_bias.fill_(-0.7)
    deployed = model.deploy()
    assert deployed.cosine_classifier
    x = images("test_vit")
    with torch.no_grad():
        model.eval()
        assert_rel_close(deployed(x), model(x))
    assert_rel_close(deployed(x), reference_logits(model, x))


def test_head_boundary_is_the_models(tiny_head):
    """forward_features gives the backbone tokens; forward_head takes them, like CPRFL's."""
    model = make("test_resnet", 6, tiny_head).eval()
    deployed = model.deploy()
    x = images("test_resnet")
    with torch.no_grad():
        tokens = model.forward_features(x)
        torch.testing.assert_close(deployed.forward_features(x), tokens)
        assert tokens.shape[-1] == model.backbone.num_features
        assert_rel_close(deployed.forward_head(tokens), model.forward_head(tokens))
        assert_rel_close(deployed.forward_head(tokens), deployed(x))
    with pytest.raises(ValueError, match=r"backbone tokens of shape \(B, v, "):
        deployed.forward_head(torch.randn(3, 4, tiny_head["embed_dim"]))


def test_detach_flags_do_not_change_eval_logits(tiny_head):
    x = images("test_resnet")
    plain = make("test_resnet", 9, tiny_head).deploy()(x)
    flagged = make(
        "test_resnet", 9, tiny_head, detach_classifier_prompts=True, detach_refined_features=True
    ).deploy()(x)
    torch.testing.assert_close(flagged, plain, rtol=0, atol=0)


def test_chunked_prompt_attention_is_exact(tiny_head, monkeypatch):
    model = make("test_resnet", 37, tiny_head)
    whole = model.deploy()
    monkeypatch.setattr(cprfl_zoo.deploy, "_MAX_BLOCK", 2 * 37 * 5)  # 5 prompt rows per block
    chunked = model.deploy()
    torch.testing.assert_close(chunked.prompt_lse, whole.prompt_lse, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(chunked.prompt_values, whole.prompt_values, rtol=1e-6, atol=1e-6)
    x = images("test_resnet")
    assert_rel_close(chunked(x), reference_logits(model, x))


def test_buffers_are_the_prompt_side(tiny_head):
    model = make("test_resnet", 6, tiny_head).eval()
    deployed = model.deploy()
    heads, hd = model.vsi.attn.num_heads, model.vsi.attn.head_dim
    assert deployed.prompt_queries.shape == (heads, 6, hd)
    assert deployed.prompt_lse.shape == (heads, 6, 1)
    assert deployed.prompt_values.shape == (heads, 6, hd)
    assert deployed.classifier_weight.shape == (6, model.vsi.mlp.fc1.out_features)
    with torch.no_grad():
        p = model.get_prompts()
        q = model.vsi.attn.qkv(model.vsi.norm1(p))[:, : heads * hd]
    expected_q = q.reshape(6, heads, hd).transpose(0, 1) * hd**-0.5
    torch.testing.assert_close(deployed.prompt_queries, expected_q)
    torch.testing.assert_close(deployed.classifier_bias, p @ model.vsi.mlp.fc2.bias)


def test_eval_only_no_grads_and_the_model_is_untouched(tiny_head):
    model = make("test_vit", 5, tiny_head).train()
    x = images("test_vit", batch=2)
    model.eval()
    with torch.no_grad():
        before = model(x)
    model.train()
    deployed = model.deploy()
    assert model.training and all(m.training for m in model.modules())
    assert not deployed.training and not any(m.training for m in deployed.modules())
    assert not any(p.requires_grad for p in deployed.parameters())
    out = deployed(x)  # no torch.no_grad() needed
    assert not out.requires_grad
    with pytest.raises(RuntimeError, match=r"inference-only .* call model.deploy\(\) again"):
        deployed.train()
    assert deployed.eval() is deployed
    with pytest.raises(RuntimeError, match=r"call set_classes\(...\) on the original"):
        deployed.set_classes(["a"], torch.randn(1, 16))
    # its weights are copies: training the model further does not reach it
    with torch.no_grad():
        model.visual_proj.weight.add_(1.0)
    torch.testing.assert_close(deployed(x), out)
    model.eval()
    with torch.no_grad():
        model.visual_proj.weight.sub_(1.0)
        torch.testing.assert_close(model(x), before)


def test_carries_names_thresholds_and_preprocessing(tiny_head):
    model = make("test_resnet", 4, tiny_head)
    deployed = model.deploy()
    assert deployed.class_names == model.class_names and deployed.num_classes == 4
    assert deployed.pretrained_cfg == model.pretrained_cfg
    assert deployed.pretrained_cfg is not model.pretrained_cfg
    assert deployed.thresholds.dtype == torch.float32
    assert "thresholds" in dict(deployed.named_buffers())
    assert deployed.thresholds.tolist() == [0.5] * 4  # uncalibrated
    model.set_thresholds([0.1, 0.2, 0.3, 0.4])
    assert deployed.thresholds.tolist() == [0.5] * 4  # fixed when deployed
    assert model.deploy().thresholds.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_new_classes_need_a_new_deploy(tiny_head):
    model = make("test_resnet", 3, tiny_head)
    old = model.deploy()
    new_emb = torch.randn(5, 16)
    model.set_classes([f"n{i}" for i in range(5)], new_emb)
    new = model.deploy()
    x = images("test_resnet")
    assert old(x).shape == (3, 3) and new.class_names == [f"n{i}" for i in range(5)]
    assert_rel_close(new(x), reference_logits(model, x))


def test_input_checks_and_non_models(tiny_head):
    model = make("test_resnet", 3, tiny_head)
    deployed = model.deploy()
    with pytest.raises(ValueError, match=r"images have 1 channels but the model expects 3"):
        deployed(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"expected images of shape \(B, C, H, W\)"):
        deployed(torch.randn(3, 64, 64))
    with pytest.raises(TypeError, match="needs a CPRFL model"):
        DeployedCPRFL(torch.nn.Linear(2, 2))


def test_trainable_text_tower_is_encoded_once(tmp_path: Path, monkeypatch, tiny_head):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    register_tiny_clip(tmp_path)
    ckpt = save_tiny_checkpoint(tmp_path / "tiny.safetensors")
    model = create_cprfl(
        "test_resnet",
        class_names=["dog", "traffic_light", "cat"],
        pretrained=False,
        text_encoder=TINY_NAME,
        text_pretrained=ckpt,
        trainable_text_encoder=True,
        **tiny_head,
    )
    deployed = model.deploy()
    assert not any("text_tower" in n for n, _ in deployed.named_parameters())
    x = images("test_resnet", batch=2)
    model.eval()
    with torch.no_grad():
        expected = model(x)  # re-encodes the names through the tower
    assert_rel_close(deployed(x), expected)
