from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from cprfl_zoo.backbone import backbone_tokens, create_backbone, feature_layout


@pytest.mark.parametrize(
    ("name", "layout", "tokens"),
    [
        ("test_resnet", "NCHW", 25),  # 160 px / 32
        ("test_vit", "NLC", 100),  # 160 px / 16, class token dropped
        ("test_vit2", "NLC", 100),
        ("test_mambaout", "NHWC", 25),
    ],
)
def test_token_count_and_layout(name, layout, tokens):
    bb = create_backbone(name)
    assert feature_layout(bb) == layout or (layout == "NLC" and bb.num_prefix_tokens > 0)
    out = backbone_tokens(bb, bb.forward_features(torch.randn(2, 3, 160, 160)))
    assert out.shape == (2, tokens, bb.num_features)


def test_prefix_tokens_are_the_ones_dropped():
    bb = create_backbone("test_vit", reg_tokens=3)
    assert bb.num_prefix_tokens == 4
    feats = bb.forward_features(torch.randn(1, 3, 160, 160))
    torch.testing.assert_close(backbone_tokens(bb, feats), feats[:, bb.num_prefix_tokens :])


def test_nchw_tokens_are_row_major_positions():
    bb = create_backbone("test_resnet")
    feats = torch.arange(2 * bb.num_features * 6, dtype=torch.float32).reshape(
        2, bb.num_features, 2, 3
    )
    tokens = backbone_tokens(bb, feats)
    torch.testing.assert_close(tokens[1, 4], feats[1, :, 1, 1])


def test_no_classifier_and_no_pooling():
    bb = create_backbone("test_resnet")
    assert bb.num_classes == 0
    assert isinstance(bb.get_classifier(), nn.Identity)


def test_resnet101_at_448_gives_196_tokens_of_2048():
    bb = create_backbone("resnet101").eval()
    with torch.no_grad():
        tokens = backbone_tokens(bb, bb.forward_features(torch.randn(1, 3, 448, 448)))
    assert tokens.shape == (1, 196, 2048)


def test_unknown_backbone_name_is_named():
    with pytest.raises(ValueError, match="unknown backbone 'resnet_does_not_exist'"):
        create_backbone("resnet_does_not_exist")


def test_module_without_contract_is_rejected():
    with pytest.raises(ValueError, match="no forward_features"):
        create_backbone(nn.Linear(3, 3))

    class NoWidth(nn.Module):
        def forward_features(self, x):
            return x

    with pytest.raises(ValueError, match="num_features"):
        create_backbone(NoWidth())


def test_module_with_kwargs_is_rejected():
    with pytest.raises(ValueError, match="only be used with a timm model name"):
        create_backbone(timm.create_model("test_resnet", num_classes=0), img_size=224)


def test_width_mismatch_is_reported():
    bb = create_backbone("test_resnet")
    with pytest.raises(ValueError, match="declares num_features"):
        backbone_tokens(bb, torch.randn(1, bb.num_features + 1, 2, 2).transpose(1, 3)[..., :5])


@pytest.mark.parametrize("name", ["test_convnext", "test_mambaout", "test_resnet", "test_vit"])
def test_every_trainable_parameter_gets_a_gradient(name):
    """DistributedDataParallel needs this; head-only norms (ConvNeXt, MambaOut) are frozen."""
    bb = create_backbone(name)
    backbone_tokens(bb, bb.forward_features(torch.randn(1, 3, 64, 64))).sum().backward()
    missing = [n for n, p in bb.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert any(p.grad is not None for p in bb.parameters())
