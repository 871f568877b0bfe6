"""timm's model contract (its ``tests/test_models.py``), run over the CPRFL doors.

Each test follows the assertions of the timm test of the same name, on tiny models built
through ``timm.create_model("cprfl", ...)`` and ``create_cprfl`` with the class names supplied.
CPRFL's tokens are (B, v, d0), so timm's *non-standard* (ViT-like) cfg test is the one that
applies. Where an assertion cannot apply, the test checks the error that says why (and
docs/src/api/model.md, "timm's model contract", says the same):

* ``num_classes=42`` without 42 names (classes come from names: ``num_classes`` is
  ``len(class_names)`` or 0);
* ``reset_classifier(0, "")`` (the pre-logits are always the token average);
* ``torch.jit.script`` (TorchScript; use torch.export, ONNX or ``torch.jit.trace``).
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
from conftest import TINY_HEAD
from timm.optim import param_groups_layer_decay
from torchvision.models.feature_extraction import (
    NodePathTracer,
    create_feature_extractor,
    get_graph_node_names,
)

from cprfl_zoo import create_cprfl

NAMES = ["cat", "dog", "fox", "owl", "traffic_light"]

# (door, backbone, extra arguments): a CNN, a ViT with a class token (fixed size: timm's FX
# autowrap of a dynamic-size ViT's position resampling only reaches the traced root module),
# and the create_cprfl door.
DOORS = {
    "cprfl-resnet": ("timm", "test_resnet", {}),
    "cprfl-vit": ("timm", "test_vit", {"img_size": 64, "dynamic_img_size": False}),
    "create_cprfl": ("create_cprfl", "test_resnet", {}),
}
# The width of the head equal to the backbone's, for timm's num_features assertions.
WIDTH = {"test_resnet": 96, "test_vit": 64}


def _embeddings(n: int = len(NAMES)) -> torch.Tensor:
    return torch.randn(n, 12, generator=torch.Generator().manual_seed(3))


def _create(door: str, *, same_width: bool = False, **kwargs):
    kind, backbone, extra = DOORS[door]
    head = dict(TINY_HEAD, embed_dim=WIDTH[backbone]) if same_width else TINY_HEAD
    args = {"class_names": NAMES, "text_embeddings": _embeddings(), **head, **extra, **kwargs}
    torch.manual_seed(0)
    if kind == "create_cprfl":
        return create_cprfl(backbone, pretrained=False, **args)
    return timm.create_model("cprfl", backbone=backbone, pretrained=False, **args)


def _input_size(model, target: int | None = None) -> tuple[int, ...]:
    """timm's ``_get_input_size``: the cfg's size, shrunk to ``target`` unless fixed."""
    cfg = model.default_cfg
    size = cfg["input_size"]
    assert size is not None
    if cfg.get("fixed_input_size") or target is None or max(size) <= target:
        return tuple(size)
    return tuple(min(x, target) for x in size)


def _images(model, batch: int = 1, target: int | None = 96) -> torch.Tensor:
    size = _input_size(model, target)
    return torch.randn((batch, *size), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("door", DOORS)
def test_model_forward(door: str) -> None:
    model = _create(door).eval()
    inputs = _images(model)
    outputs = model(inputs)
    assert outputs.shape == (1, len(NAMES))
    assert not torch.isnan(outputs).any()
    model.set_grad_checkpointing()
    torch.testing.assert_close(model(inputs), outputs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("door", DOORS)
def test_model_backward(door: str) -> None:
    model = _create(door, num_classes=len(NAMES)).train()
    num_params = sum(p.numel() for p in model.parameters())
    outputs = model(_images(model, batch=2))
    outputs.mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
    assert num_params == sum(p.grad.numel() for p in model.parameters())
    assert outputs.shape[-1] == len(NAMES)
    assert not torch.isnan(outputs).any()


@pytest.mark.parametrize("door", DOORS)
def test_model_backward_encoder_only(door: str) -> None:
    """timm's ``num_classes == 0`` branch: the output is pooled, ``num_features`` wide."""
    model = _create(door, same_width=True, num_classes=0).train()
    assert model.num_classes == 0 and model.class_names == []
    outputs = model(_images(model, batch=2))
    outputs.mean().backward()
    trained = [n for n, p in model.named_parameters() if p.grad is not None]
    assert all(n.startswith(("backbone.", "visual_proj.")) for n in trained)
    assert outputs.shape == (2, model.num_features) == (2, model.head_hidden_size)


