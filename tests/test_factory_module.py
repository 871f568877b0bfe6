"""``create_cprfl`` on a backbone module (timm's forward_features / num_features contract)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from cprfl_zoo import CPRFL, create_cprfl

NAMES = ["cat", "dog", "traffic_light", "person", "zebra"]


class TinyBackbone(nn.Module):
    """The smallest module with timm's backbone contract: NCHW features and num_features."""

    def __init__(self) -> None:
        super().__init__()
        self.num_features = 6
        self.conv = nn.Conv2d(3, self.num_features, kernel_size=4, stride=4)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _tokens_reference(model: CPRFL, x: torch.Tensor) -> torch.Tensor:
    """The backbone's (B, C, H, W) map read as (B, H*W, C) tokens, from the equations."""
    return model.backbone.forward_features(x).flatten(2).transpose(1, 2)


def test_timm_module_backbone(tiny_head: dict) -> None:
    torch.manual_seed(0)
    backbone = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    w = torch.randn(len(NAMES), 12)
    model = create_cprfl(backbone, NAMES, text_embeddings=w, **tiny_head)
    assert isinstance(model, CPRFL)
    assert model.backbone is backbone, "the module is used as it is, not copied or rebuilt"
    assert model.class_names == NAMES
    torch.testing.assert_close(model.class_embeddings, w)
    assert model.pretrained_cfg["mean"] == backbone.pretrained_cfg["mean"]
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
        tokens = model.forward_features(x)
        reference = _tokens_reference(model, x)
    assert logits.shape == (2, len(NAMES))
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(tokens, reference, rtol=1e-5, atol=1e-5)


def test_custom_module_backbone_trains(tiny_head: dict) -> None:
    torch.manual_seed(0)
    backbone = TinyBackbone()
    model = create_cprfl(backbone, NAMES, text_embeddings=torch.randn(len(NAMES), 10), **tiny_head)
    assert model.visual_proj.in_features == backbone.num_features
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().forward_features(x), _tokens_reference(model, x))
    model.train()
    model(x).sum().backward()
    assert backbone.conv.weight.grad is not None and backbone.conv.weight.grad.abs().sum() > 0


class _NoForwardFeatures(nn.Module):
    num_features = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _BadWidth(TinyBackbone):
    def __init__(self) -> None:
        super().__init__()
        self.num_features = "6"  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("backbone", "kwargs", "match"),
    [
        (_NoForwardFeatures(), {}, r"_NoForwardFeatures has no forward_features\(\)"),
        (_BadWidth(), {}, r"_BadWidth needs a positive integer `num_features`.*got '6'"),
        (TinyBackbone(), {"drop_path_rate": 0.1}, r"kwargs \['drop_path_rate'\] can only be used"),
        (TinyBackbone(), {"img_size": 64}, "img_size builds a timm backbone by name"),
        (TinyBackbone(), {"in_chans": 1}, "in_chans builds a timm backbone by name"),
        (TinyBackbone(), {"backbone": "resnet50"}, "the backbone is given twice"),
    ],
)
def test_bad_module_backbone(backbone: nn.Module, kwargs: dict, match: str, tiny_head) -> None:
    with pytest.raises(ValueError, match=match):
        create_cprfl(backbone, NAMES, text_embeddings=torch.randn(5, 8), **tiny_head, **kwargs)


def test_module_backbone_needs_class_names(tiny_head: dict) -> None:
    with pytest.raises(ValueError, match="class_names is required"):
        create_cprfl(TinyBackbone(), text_embeddings=torch.randn(5, 8), **tiny_head)


@pytest.mark.parametrize("model_name", [42, None, torch.zeros(2)])
def test_model_name_of_another_type(model_name: object) -> None:
    with pytest.raises(ValueError, match=r"a backbone nn.Module with forward_features\(\)"):
        create_cprfl(model_name, NAMES, text_embeddings=torch.randn(5, 8))  # type: ignore[arg-type]


def test_model_on_a_module_cannot_be_saved(tiny_head: dict, tmp_path: Path) -> None:
    model = create_cprfl(TinyBackbone(), NAMES, text_embeddings=torch.randn(5, 8), **tiny_head)
    with pytest.raises(ValueError, match=r"built from a backbone module instance.*timm model name"):
        model.save_pretrained(tmp_path / "saved")
    assert list(tmp_path.iterdir()) == [], "a refused save left files behind"
