from __future__ import annotations

import pytest
import safetensors.torch
import timm
import torch
from torch import nn

from cprfl_zoo.backbone import backbone_tokens, create_backbone, feature_layout, num_prefix_tokens


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


def test_distilled_deit_drops_class_and_distillation_tokens():
    """Its forward_features carries two prefix tokens; building it unpooled used to fail."""
    bb = create_backbone("deit_tiny_distilled_patch16_224", img_size=64, depth=1)
    assert num_prefix_tokens(bb) == 2
    feats = bb.forward_features(torch.randn(1, 3, 64, 64))
    assert feats.shape[1] == 2 + 16
    torch.testing.assert_close(backbone_tokens(bb, feats), feats[:, 2:])


@pytest.mark.parametrize(
    ("name", "kwargs", "prefix"),
    [
        ("volo_d1_224", {"img_size": 64}, 1),  # a cls_token attribute, no num_prefix_tokens
        ("coat_lite_tiny", {"img_size": 64}, 1),  # class tokens held as cls_token1..4
    ],
)
def test_class_tokens_found_without_num_prefix_tokens(name, kwargs, prefix):
    bb = create_backbone(name, **kwargs)
    assert not isinstance(getattr(bb, "num_prefix_tokens", None), int)
    assert num_prefix_tokens(bb) == prefix
    feats = bb.forward_features(torch.randn(1, 3, 64, 64))
    torch.testing.assert_close(backbone_tokens(bb, feats), feats[:, prefix:])


def test_prefix_tokens_counted_from_cls_and_dist_token_attributes():
    class TwoPrefix(nn.Module):
        num_features = 4

        def __init__(self):
            super().__init__()
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
            self.dist_token = nn.Parameter(torch.zeros(1, 1, 4))
            self.no_token = None

    assert num_prefix_tokens(TwoPrefix()) == 2
    feats = torch.arange(2 * 7 * 4, dtype=torch.float32).reshape(2, 7, 4)
    torch.testing.assert_close(backbone_tokens(TwoPrefix(), feats), feats[:, 2:])


def test_vit_without_class_token_keeps_every_token():
    """Its default token pooling cannot be built without a class token: built unpooled instead."""
    bb = create_backbone("test_vit", img_size=64, class_token=False)
    feats = bb.forward_features(torch.randn(1, 3, 64, 64))
    assert feats.shape[1] == 16
    torch.testing.assert_close(backbone_tokens(bb, feats), feats)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("eva02_tiny_patch14_224", {"img_size": 56, "depth": 1}),  # failed to load at all
        ("vit_betwixt_patch16_reg4_gap_256", {"img_size": 64, "depth": 1}),  # fc_norm dropped
    ],
)
def test_pretrained_pooled_norm_becomes_the_token_norm(name, kwargs, tmp_path):
    """Models that normalise the pooled features (fc_norm) load every pretrained weight.

    The weights come from a local file through timm's ``pretrained_cfg_overlay``, offline.
    """
    source = timm.create_model(name, **kwargs)
    with torch.no_grad():
        source.fc_norm.weight.uniform_(0.5, 1.5)
        source.fc_norm.bias.uniform_(-0.5, 0.5)
    path = tmp_path / "weights.safetensors"
    safetensors.torch.save_model(source, str(path))
    overlay = {"file": str(path)}
    bb = create_backbone(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    torch.testing.assert_close(bb.norm.weight, source.fc_norm.weight)
    torch.testing.assert_close(bb.norm.bias, source.fc_norm.bias)
    # The same architecture as without weights, so a saved model loads back.
    assert bb.state_dict().keys() == create_backbone(name, **kwargs).state_dict().keys()
    x = torch.randn(1, 3, kwargs["img_size"], kwargs["img_size"])
    source.eval(), bb.eval()
    with torch.no_grad():
        tokens = source.forward_features(x)  # the unnormalised tokens: its norm is Identity
        expected = source.fc_norm(tokens)[:, source.num_prefix_tokens :]
        torch.testing.assert_close(backbone_tokens(bb, bb.forward_features(x)), expected)


@pytest.mark.parametrize("name", ["efficientvit_b0", "mobilenetv3_small_050", "caformer_s18"])
def test_head_only_layers_are_frozen(name):
    """MobileNetV3's conv_head (after pooling), EfficientViT's head conv, CAFormer's head norm."""
    bb = create_backbone(name)
    frozen = {n for n, p in bb.named_parameters() if not p.requires_grad}
    assert frozen
    bb.requires_grad_(True)
    backbone_tokens(bb, bb.forward_features(torch.randn(1, 3, 64, 64))).sum().backward()
    assert all(p.grad is None for n, p in bb.named_parameters() if n in frozen)


def test_unsupported_module_instance_is_refused():
    pit = timm.create_model("pit_ti_224", num_classes=0)
    with pytest.raises(ValueError, match=r"timm family 'pit'.*cannot be used by CPRFL"):
        create_backbone(pit)
