from __future__ import annotations

import inspect

import pytest
import timm
import torch
from torch import nn

import cprfl_zoo
from cprfl_zoo import CPRFL, HeadConfig, create_cprfl

NAMES = ["cat", "dog", "traffic_light", "person", "zebra"]


def make(tiny_head: dict, backbone: str = "test_resnet", **kwargs) -> CPRFL:
    torch.manual_seed(0)
    kwargs.setdefault("text_embeddings", torch.randn(len(NAMES), 12))
    return create_cprfl(backbone, class_names=NAMES, pretrained=False, **tiny_head, **kwargs)


def test_quickstart_shapes_and_names(tiny_head):
    model = make(tiny_head)
    assert model.class_names == NAMES
    assert model.num_classes == 5
    assert model.num_features == model.backbone.num_features  # timm: forward_features width
    assert model.head_hidden_size == tiny_head["embed_dim"]  # timm: forward_head(pre_logits) width
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    assert model(torch.randn(3, 3, 64, 64)).shape == (3, 5)


def test_paper_defaults():
    """Checked on the head's config record, without building a 2048-wide head."""
    sig = inspect.signature(HeadConfig).parameters
    assert sig["embed_dim"].default == 2048
    assert sig["num_heads"].default == 8
    assert sig["head_dim"].default == 512
    assert sig["mlp_hidden_dim"].default == 2048
    assert sig["drop_rate"].default == 0.1
    assert sig["pi_mlp_ratio"].default == 0.5
    assert sig["qkv_bias"].default is False


def test_pi_network_structure():
    torch.manual_seed(0)
    model = create_cprfl(
        "test_resnet",
        NAMES,
        torch.randn(5, 12),
        pretrained=False,
        embed_dim=32,
        num_heads=2,
        head_dim=8,
        mlp_hidden_dim=24,
    )
    net = model.prompt_init.net
    assert (net.fc1.in_features, net.fc1.out_features, net.fc2.out_features) == (12, 16, 32)
    assert isinstance(net.act, nn.GELU)
    lin = create_cprfl(
        "test_resnet",
        NAMES,
        torch.randn(5, 12),
        pretrained=False,
        pi_linear=True,
        embed_dim=32,
        num_heads=2,
        head_dim=8,
        mlp_hidden_dim=24,
    )
    assert isinstance(lin.prompt_init.net, nn.Linear)
    w = lin.prompt_init.net
    torch.testing.assert_close(lin.get_prompts(), lin.class_embeddings @ w.weight.T + w.bias)


def test_vsi_sizes_follow_arguments():
    model = create_cprfl(
        "test_resnet",
        NAMES,
        torch.randn(5, 12),
        pretrained=False,
        embed_dim=24,
        num_heads=3,
        head_dim=5,
        mlp_hidden_dim=7,
    )
    assert model.vsi.attn.qkv.weight.shape == (3 * 15, 24)
    assert model.vsi.attn.qkv.bias is None
    assert model.vsi.attn.proj.weight.shape == (24, 15)
    assert model.vsi.mlp.fc1.weight.shape == (7, 24)
    assert model.visual_proj.weight.shape == (24, model.backbone.num_features)


def test_timm_registry_and_create_model(tiny_head):
    assert {"cprfl_resnet50", "cprfl_resnet101", "cprfl_vit_base_patch16_224"} <= set(
        timm.list_models("cprfl*")
    )
    model = timm.create_model(
        "cprfl_resnet101", class_names=NAMES, text_embeddings=torch.randn(5, 12), **tiny_head
    )
    assert isinstance(model, CPRFL)
    assert model.pretrained_cfg["architecture"] == "cprfl_resnet101"
    cfg = timm.data.resolve_model_data_config(model)
    assert cfg["input_size"] == (3, 448, 448)
    assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN


def test_data_config_comes_from_backbone(tiny_head):
    model = make(tiny_head, "test_vit", img_size=64)
    cfg = timm.data.resolve_model_data_config(model)
    backbone_cfg = timm.data.resolve_model_data_config(model.backbone)
    assert cfg["input_size"] == (3, 64, 64)
    assert cfg["mean"] == backbone_cfg["mean"] and cfg["std"] == backbone_cfg["std"]
    width = model.backbone.num_features
    assert model.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 16, width)


def test_backbone_with_tag_and_kwargs(tiny_head):
    model = make(tiny_head, "test_vit.r160_in1k", img_size=96, drop_path_rate=0.1)
    assert model.backbone.patch_embed.img_size == (96, 96)
    assert model(torch.randn(2, 3, 96, 96)).shape == (2, 5)


