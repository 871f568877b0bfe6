import numpy as np
import pytest
import timm
import torch
from PIL import Image

from cprfl_zoo.data import RandomCutout, create_transforms


def test_random_cutout_fills_one_box():
    img = Image.new("RGB", (40, 20), (10, 20, 30))
    cutout = RandomCutout(0.5)
    torch.manual_seed(0)
    box, colour = cutout.get_params(40, 20)
    torch.manual_seed(0)
    out = cutout(img)
    left, top, right, bottom = box
    assert 0 <= left < right <= 40 and 0 <= top < bottom <= 20
    assert right - left <= 20 and bottom - top <= 10
    pixels = torch.from_numpy(np.array(out))
    inside = torch.zeros(20, 40, dtype=torch.bool)
    inside[top:bottom, left:right] = True
    assert (pixels[inside] == torch.tensor(colour)).all()
    assert (pixels[~inside] == torch.tensor([10, 20, 30])).all()
    assert img.getpixel((0, 0)) == (10, 20, 30)  # input untouched
    assert RandomCutout(0.5, p=0.0)(img) is img
    with pytest.raises(ValueError, match="cutout factor must be in"):
        RandomCutout(0.0)
    with pytest.raises(ValueError, match="probability p must be in"):
        RandomCutout(0.5, p=2)


def test_random_cutout_box_size_away_from_border():
    cutout = RandomCutout(0.5)
    sizes = set()
    torch.manual_seed(1)
    for _ in range(50):
        (left, top, right, bottom), _ = cutout.get_params(100, 60)
        if left > 0 and right < 100 and top > 0 and bottom < 60:  # not clipped
            sizes.add((right - left, bottom - top))
    assert sizes == {(50, 30)}


@pytest.fixture(scope="module")
def tiny_model():
    return timm.create_model("test_resnet", pretrained=False)


def test_timm_recipe_uses_model_config(tiny_model):
    cfg = timm.data.resolve_model_data_config(tiny_model)
    img = Image.new("RGB", (200, 150), (128, 64, 32))
    eval_tf = create_transforms(tiny_model)
    out = eval_tf(img)
    assert out.shape == (3, *cfg["input_size"][1:])
    expected = (torch.tensor([128, 64, 32]) / 255 - torch.tensor(cfg["mean"])) / torch.tensor(
        cfg["std"]
    )
    torch.testing.assert_close(out[:, 5, 5], expected, atol=1e-2, rtol=0)
    train_tf = create_transforms(tiny_model, is_training=True, img_size=64, re_prob=0.25)
    assert train_tf(img).shape == (3, 64, 64)
    assert "RandomErasing" in repr(train_tf)


def test_timm_recipe_on_a_cprfl_model():
    from cprfl_zoo import create_cprfl

    model = create_cprfl(
        "test_resnet",
        class_names=list("abcde"),
        text_embeddings=torch.randn(5, 16),
        pretrained=False,
        embed_dim=32,
        num_heads=2,
        head_dim=8,
        mlp_hidden_dim=24,
    )
    cfg = timm.data.resolve_model_data_config(model)
    out = create_transforms(model)(Image.new("RGB", (50, 40)))
    assert out.shape == (3, *cfg["input_size"][1:])


def test_cprfl_recipe(tiny_model):
    img = Image.new("RGB", (30, 20), (255, 255, 255))
    eval_tf = create_transforms(tiny_model, recipe="cprfl", normalize=False)
    out = eval_tf(img)
    assert out.shape == (3, 448, 448)
    assert torch.allclose(out, torch.ones_like(out))  # official preprocessing: [0, 1], no norm
    cfg = timm.data.resolve_model_data_config(tiny_model)
    normed = create_transforms(tiny_model, recipe="cprfl", img_size=32)(img)
    expected = (1 - torch.tensor(cfg["mean"])) / torch.tensor(cfg["std"])
    torch.testing.assert_close(normed[:, 0, 0], expected)
    train_tf = create_transforms(None, recipe="cprfl", is_training=True, img_size=(32, 48))
    names = [type(t).__name__ for t in train_tf.transforms]
    assert names == ["Resize", "RandomCutout", "RandAugment", "ToTensor", "Normalize"]
    torch.manual_seed(0)
    assert train_tf(img).shape == (3, 32, 48)
    plain = create_transforms(recipe="cprfl", is_training=True, rand_augment=None, img_size=16)
    assert [type(t).__name__ for t in plain.transforms][:3] == [
        "Resize",
        "RandomCutout",
        "ToTensor",
    ]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"recipe": "asl"}, ValueError, "recipe must be 'timm' or 'cprfl'"),
        ({"model": None}, ValueError, "timm recipe needs a model"),
        ({"model": 3}, TypeError, "model must be an nn.Module"),
        ({"img_size": (32,)}, ValueError, "img_size must be an int or"),
        ({"img_size": 0}, ValueError, "img_size must be an int or"),
        ({"recipe": "cprfl", "hflip": 0.5}, ValueError, r"no timm arguments; got \['hflip'\]"),
        ({"mean": (0.5, 0.5)}, ValueError, "mean and std need 3 values"),
        ({"std": (0.5, 0.0, 0.5), "img_size": 8}, ValueError, "mean and std need 3 values"),
        (
            {"recipe": "cprfl", "is_training": True, "rand_augment": "augmix-m5"},
            ValueError,
            "rand_augment must be a timm 'rand-...' string",
        ),
        ({"recipe": "cprfl", "is_training": True, "cutout_factor": 1.5}, ValueError, "cutout"),
    ],
)
def test_create_transforms_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        create_transforms(**kwargs)