@pytest.mark.parametrize("door", DOORS)
def test_model_default_cfgs_non_std(door: str) -> None:
    model = _create(door, same_width=True).eval()
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    state_dict = model.state_dict()
    cfg = model.default_cfg
    inputs = _images(model, target=None)
    with torch.no_grad():
        outputs = model.forward_features(inputs)
        outputs_pre = model.forward_head(outputs, pre_logits=True)
    assert outputs.ndim == 3 and outputs.shape[-1] == model.num_features
    assert outputs_pre.shape[1] == model.head_hidden_size

    model.reset_classifier(0)
    assert model.num_classes == 0
    with torch.no_grad():
        pooled = model(inputs)
    assert pooled.shape[-1] == model.head_hidden_size and pooled.shape == outputs_pre.shape
    torch.testing.assert_close(pooled, outputs_pre)  # CPRFL's own invariant: the same vector

    model = _create(door, same_width=True, num_classes=0).eval()
    with torch.no_grad():
        assert model(inputs).shape[-1] == model.num_features

    assert cfg["num_classes"] == len(NAMES)
    classifier = cfg["classifier"]
    for name in (classifier,) if isinstance(classifier, str) else classifier:
        assert name + ".weight" in state_dict, f"{name} not in model params"
    first_conv = cfg["first_conv"]
    for name in (first_conv,) if isinstance(first_conv, str) else first_conv:
        assert name + ".weight" in state_dict, f"{name} not in model params"


@pytest.mark.parametrize("door", DOORS)
def test_model_forward_intermediates(door: str) -> None:
    model = _create(door).eval()
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    channels, reductions = info.channels(), info.reduction()
    assert len(channels) >= 3
    inputs = _images(model)
    output, intermediates = model.forward_intermediates(inputs, output_fmt="NCHW")
    assert len(intermediates) == len(channels)
    for c, r, o in zip(channels, reductions, intermediates, strict=True):
        assert o.shape[1] == c and o.shape[0] == 1
        assert o.shape[2] <= math.ceil(inputs.shape[2] / r) + 1
        assert o.shape[3] <= math.ceil(inputs.shape[3] / r) + 1
    assert torch.allclose(output, model.forward_features(inputs))
    model.set_grad_checkpointing()
    output3, _ = model.forward_intermediates(inputs, output_fmt="NCHW")
    assert torch.allclose(output, output3, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("door", ["cprfl-resnet", "cprfl-vit"])
def test_model_forward_intermediates_features(door: str) -> None:
    """``features_only=True``: timm's getter wrapper over the backbone's intermediates."""
    model = _create(door, features_only=True).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    inputs = _images(model)
    outputs = model(inputs)
    assert len(outputs) == len(channels)
    for c, r, o in zip(channels, reductions, outputs, strict=True):
        assert o.shape[1] == c and o.shape[0] == 1 and not torch.isnan(o).any()
        assert o.shape[2] <= math.ceil(inputs.shape[2] / r) + 1
    # the head is pruned: features_only needs no class names
    _, backbone, extra = DOORS[door]
    bare = timm.create_model("cprfl", backbone=backbone, features_only=True, text_dim=12, **extra)
    assert [o.shape for o in bare(inputs)] == [o.shape for o in outputs]
    with pytest.raises(ValueError, match="only feature_cls='getter' applies"):
        _create(door, features_only=True, feature_cls="list")


def _fx_model(model, train: bool = False):
    """timm's ``_create_fx_model``: trace with timm's leaf modules and autowrapped functions."""
    kwargs = {
        "leaf_modules": timm.layers.get_notrace_modules(),
        "autowrap_functions": timm.layers.get_notrace_functions(),
        "param_shapes_constant": True,
    }
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=kwargs)
    train_return = [train_nodes[-1]]
    if train:
        graph = NodePathTracer(**kwargs).trace(model)
        nodes = list(reversed(graph.nodes))
        names = [n.name for n in nodes]
        outputs = [n.name for n in nodes[0]._input_nodes]
        train_return = [train_nodes[-names.index(name)] for name in outputs]
    return create_feature_extractor(
        model,
        train_return_nodes=train_return,
        eval_return_nodes=[eval_nodes[-1]],
        tracer_kwargs=kwargs,
    )


@pytest.mark.parametrize("door", DOORS)
def test_model_forward_fx(door: str) -> None:
    model = _create(door).eval()
    inputs = _images(model)
    with torch.inference_mode():
        outputs = model(inputs)
        fx_outputs = torch.cat(tuple(_fx_model(model)(inputs).values()))
    assert torch.all(fx_outputs == outputs)


@pytest.mark.parametrize("door", DOORS)
def test_model_backward_fx(door: str) -> None:
    model = _create(door, num_classes=len(NAMES)).train()
    num_params = sum(p.numel() for p in model.parameters())
    fx = _fx_model(model, train=True)
    outputs = torch.cat(tuple(fx(_images(model, batch=2)).values()))
    outputs.mean().backward()
    for name, p in fx.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
    assert num_params == sum(p.grad.numel() for p in fx.parameters())
    assert outputs.shape[-1] == len(NAMES)


def test_fx_extracts_backbone_and_head_nodes() -> None:
    model = _create("cprfl-vit").eval()
    extractor = timm.models.create_feature_extractor(
        model, {"backbone.blocks.1": "block1", "vsi.mlp.fc2": "refined"}
    )
    out = extractor(_images(model))
    assert out["refined"].shape == (1, len(NAMES), TINY_HEAD["embed_dim"])
    expected = model.forward_refined(model.forward_features(_images(model)))
    torch.testing.assert_close(out["refined"], expected)


def test_plain_symbolic_trace_says_what_to_use() -> None:
    model = _create("cprfl-resnet").eval()
    with pytest.raises(RuntimeError, match=r"timm\.models\.create_feature_extractor"):
        torch.fx.symbolic_trace(model)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")