def test_forward_features_and_head(tiny_head):
    model = make(tiny_head).eval()
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, 4, model.backbone.num_features)
    refined = model.forward_refined(feats)
    assert refined.shape == (2, 5, tiny_head["embed_dim"])
    torch.testing.assert_close(model.forward_head(feats), (refined * model.get_prompts()).sum(-1))
    # timm's pre-logits: the class-independent average of the projected tokens, (B, d)
    pre = model.forward_head(feats, pre_logits=True)
    proj = model.visual_proj
    torch.testing.assert_close(pre, (feats @ proj.weight.T).mean(1) + proj.bias)
    torch.testing.assert_close(model(x), model.forward_head(feats))


@pytest.mark.parametrize("backbone", ["test_resnet", "test_vit"])
def test_forward_head_takes_backbone_tokens(tiny_head, backbone):
    """The timm boundary: forward_features ends at the backbone, forward_head starts with φ."""
    kwargs = {"img_size": 64} if backbone == "test_vit" else {}
    model = make(tiny_head, backbone, **kwargs).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        raw = model.backbone.forward_features(x)
        prefix = getattr(model.backbone, "num_prefix_tokens", 0)
        tokens = raw[:, prefix:] if raw.ndim == 3 else raw.flatten(2).transpose(1, 2)
        assert tokens.shape[-1] == model.backbone.num_features
        torch.testing.assert_close(model.forward_features(x), tokens)
        logits = model.forward_head(tokens)
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), model(x))
        torch.testing.assert_close(logits, model(x))
        # From the equations: F = φ(tokens), P' = VSI(F, P), logit_i = p'_i · p_i.
        f = tokens @ model.visual_proj.weight.T + model.visual_proj.bias
        prompts = model.get_prompts()
        expected = (model.vsi(f, prompts) * prompts).sum(-1)
    torch.testing.assert_close(logits, expected)


def test_forward_head_names_a_wrong_token_width(tiny_head):
    model = make(tiny_head).eval()
    width = model.backbone.num_features
    projected = torch.randn(2, 4, tiny_head["embed_dim"])
    with pytest.raises(ValueError, match=rf"backbone tokens of shape \(B, v, {width}\)"):
        model.forward_head(projected)
    with pytest.raises(ValueError, match=r"got \(2, 3, 4, 5\)"):
        model.forward_head(torch.randn(2, 3, 4, 5))


def test_dual_path_gradients_and_detach_flags(tiny_head):
    x = torch.randn(2, 3, 64, 64)

    def prompt_grad(**flags):
        model = make(tiny_head, drop_rate=0.0, **flags).eval()
        model(x).sum().backward()
        return model

    both = prompt_grad()
    no_cls = prompt_grad(detach_classifier_prompts=True)
    no_feat = prompt_grad(detach_refined_features=True)
    g_both = both.prompt_init.net.fc2.weight.grad
    g_vsi = no_cls.prompt_init.net.fc2.weight.grad
    g_cls = no_feat.prompt_init.net.fc2.weight.grad
    # the two paths add up to the full gradient, and each is non-zero
    torch.testing.assert_close(g_both, g_vsi + g_cls, rtol=1e-4, atol=1e-6)
    assert g_vsi.abs().sum() > 0 and g_cls.abs().sum() > 0
    assert no_feat.vsi.attn.qkv.weight.grad is None
    assert no_feat.backbone.conv1[0].weight.grad is None


def test_group_matcher_is_the_backbones_then_the_head(tiny_head):
    model = make(tiny_head)
    groups = timm.models.group_parameters(model, model.group_matcher())
    names = dict(model.named_parameters())
    head = [n for n in names if not n.startswith("backbone.")]
    last = max(groups)
    assert sorted(groups[last]) == sorted(head)  # the head is the last group, as timm's heads
    assert all(n.startswith("backbone.") for g in range(last) for n in groups[g])
    assert head and last >= 2  # the backbone's own groups: stem, then its stages/blocks


def test_no_weight_decay_is_prefixed(tiny_head):
    model = make(tiny_head, "test_vit")
    nwd = model.no_weight_decay()
    assert "backbone.pos_embed" in nwd
    assert "backbone.cls_token" in nwd
    assert all(n.startswith("backbone.") for n in nwd)


def test_grad_checkpointing_same_values(tiny_head):
    model = make(tiny_head, drop_rate=0.0).eval()
    x = torch.randn(2, 3, 64, 64)
    ref = model(x)
    ref.sum().backward()
    g_ref = model.vsi.attn.qkv.weight.grad.clone()
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out = model(x)
    out.sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(model.vsi.attn.qkv.weight.grad, g_ref)


