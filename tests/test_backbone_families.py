"""Every timm backbone family, one small model each: create, forward, backward, save, load, deploy.

Parametrised like timm's own ``tests/test_models.py``: one case per family, built offline
(``pretrained=False``) at a small size. Each case checks the local-token count against
a count made by hand (prefix tokens dropped, feature maps flattened), that the loss's gradient
reaches backbone and head (and every trainable parameter, as DistributedDataParallel needs),
that ``save_pretrained`` + ``from_pretrained`` and ``deploy()`` give
the same logits, and, for one family of each token layout, that the ONNX export does too.
``docs/src/backbones.md`` lists the same families.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import TINY_HEAD

from cprfl_zoo import CPRFL, create_cprfl
from cprfl_zoo.export import export_onnx

NAMES = ["cat", "dog", "bird"]


@dataclass(frozen=True)
class Family:
    """One timm family: the model that stands for it and what it must give at ``size`` px."""

    family: str
    model: str
    tokens: int  # local tokens at size x size, counted by hand from the model's total stride
    size: int = 64
    img_size: bool = False  # the model takes img_size= (ViTs and other fixed-grid models)
    kwargs: dict[str, Any] = field(default_factory=dict)
    onnx: bool = False  # also exported to ONNX (a few seconds each: one per token layout)


FAMILIES = [
    # CNNs and other NCHW feature maps: stride 32 -> 2 x 2 positions at 64 px.
    Family("resnet", "test_resnet", 4),
    Family("resnet-d (deep stem, avg-down)", "resnet10t", 4),
    Family("regnet", "regnetx_002", 4),
    Family("efficientnet", "test_efficientnet", 4, onnx=True),
    Family("mobilenetv3", "mobilenetv3_small_050", 4),
    Family("convnext", "test_convnext", 4),
    Family("densenet", "densenet121", 4),
    Family("ghostnet", "ghostnet_050", 4),
    Family("rexnet", "rexnet_100", 4),
    Family("dla", "dla46_c", 4),
    Family("cspnet", "cs3darknet_s", 4),
    Family("nfnet", "test_nfnet", 4),
    Family("hrnet", "hrnet_w18_small", 4),
    Family("byobnet", "test_byobnet", 4),
    Family("mobilevit", "mobilevit_xxs", 4),
    Family("vovnet", "ese_vovnet19b_slim_dw", 4),
    Family("repvit", "repvit_m0_9", 4),
    Family("fastvit", "fastvit_t8", 4),
    Family("efficientvit (MIT; cannot be built unpooled)", "efficientvit_b0", 4),
    Family("inception_next (MetaNeXt)", "inception_next_atto", 4),
    Family("maxvit", "test_maxvit", 4, img_size=True),
    Family("coatnet", "test_coatnet", 4, img_size=True),
    Family("poolformer (MetaFormer)", "poolformer_s12", 4),
    Family("tiny_vit", "tiny_vit_5m_224", 4),
    Family("edgenext", "edgenext_xx_small", 4),
    Family("pvt_v2", "pvt_v2_b0", 4),
    Family(
        "davit",
        "davit_tiny",
        4,
        kwargs={"depths": (1, 1, 1, 1), "embed_dims": (32, 64, 64, 64), "num_heads": (1, 2, 2, 2)},
    ),
    Family(
        "sam vit (NCHW neck)", "samvit_base_patch16_224", 16, img_size=True, kwargs={"depth": 1}
    ),
    # NHWC feature maps.
    Family(
        "swin (NHWC)",
        "swin_tiny_patch4_window7_224",
        4,
        img_size=True,
        kwargs={
            "window_size": 4,
            "depths": (1, 1, 1, 1),
            "embed_dim": 32,
            "num_heads": (1, 2, 2, 2),
        },
    ),
    Family("mambaout (NHWC)", "test_mambaout", 4, onnx=True),
    # Token sequences (B, N, C): patch 16 -> 4 x 4 = 16 local tokens at 64 px.
    Family("vit, class token", "test_vit", 16, img_size=True),
    Family("vit, no class token", "test_vit", 16, img_size=True, kwargs={"class_token": False}),
    Family(
        "vit, 4 registers, avg pool + fc_norm",
        "vit_betwixt_patch16_reg4_gap_256",
        16,
        img_size=True,
        kwargs={"depth": 1},
        onnx=True,
    ),
    Family(
        "deit distilled (class + dist tokens)",
        "deit_tiny_distilled_patch16_224",
        16,
        img_size=True,
        kwargs={"depth": 1},
        onnx=True,
    ),
    Family("vit relpos", "test_vit_relpos", 16, img_size=True),
    Family(
        "vit hybrid (resnet stem)", "vit_tiny_r_s16_p8_224", 4, img_size=True, kwargs={"depth": 1}
    ),
    Family("eva02", "eva02_tiny_patch14_224", 16, size=56, img_size=True, kwargs={"depth": 1}),
    Family(
        "beit",
        "beit_base_patch16_224",
        16,
        img_size=True,
        kwargs={"depth": 1, "embed_dim": 64, "num_heads": 2},
    ),
    Family("cait", "cait_xxs24_224", 16, img_size=True, kwargs={"depth": 1, "depth_token_only": 1}),
    Family("xcit", "xcit_nano_12_p16_224", 16, img_size=True, kwargs={"depth": 1}),
    Family("convit", "convit_tiny", 16, img_size=True, kwargs={"depth": 2, "local_up_to_layer": 1}),
    Family("tnt", "tnt_s_patch16_224", 16, img_size=True, kwargs={"depth": 1}),
    Family("gmlp (MLP-Mixer)", "gmlp_ti16_224", 16, img_size=True),
    Family("levit (flattened stride-16 tokens)", "levit_128s", 4, size=128, img_size=True),
    Family("twins", "twins_svt_small", 4, img_size=True, kwargs={"depths": (1, 1, 1, 1)}),
    Family(
        "hiera",
        "hiera_tiny_224",
        4,
        img_size=True,
        kwargs={"embed_dim": 32, "num_heads": 1, "stages": (1, 1, 1, 1)},
    ),
]


def create(case: Family) -> CPRFL:
    """The one place the tests build a family's model (offline: no backbone weights)."""
    torch.manual_seed(0)
    extra = {"img_size": case.size} if case.img_size else {}
    return create_cprfl(
        case.model,
        class_names=NAMES,
        text_embeddings=torch.randn(len(NAMES), 16),
        pretrained=False,
        backbone_kwargs=dict(case.kwargs),
        **extra,
        **TINY_HEAD,
    )