def test_torchscript_is_refused_with_the_reason_and_trace_works() -> None:
    model = _create("cprfl-resnet").eval()
    with pytest.raises(RuntimeError, match=r"does not support TorchScript.*torch\.export"):
        torch.jit.script(model)
    inputs = _images(model)
    with torch.no_grad():
        traced = torch.jit.trace(model, inputs, check_trace=False)
        torch.testing.assert_close(traced(inputs), model(inputs))


# ---------------------------------------------------------------- what the failures were
def test_reset_classifier_to_a_count_says_to_use_set_classes() -> None:
    model = _create("cprfl-resnet").eval()
    model.reset_classifier(len(NAMES))  # the current count: nothing to do
    assert model.class_names == NAMES
    with pytest.raises(ValueError, match=r"set_classes\(names, text_embeddings\)"):
        model.reset_classifier(10)
    with pytest.raises(ValueError, match="global_pool=''"):
        model.reset_classifier(0, "")
    with pytest.raises(ValueError, match="num_classes=42 disagrees with the 5 class names"):
        _create("cprfl-resnet", num_classes=42)


def test_reset_classifier_0_keeps_every_weight_and_set_classes_restores_the_logits() -> None:
    model = _create("cprfl-resnet").eval()
    model.set_thresholds([0.3] * len(NAMES))
    inputs = _images(model)
    with torch.no_grad():
        logits = model(inputs)
    state = {k: v.clone() for k, v in model.state_dict().items() if k != "class_embeddings"}
    model.reset_classifier(0)
    assert model.num_classes == 0 and model.thresholds is None
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    with pytest.raises(ValueError, match="no classes"):
        model.deploy()
    with pytest.raises(ValueError, match="no classes"):
        model.save_pretrained("unused")
    model.set_classes(NAMES, _embeddings())
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), logits)


def test_num_classes_0_without_names_needs_text_dim() -> None:
    model = timm.create_model(
        "cprfl", backbone="test_resnet", num_classes=0, text_dim=12, **TINY_HEAD
    ).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, TINY_HEAD["embed_dim"])
    model.set_classes(NAMES, _embeddings())
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, len(NAMES))
    with pytest.raises(ValueError, match="num_classes=0 without class_names needs text_dim"):
        timm.create_model("cprfl", backbone="test_resnet", num_classes=0, **TINY_HEAD)


def test_pretrained_cfg_keys_of_every_door() -> None:
    for door in DOORS:
        cfg = _create(door).pretrained_cfg
        assert cfg["num_classes"] == len(NAMES)
        assert cfg["classifier"] == "prompt_init.net.fc2"
        assert cfg["first_conv"] is not None and cfg["input_size"] is not None
        assert cfg["pool_size"] is not None
    vit = _create("cprfl-vit").pretrained_cfg
    assert vit["input_size"] == (3, 64, 64) and vit["pool_size"] == (4, 4)
    assert vit["fixed_input_size"] is True
    linear = _create("cprfl-resnet", pi_linear=True)
    assert linear.pretrained_cfg["classifier"] == "prompt_init.net"
    assert "prompt_init.net.weight" in linear.state_dict()


def test_registered_entrypoints_cfgs_and_in_chans() -> None:
    for name, size in (("cprfl_resnet50", 448), ("cprfl_vit_base_patch16_224", 224)):
        cfg = timm.get_pretrained_cfg(name)
        assert cfg.input_size == (3, size, size) and cfg.first_conv.startswith("backbone.")
    assert timm.get_pretrained_cfg("cprfl").input_size == (3, 224, 224)
    assert timm.get_pretrained_cfg("cprfl_vit_base_patch16_224").fixed_input_size
    args = {"class_names": NAMES, "text_embeddings": _embeddings(), **TINY_HEAD}
    model = timm.create_model("cprfl_resnet50", in_chans=1, **args)
    data = timm.data.resolve_model_data_config(model)
    assert data["input_size"] == (1, 448, 448) and len(data["mean"]) == len(data["std"]) == 1
    assert model.pretrained_cfg["first_conv"] == "backbone.conv1"
    assert model.pretrained_cfg["pool_size"] == (14, 14)


def test_layer_decay_decays_a_vit_block_by_block() -> None:
    """timm's ``param_groups_layer_decay`` on ``cprfl_vit_base_patch16_224``: 12 blocks + 2."""
    args = {"class_names": NAMES, "text_embeddings": _embeddings(), **TINY_HEAD}
    model = timm.create_model("cprfl_vit_base_patch16_224", **args)
    assert model.pretrained_cfg["fixed_input_size"] is True
    assert model.pretrained_cfg["input_size"] == (3, 224, 224)
    groups = param_groups_layer_decay(model, layer_decay=0.5)
    scales = sorted({g["lr_scale"] for g in groups})
    assert len(scales) == 14  # stem, 12 blocks, final norm + head
    head = {id(p) for n, p in model.named_parameters() if not n.startswith("backbone.")}
    top = [g for g in groups if g["lr_scale"] == 1.0]
    assert head <= {id(p) for g in top for p in g["params"]}