def test_channels_last_and_bf16_autocast(tiny_head):
    model = make(tiny_head).eval()
    x = torch.randn(2, 3, 64, 64)
    ref = model(x)
    cl = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(cl(x.to(memory_format=torch.channels_last)), ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x)
    assert low.shape == ref.shape and torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.05 * ref.abs().max() + 0.05


def test_torch_compile_matches_eager(tiny_head):
    model = make(tiny_head).eval()
    x = torch.randn(2, 3, 64, 64)
    # aot_eager traces through dynamo and AOTAutograd like inductor, without its slow C++ codegen
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


def test_set_classes_swaps_label_space_only(tiny_head):
    model = make(tiny_head).eval()
    before = {k: v.clone() for k, v in model.state_dict().items() if k != "class_embeddings"}
    x = torch.randn(2, 3, 64, 64)
    new_w = torch.randn(3, 12)
    model.set_classes(["a", "b", "c"], new_w)
    assert model.num_classes == 3 and model.class_names == ["a", "b", "c"]
    out = model(x)
    assert out.shape == (2, 3)
    after = model.state_dict()
    for k, v in before.items():
        torch.testing.assert_close(after[k], v)
    # scoring the new classes equals a model built with them from the start (same weights)
    fresh = make(tiny_head).eval()
    fresh.load_state_dict(before | {"class_embeddings": fresh.class_embeddings}, strict=True)
    fresh.set_classes(["a", "b", "c"], new_w)
    torch.testing.assert_close(fresh(x), out)


def test_module_backbone(tiny_head):
    bb = timm.create_model("test_convnext", num_classes=0)
    model = CPRFL(bb, NAMES, torch.randn(5, 12), **tiny_head)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    with pytest.raises(ValueError, match="backbone module instance"):
        _ = model.model_args


def test_class_embeddings_are_a_persistent_float_buffer(tiny_head):
    w = torch.randn(5, 12, dtype=torch.float64)
    model = make(tiny_head, text_embeddings=w)
    assert "class_embeddings" in model.state_dict()
    assert model.class_embeddings.dtype == torch.float32
    torch.testing.assert_close(model.class_embeddings, w.float())
    assert not any(p is model.class_embeddings for p in model.parameters())


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("names", "exc", "match"),
    [
        ([], ValueError, "class_names is empty"),
        (["a", "b", "a"], ValueError, "duplicate class name 'a' at positions 0 and 2"),
        (["a", 3], ValueError, r"class_names\[1\] is int 3, not a string"),
        (["a", "  "], ValueError, r"class_names\[1\] is an empty or blank string"),
        ("abc", TypeError, "sequence of strings"),
    ],
)
def test_bad_class_names(names, exc, match, tiny_head):
    n = max(len(names), 1)
    with pytest.raises(exc, match=match):
        create_cprfl("test_resnet", names, torch.randn(n, 12), pretrained=False, **tiny_head)


def test_embedding_count_mismatch(tiny_head):
    with pytest.raises(ValueError, match="has 4 rows but there are 5 class names"):
        make(tiny_head, text_embeddings=torch.randn(4, 12))


def test_embedding_width_mismatch(tiny_head):
    model = make(tiny_head)
    with pytest.raises(ValueError, match=r"width 10 but .*PI network expects text_dim=12"):
        model.set_classes(["x", "y"], torch.randn(2, 10))
    with pytest.raises(ValueError, match=r"text_dim=16 \(the PI input width\)"):
        make(tiny_head, text_dim=16)


def test_non_finite_embeddings(tiny_head):
    w = torch.randn(5, 12)
    w[2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        make(tiny_head, text_embeddings=w)


def test_wrong_channel_count(tiny_head):
    model = make(tiny_head)
    with pytest.raises(ValueError, match="images have 1 channels but the model expects 3"):
        model(torch.randn(2, 1, 64, 64))
    with pytest.raises(ValueError, match=r"expected images of shape \(B, C, H, W\)"):
        model(torch.randn(3, 64, 64))


def test_unknown_backbone(tiny_head):
    with pytest.raises(ValueError, match="unknown backbone 'resnet_nope'"):
        create_cprfl("resnet_nope", NAMES, torch.randn(5, 12), **tiny_head)


def test_pretrained_without_weights_of_its_own_loads_the_backbone(tiny_head, monkeypatch):
    # timm's semantics for a new head: pretrained=True means the backbone's weights; offline and
    # uncached, that fails naming the weights, never "No pretrained weights exist for cprfl"
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match=r"backbone weights of 'resnet50' from hf-hub:timm/resnet50"):
        timm.create_model(
            "cprfl_resnet50",
            pretrained=True,
            class_names=NAMES,
            text_embeddings=torch.randn(5, 12),
            **tiny_head,
        )


