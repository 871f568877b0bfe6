"""Converting checkpoints of the official CPRFL code, checked against the official forward.

The synthetic checkpoint is built here from the official key layout (torchvision ResNet in an
``nn.Sequential`` named ``Backbone``, ``fc``, ``label_emb``, the PreNorm transformer
``attention`` and a small OpenAI-CLIP-style text tower ``text_encoder``). The reference forward
below is written from the official equations, independently of cprfl_zoo.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn

from cprfl_zoo import CPRFL, convert_official_checkpoint
from cprfl_zoo.class_lists import COCO_LT_CLASSES, VOC_LT_CLASSES
from cprfl_zoo.convert import convert_official_state_dict, load_official_state_dict

HEADS = 4  # official head_num (shapes alone cannot tell it)
DIM_HEAD = 16
DIM = 64  # official feature_d
MLP_DIM = 48
TEXT = {"width": 128, "layers": 2, "context": 16, "out": 32}  # tiny CLIP text tower, 2 heads


# ---------------------------------------------------------------------- the official model's layout
class _PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.to_qkv = nn.Linear(dim, heads * dim_head * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(0.1))


class _FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, dim)
        )


class _Transformer(nn.Module):
    def __init__(self, dim: int, depth: int = 1) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    _PreNorm(dim, _Attention(dim, HEADS, DIM_HEAD)),
                    _PreNorm(dim, _FeedForward(dim, MLP_DIM)),
                ]
            )
            for _ in range(depth)
        )


class _ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, width // 64)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                c_fc=nn.Linear(width, width * 4), gelu=nn.GELU(), c_proj=nn.Linear(width * 4, width)
            )
        )
        self.ln_2 = nn.LayerNorm(width)


class _TextEncoder(nn.Module):
    def __init__(self, width: int, layers: int, context: int, out: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(49408, width)
        self.positional_embedding = nn.Parameter(torch.randn(context, width) * 0.01)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.Sequential(
            *[_ResidualAttentionBlock(width) for _ in range(layers)]
        )
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, out) * width**-0.5)


def _randomise(module: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name or "ln_" in name:
                p.copy_(
                    (1.0 if name.endswith("weight") else 0.0)
                    + 0.1 * torch.randn(p.shape, generator=gen)
                )
            elif p.ndim >= 2 and "embedding" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) * p.shape[-1] ** -0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def _official_backbone(depth: int, gen: torch.Generator) -> nn.Sequential:
    resnet = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    with torch.no_grad():
        for name, m in resnet.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                last = name.endswith(("bn3", "downsample.1")) or (
                    depth < 50 and name.endswith("bn2")
                )
                scale = 0.2 if last else 1.0
                m.weight.copy_(scale * (0.5 + torch.rand(m.weight.shape, generator=gen)))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    # exactly as the official MyModel keeps it
    return nn.Sequential(
        resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool,
        resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4,
    )  # fmt: skip


class _OfficialLayout(nn.Module):
    def __init__(self, depth: int, linear_pi: bool, gen: torch.Generator, vsi_depth: int = 1):
        super().__init__()
        self.Backbone = _official_backbone(depth, gen)
        width = 2048 if depth >= 50 else 512
        self.attention = _Transformer(DIM, vsi_depth)
        self.text_encoder = _TextEncoder(
            TEXT["width"], TEXT["layers"], TEXT["context"], TEXT["out"]
        )
        self.fc = nn.Sequential(nn.Linear(width, DIM))
        if linear_pi:
            self.label_emb = nn.Linear(TEXT["out"], DIM)
        else:
            self.label_emb = nn.Sequential(
                nn.Linear(TEXT["out"], DIM // 2), nn.Identity(), nn.GELU(), nn.Linear(DIM // 2, DIM)
            )
        for part in (self.attention, self.text_encoder, self.fc, self.label_emb):
            _randomise(part, gen)


def _official(depth: int = 101, linear_pi: bool = False, seed: int = 0) -> tuple[dict, nn.Module]:
    """A synthetic official state dict and its backbone (the torchvision Sequential), in eval."""
    layout = _OfficialLayout(depth, linear_pi, torch.Generator().manual_seed(seed)).eval()
    return {k: v.detach() for k, v in layout.state_dict().items()}, layout.Backbone


def _save_checkpoint(sd: dict, path: Path, prefix: str = "module.") -> Path:
    # what the official training loop writes (DataParallel prefix included)
    torch.save(
        {
            "epoch": 7,
            "state_dict": {prefix + k: v for k, v in sd.items()},
            "score": 61.2,
            "model": "Encoder_nonlinear_d8_2048_mlp2048_0.5x",
        },
        path,
    )
    return path


# ---------------------------------------------------------------------- the official forward
def _ln(x: torch.Tensor, sd: dict, prefix: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[prefix + "weight"], sd[prefix + "bias"])


def _lin(x: torch.Tensor, sd: dict, prefix: str) -> torch.Tensor:
    return x @ sd[prefix + "weight"].T + sd.get(prefix + "bias", 0)


def _heads(x: torch.Tensor, h: int) -> torch.Tensor:  # b n (h d) -> b h n d
    b, n, _ = x.shape
    return x.reshape(b, n, h, -1).transpose(1, 2)


def _attend(q, k, v, mask=None) -> torch.Tensor:
    dots = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    if mask is not None:
        dots = dots + mask
    out = dots.softmax(-1) @ v
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d)


def official_text_features(sd: dict, class_names: list[str]) -> torch.Tensor:
    """OpenAI CLIP's text encoder on "a photo of a {name}." (TextEncoder.forward)."""
    prompts = [f"a photo of a {c.replace('_', ' ')}." for c in class_names]
    text = open_clip.tokenize(
        prompts, context_length=sd["text_encoder.positional_embedding"].shape[0]
    )
    p = "text_encoder."
    x = sd[p + "token_embedding.weight"][text] + sd[p + "positional_embedding"]
    n, width = x.shape[1], x.shape[2]
    causal = torch.full((n, n), float("-inf")).triu(1)
    layer = 0
    while f"{p}transformer.resblocks.{layer}.ln_1.weight" in sd:
        b = f"{p}transformer.resblocks.{layer}."
        h = _ln(x, sd, b + "ln_1.")
        qkv = h @ sd[b + "attn.in_proj_weight"].T + sd[b + "attn.in_proj_bias"]
        q, k, v = (_heads(t, width // 64) for t in qkv.chunk(3, -1))
        x = x + _lin(_attend(q, k, v, causal), sd, b + "attn.out_proj.")
        h = _lin(_ln(x, sd, b + "ln_2."), sd, b + "mlp.c_fc.")
        x = x + _lin(h * torch.sigmoid(1.702 * h), sd, b + "mlp.c_proj.")  # QuickGELU
        layer += 1
    x = _ln(x, sd, p + "ln_final.")
    return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ sd[p + "text_projection"]


def official_logits(
    sd: dict, backbone: nn.Module, images: torch.Tensor, class_names: list[str]
) -> torch.Tensor:
    """MyModel.forward in eval mode (dropout off), from the official equations."""
    w = official_text_features(sd, class_names)
    if "label_emb.weight" in sd:
        attr = _lin(w, sd, "label_emb.")
    else:
        attr = _lin(F.gelu(_lin(w, sd, "label_emb.0.")), sd, "label_emb.3.")
    feats = backbone(images)
    feats = feats.view(feats.size(0), feats.size(1), -1).transpose(-1, -2)
    feats = _lin(feats, sd, "fc.0.")
    x = torch.cat([feats, attr.expand(images.shape[0], -1, -1)], 1)
    a = "attention.layers.0."
    h = _ln(x, sd, a + "0.norm.")  # PreNorm, and no residual connection
    qkv = h @ sd[a + "0.fn.to_qkv.weight"].T
    q, k, v = (_heads(t, HEADS) for t in qkv.chunk(3, -1))
    x = _lin(_attend(q, k, v), sd, a + "0.fn.to_out.0.")
    h = _ln(x, sd, a + "1.norm.")
    x = _lin(F.gelu(_lin(h, sd, a + "1.fn.net.0.")), sd, a + "1.fn.net.3.")
    classify = x[:, -attr.shape[0] :, :]
    return torch.matmul(classify.unsqueeze(-2), attr.unsqueeze(-1)).squeeze(-1).squeeze(-1)


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def official() -> tuple[dict, nn.Module]:
    return _official(101)


@pytest.fixture(scope="module")
def official_sd(official) -> dict:
    return official[0]


@pytest.fixture(scope="module")
def tiny() -> tuple[dict, nn.Module]:
    return _official(18, seed=2)


@pytest.fixture
def tiny_sd(tiny) -> dict:
    return dict(tiny[0])  # a fresh dict per test; the tensors are shared and never modified


@pytest.fixture(scope="module")
def checkpoint(official_sd: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_checkpoint(official_sd, tmp_path_factory.mktemp("official") / "best.pth.tar")


@pytest.fixture(scope="module")
def converted(checkpoint: Path) -> CPRFL:
    return convert_official_checkpoint(checkpoint, "coco-lt", num_heads=HEADS)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def reference(official, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return official_logits(*official, images, list(COCO_LT_CLASSES))


@pytest.fixture(scope="module")
def tiny_reference(tiny, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return official_logits(*tiny, images, list(VOC_LT_CLASSES))


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert torch.isfinite(expected).all() and expected.std() > 0.1, "degenerate reference"
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * max(scale, 1.0))


# ---------------------------------------------------------------------- equivalence
def test_converted_logits_equal_the_official_forward(converted: CPRFL, images, reference) -> None:
    assert converted.class_names == list(COCO_LT_CLASSES)
    assert not converted.training
    with torch.no_grad():
        logits = converted(images)
    assert logits.shape == (2, 80)
    _close(logits, reference)


def test_converted_architecture_and_provenance(converted: CPRFL, checkpoint: Path) -> None:
    args = converted.model_args
    assert args["backbone"] == "resnet101"
    assert converted.pretrained_cfg["architecture"] == "cprfl_resnet101"
    assert (args["embed_dim"], args["num_heads"], args["head_dim"]) == (DIM, HEADS, DIM_HEAD)
    assert (args["mlp_hidden_dim"], args["text_dim"]) == (MLP_DIM, TEXT["out"])
    assert args["pi_linear"] is False and args["pi_mlp_ratio"] == 0.5
    cfg = converted.text_encoder_cfg
    assert cfg["templates"] == ["a photo of a {}."]
    assert cfg["text_transform"] == "underscores-to-spaces"
    assert cfg["weights"].startswith("official-cprfl-checkpoint-sha256:")
    import hashlib

    assert cfg["weights"].endswith(hashlib.sha256(checkpoint.read_bytes()).hexdigest())
    assert "text_tower" not in cfg and converted.text_tower is None


def test_class_embeddings_are_the_tuned_towers_eot_features(converted: CPRFL, official_sd) -> None:
    expected = official_text_features(official_sd, list(COCO_LT_CLASSES))
    torch.testing.assert_close(converted.class_embeddings, expected, rtol=1e-5, atol=1e-5)
    # underscores became spaces: "traffic_light" is encoded as "traffic light"
    spaced = official_text_features(official_sd, ["traffic light"])
    torch.testing.assert_close(converted.class_embeddings[9:10], spaced, rtol=1e-5, atol=1e-5)


def test_official_preprocessing_is_recorded(converted: CPRFL) -> None:
    data = timm.data.resolve_model_data_config(converted)
    assert data["input_size"] == (3, 448, 448)
    assert tuple(data["mean"]) == (0.0, 0.0, 0.0) and tuple(data["std"]) == (1.0, 1.0, 1.0)
    # timm's eval transform equals the official one: Resize((448, 448)) then ToTensor
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (300, 500, 3), dtype=np.uint8))
    ours = timm.data.create_transform(**data, is_training=False)(image)
    official = torchvision.transforms.Compose(
        [torchvision.transforms.Resize((448, 448)), torchvision.transforms.ToTensor()]
    )(image)
    torch.testing.assert_close(ours, official, rtol=0, atol=1e-6)


def test_converted_model_saves_and_loads(
    converted: CPRFL, tmp_path: Path, images, reference, monkeypatch
) -> None:
    folder = converted.save_pretrained(tmp_path / "cprfl-resnet101-coco-lt")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architecture"] == "cprfl_resnet101"
    assert cfg["label_names"] == list(COCO_LT_CLASSES)
    assert cfg["pretrained_cfg"]["mean"] == [0.0, 0.0, 0.0]
    assert cfg["pretrained_cfg"]["crop_mode"] == "squash"

    def forbidden(*args, **kwargs):
        raise AssertionError("loading must not build CLIP")

    monkeypatch.setattr(open_clip, "create_model", forbidden)
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    with torch.no_grad():
        _close(loaded(images), reference)
    assert tuple(timm.data.resolve_model_data_config(loaded)["std"]) == (1.0, 1.0, 1.0)


def test_bare_and_prefixed_state_dicts(tiny_sd: dict, tmp_path: Path) -> None:
    path = tmp_path / "bare.pth"
    torch.save(tiny_sd, path)
    assert load_official_state_dict(path).keys() == tiny_sd.keys()
    prefixed = load_official_state_dict(_save_checkpoint(tiny_sd, tmp_path / "p.pth"))
    assert prefixed.keys() == tiny_sd.keys()
    assert all(torch.equal(prefixed[k], v) for k, v in tiny_sd.items())


def test_linear_pi_variant_and_resnet18_layout(images, tmp_path: Path) -> None:
    sd, backbone = _official(18, linear_pi=True, seed=1)
    model = convert_official_checkpoint(
        _save_checkpoint(sd, tmp_path / "voc.pth"), "voc-lt", num_heads=HEADS
    )
    assert model.model_args["backbone"] == "resnet18" and model.model_args["pi_linear"] is True
    assert model.pretrained_cfg["architecture"] == "cprfl"
    with torch.no_grad():
        expected = official_logits(sd, backbone, images, list(VOC_LT_CLASSES))
        _close(model(images), expected)


# ---------------------------------------------------------------------- trainable text tower
def test_trainable_text_encoder_mode(tiny_sd, images, tiny_reference, tmp_path: Path, monkeypatch):
    model = convert_official_state_dict(
        tiny_sd, "voc-lt", num_heads=HEADS, trainable_text_encoder=True
    )
    assert model.text_tower is not None
    assert model.text_encoder_cfg["trainable"] is True
    assert model.model_args["trainable_text_encoder"] is True
    with torch.no_grad():
        _close(model(images), tiny_reference)
    # the tuned tower is part of the model and receives gradients, as in the official code
    model(images[:1]).sum().backward()
    grad = model.text_tower.text.token_embedding.weight.grad
    assert grad is not None and grad.abs().sum() > 0

    def forbidden(*args, **kwargs):
        raise AssertionError("loading must not build CLIP")

    folder = model.save_pretrained(tmp_path / "trainable")
    monkeypatch.setattr(open_clip, "create_model", forbidden)
    loaded = CPRFL.from_pretrained(folder).eval()
    assert loaded.text_tower is not None
    with torch.no_grad():
        _close(loaded(images), tiny_reference)


# ---------------------------------------------------------------------- bad checkpoints
def test_unknown_tensor_is_named(tiny_sd) -> None:
    tiny_sd["extra_head.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"tensors the official CPRFL model does not: extra_head"):
        convert_official_state_dict(tiny_sd, "voc-lt", num_heads=HEADS)


def test_missing_backbone_tensor_is_named(tiny_sd) -> None:
    del tiny_sd["Backbone.7.1.conv2.weight"]
    with pytest.raises(ValueError, match=r"missing tensors: backbone\.layer4\.1\.conv2\.weight$"):
        convert_official_state_dict(tiny_sd, "voc-lt", num_heads=HEADS)


def test_missing_head_tensor_is_named(tiny_sd) -> None:
    del tiny_sd["fc.0.weight"]
    with pytest.raises(ValueError, match=r"has no tensor 'fc\.0\.weight'"):
        convert_official_state_dict(tiny_sd, "voc-lt", num_heads=HEADS)


def test_unsupported_variants_are_explained(tiny_sd) -> None:
    deep = dict(tiny_sd)
    deep["attention.layers.1.0.norm.weight"] = torch.ones(DIM)
    with pytest.raises(ValueError, match=r"deeper than one layer \(attention\.layers\.1\.0"):
        convert_official_state_dict(deep, "voc-lt")
    tiny_sd["attention.layers.0.0.fn.to_out.3.weight"] = torch.zeros(DIM, 2 * HEADS * DIM_HEAD)
    with pytest.raises(ValueError, match="out2_neck"):
        convert_official_state_dict(tiny_sd, "voc-lt")
    del tiny_sd["attention.layers.0.0.fn.to_out.3.weight"]
    with pytest.raises(ValueError, match=r"inner width 64 is not divisible by num_heads=3"):
        convert_official_state_dict(tiny_sd, "voc-lt", num_heads=3)


def test_backbone_that_is_no_resnet(tiny_sd) -> None:
    sd = {k: v for k, v in tiny_sd.items() if not k.startswith("Backbone.6.1.")}
    with pytest.raises(ValueError, match=r"\[2, 2, 1, 2\] basic blocks per stage"):
        convert_official_state_dict(sd, "voc-lt")


def test_bad_text_tower(tiny_sd) -> None:
    sd = {k: v for k, v in tiny_sd.items() if not k.startswith("text_encoder.")}
    with pytest.raises(ValueError, match=r"no text_encoder\.\* tensors"):
        convert_official_state_dict(sd, "voc-lt")
    sd = dict(tiny_sd)
    del sd["text_encoder.transformer.resblocks.1.ln_2.bias"]
    with pytest.raises(ValueError, match=r"text_encoder\.transformer\.resblocks\.1\.ln_2\.bias"):
        convert_official_state_dict(sd, "voc-lt", num_heads=HEADS)
    sd = dict(tiny_sd)
    sd["text_encoder.token_embedding.weight"] = torch.zeros(49408, 100)
    with pytest.raises(ValueError, match="width a multiple of 64"):
        convert_official_state_dict(sd, "voc-lt", num_heads=HEADS)


def test_bad_class_names(tiny_sd) -> None:
    with pytest.raises(ValueError, match="unknown class list 'coco'"):
        convert_official_state_dict(tiny_sd, "coco")
    with pytest.raises(ValueError, match="duplicate class name 'cat'"):
        convert_official_state_dict(tiny_sd, ["cat", "cat"])


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_files_that_are_not_weights_only_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_official_checkpoint(tmp_path / "nope.pth", "coco-lt")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ValueError, match=r"cannot read .* as a weights-only torch checkpoint"):
        convert_official_checkpoint(garbage, "coco-lt")
    # a pickle that would run code is refused, and the code never runs
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": _Exploit(tmp_path / "pwned")}, evil)
    with pytest.raises(ValueError, match="weights-only"):
        convert_official_checkpoint(evil, "coco-lt")
    assert not (tmp_path / "pwned").exists()
    torch.save({"state_dict": {"fc.0.weight": [1, 2]}}, tmp_path / "lists.pth")
    with pytest.raises(ValueError, match=r"entry 'fc\.0\.weight' of the state dict is list"):
        convert_official_checkpoint(tmp_path / "lists.pth", "coco-lt")


# ---------------------------------------------------------------------- command line
def test_cli_convert_official(tiny, images, tiny_reference, tmp_path: Path, capsys) -> None:
    from cprfl_zoo.cli import main

    ckpt = _save_checkpoint(tiny[0], tmp_path / "voc_best.pth.tar")
    out = tmp_path / "cprfl-resnet18-voc-lt"
    argv = ["convert-official", str(ckpt), "--classes", "voc-lt", "--out", str(out)]
    assert main([*argv, "--num-heads", str(HEADS), "--repo-id", "me/voc"]) == 0
    assert "20 classes" in capsys.readouterr().out
    loaded = CPRFL.from_pretrained(out).eval()
    assert loaded.class_names == list(VOC_LT_CLASSES)
    with torch.no_grad():
        _close(loaded(images), tiny_reference)
    assert 'from_pretrained("me/voc")' in (out / "README.md").read_text()
    # an existing model is not replaced silently; errors are reported, not raised
    assert main([*argv, "--num-heads", str(HEADS)]) == 1
    assert "already holds a saved model; pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--num-heads", "3", "--overwrite"]) == 1
    assert "not divisible by num_heads=3" in capsys.readouterr().err
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n\n")
    assert main([*argv, "--classes", str(names), "--num-heads", str(HEADS), "--overwrite"]) == 0
    assert CPRFL.from_pretrained(out).class_names == ["cat", "dog"]


def test_linear_pi_with_dropout_keys_map_to_the_linear_pi() -> None:
    # label_emb_drop=True with nonlinear=False: Sequential(Linear, Dropout) -> label_emb.0.*
    from cprfl_zoo.convert import _map_head

    sd = {"label_emb.0.weight": torch.zeros(4, 3), "label_emb.0.bias": torch.zeros(4)}
    mapped, linear, unknown = _map_head(sd)
    assert linear is True and unknown == []
    assert mapped.keys() == {"prompt_init.net.weight", "prompt_init.net.bias"}


def test_a_folder_is_not_a_checkpoint(tmp_path: Path) -> None:
    # used to be reported as "does not exist"
    with pytest.raises(IsADirectoryError, match=r"official checkpoint .* is a folder; expected"):
        load_official_state_dict(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_official_state_dict(tmp_path / "missing.pth")


@pytest.mark.parametrize(
    ("heads", "match"),
    [
        (0, "num_heads must be a positive int, got 0"),
        ("8", r"num_heads must be a positive int, got '8'"),
    ],
)
def test_num_heads_is_validated(tiny_sd: dict, heads, match) -> None:
    with pytest.raises(ValueError, match=match):
        convert_official_state_dict(tiny_sd, "voc-lt", num_heads=heads)