def images(case: Family, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, case.size, case.size, generator=torch.Generator().manual_seed(n))


def _grad_norm(module: torch.nn.Module) -> float:
    grads = [p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None]
    return sum(grads)


@pytest.mark.parametrize("case", FAMILIES, ids=[f.family for f in FAMILIES])
def test_family_forward_backward_save_load_deploy(case: Family, tmp_path):
    model = create(case)
    x = images(case)

    tokens = model.forward_features(x)
    assert tokens.shape == (2, case.tokens, model.num_features)
    logits = model.forward_head(tokens)
    assert logits.shape == (2, len(NAMES)) and torch.isfinite(logits).all()
    logits.square().mean().backward()
    assert _grad_norm(model.backbone) > 0
    for head in (model.visual_proj, model.prompt_init, model.vsi):
        assert _grad_norm(head) > 0
    # DistributedDataParallel's contract: what forward_head alone uses is frozen, not left idle.
    idle = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert idle == []

    model.eval()
    with torch.no_grad():
        expected = model(x)
        loaded = CPRFL.from_pretrained(model.save_pretrained(tmp_path / "saved")).eval()
        torch.testing.assert_close(loaded(x), expected)
        torch.testing.assert_close(model.deploy()(x), expected, rtol=1e-4, atol=1e-5)


ONNX_FAMILIES = [f for f in FAMILIES if f.onnx]


@pytest.mark.parametrize("case", ONNX_FAMILIES, ids=[f.family for f in ONNX_FAMILIES])
def test_family_onnx_export_gives_the_same_logits(case: Family, tmp_path):
    model = create(case).eval()
    path = export_onnx(model, tmp_path / "model.onnx", input_size=(3, case.size, case.size))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = images(case, n=3)
    (logits,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("pit_ti_224", "only the class"),
        ("pit_ti_distilled_224", "only the class"),
        ("crossvit_tiny_240", "two token branches of different widths"),
        ("efficientvim_m1", "hidden-state buffers"),
    ],
)
def test_family_that_cannot_work_is_refused_at_creation_saying_why(name, why):
    with pytest.raises(ValueError, match=f"backbone '{name}'.*cannot be used by CPRFL.*{why}"):
        create(Family(name, name, 0))


def test_docs_list_every_family_tested():
    page = (Path(__file__).resolve().parents[1] / "docs" / "src" / "backbones.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| ") and "`" in line]
    for case in FAMILIES:
        assert any(f"`{case.model}`" in row for row in rows), case.family
    onnx_rows = [row for row in rows if row.rstrip().endswith("✓ |")]
    assert len(onnx_rows) == len(ONNX_FAMILIES)