def test_num_classes_must_match(tiny_head):
    with pytest.raises(ValueError, match="num_classes=3 disagrees with the 5 class names"):
        make(tiny_head, num_classes=3)


def test_version():
    assert isinstance(cprfl_zoo.__version__, str) and cprfl_zoo.__version__.count(".") == 2


# ---------------------------------------------------------------- issue 13: bad input, loud errors
@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"mlp_hidden_dim": 0}, r"mlp_hidden_dim must be a positive int, got 0"),
        ({"embed_dim": "32"}, r"embed_dim must be a positive int, got '32' \(str\)"),
        ({"num_heads": 2.0}, r"num_heads must be a positive int, got 2\.0"),
        ({"head_dim": True}, r"head_dim must be a positive int, got True"),
        ({"in_chans": 0}, r"in_chans must be a positive int, got 0"),
        ({"drop_rate": 1.0}, r"drop_rate must be a number in \[0, 1\), got 1\.0"),
        ({"attn_drop_rate": -0.1}, r"attn_drop_rate must be a number in \[0, 1\), got -0\.1"),
        ({"drop_rate": float("nan")}, r"drop_rate must be a number in \[0, 1\), got nan"),
        ({"pi_mlp_ratio": 0}, r"pi_mlp_ratio must be a positive number, got 0"),
    ],
)
def test_head_sizes_and_rates_are_validated(tiny_head, override, match):
    # mlp_hidden_dim=0 used to build an FFN of hidden width dim (timm's Mlp reads 0 as "input
    # width") while the model card said "FFN hidden 0"
    with pytest.raises(ValueError, match=match):
        make(dict(tiny_head, **override))


def test_float64_embeddings_beyond_float32_are_refused(tiny_head):
    w = torch.randn(5, 12, dtype=torch.float64)
    w[1, 2] = 1e39  # finite in float64, inf once stored as float32
    assert torch.isfinite(w).all()
    with pytest.raises(ValueError, match=r"NaN or infinite values.*checked as float32"):
        make(tiny_head, text_embeddings=w)
    model = make(tiny_head)
    before = model.class_embeddings.clone()
    with pytest.raises(ValueError, match=r"NaN or infinite values.*checked as float32"):
        model.set_classes(["x", "y"], torch.full((2, 12), -1e39, dtype=torch.float64))
    assert model.class_names == NAMES and torch.equal(model.class_embeddings, before)


@pytest.mark.parametrize(
    ("embeddings", "exc", "match"),
    [
        (torch.randn(5, 0), ValueError, r"width 0 \(shape \(5, 0\)\).*text_dim >= 1"),
        (torch.randn(5, 12, device="meta"), ValueError, "on the meta device"),
        (torch.randn(5, 12, dtype=torch.complex64), TypeError, "real .*got dtype torch.complex64"),
    ],
)
def test_unusable_embeddings_are_named(tiny_head, embeddings, exc, match):
    with pytest.raises(exc, match=match):
        make(tiny_head, text_embeddings=embeddings)


def test_bytes_class_names_are_not_a_sequence_of_ints(tiny_head):
    # used to be reported as "class_names[0] is int 97"
    for names in (b"abc", bytearray(b"abc")):
        with pytest.raises(TypeError, match=r"sequence of strings, got (bytes|bytearray)"):
            create_cprfl("test_resnet", names, torch.randn(3, 12), pretrained=False, **tiny_head)


@pytest.mark.parametrize(
    ("images", "exc", "match"),
    [
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), TypeError, r"floating-point.*uint8.*255"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.int64), TypeError, "floating-point.*int64"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.bool), TypeError, "floating-point.*bool"),
        (
            torch.zeros(1, 3, 32, 32, dtype=torch.float64),
            TypeError,
            r"images are torch.float64 but the model's weights are torch.float32",
        ),
        (torch.zeros(1, 3, 32, 32).numpy(), TypeError, "must be a torch.Tensor.*got ndarray"),
        ([[[[0.0]]]], TypeError, "must be a torch.Tensor.*got list"),
        (torch.zeros(1, 3, 0, 0), ValueError, r"empty spatial size: shape \(1, 3, 0, 0\)"),
        (torch.zeros(2, 3, 32, 0), ValueError, r"empty spatial size"),
    ],
)
def test_forward_input_type_errors(tiny_head, images, exc, match):
    model = make(tiny_head).eval()
    with pytest.raises(exc, match=match):
        model(images)


def test_forward_accepts_other_float_dtypes_under_autocast(tiny_head):
    model = make(tiny_head).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.randn(1, 3, 32, 32, dtype=torch.bfloat16)).shape == (1, 5)
    half = make(tiny_head).eval().to(torch.float64)
    assert half(torch.randn(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64
