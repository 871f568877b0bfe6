import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from cprfl_zoo.class_lists import COCO_LT_CLASSES, VOC_LT_CLASSES
from cprfl_zoo.data import (
    LT_BENCHMARKS,
    MultiLabelImageList,
    RandomCutout,
    create_lt_dataset,
    create_transforms,
    default_cache_dir,
    download_lt_split,
    get_lt_benchmark,
    lt_split_path,
    read_image_list,
    read_label_file,
)

LT_SPLITS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "lt_splits"
needs_lt_splits = pytest.mark.skipif(
    not LT_SPLITS.is_dir(), reason="../shared/data/lt_splits not available"
)

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


@pytest.fixture
def image_tree(tmp_path):
    """Three small PNGs under tmp_path/images and a list file with CRLF, spaces and a blank."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    names = ["a.png", "sub/b.png", "c.png"]
    for name, colour in zip(names, COLOURS, strict=True):
        Image.new("RGB", (12, 8), colour).save(root / name)
    Image.new("L", (12, 8), 7).save(root / "gray.png")
    list_file = tmp_path / "list.txt"
    list_file.write_bytes(b"a.png 0 3 \r\nsub/b.png 3 3\r\n\r\nc.png\r\ngray.png 1")
    return root, list_file


# ---------------------------------------------------------------- list parsing


def test_read_image_list_parses_and_counts(image_tree):
    _, list_file = image_tree
    entries = read_image_list(list_file, num_classes=4)
    assert entries.paths == ("a.png", "sub/b.png", "c.png", "gray.png")
    assert entries.labels == ((0, 3), (3,), (), (1,))
    assert entries.line_numbers == (1, 2, 4, 5)
    assert entries.class_counts().tolist() == [1, 1, 0, 2]
    expected = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]]).float()
    assert torch.equal(entries.targets(), expected)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("a.png 1\nb.png 2 x\n", r"list\.txt:2: malformed line, class id 'x' is not an integer"),
        ("a.png 1\n\nb.png 1.5\n", r"list\.txt:3: malformed line, class id '1\.5'"),
        (
            "a.png 1\nb.png 0 4\n",
            r"list\.txt:2: class id 4 out of range \[0, 4\) for image 'b.png'",
        ),
        ("a.png -1\n", r"list\.txt:1: class id -1 out of range"),
        ("\n  \n", r"has no entries"),
    ],
)
def test_read_image_list_errors_name_file_and_line(tmp_path, content, match):
    list_file = tmp_path / "list.txt"
    list_file.write_text(content)
    with pytest.raises(ValueError, match=match):
        read_image_list(list_file, num_classes=4)


def test_read_image_list_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"image list not found: .*nope\.txt"):
        read_image_list(tmp_path / "nope.txt", 3)
    (tmp_path / "l.txt").write_text("a.png 0\n")
    for bad in (0, -2, 2.0, True):
        with pytest.raises(ValueError, match="num_classes must be a positive int"):
            read_image_list(tmp_path / "l.txt", bad)


def test_read_label_file(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes(b"person 0\r\ntraffic light 2\r\nbicycle 1 \r\n")
    assert read_label_file(path) == ["person", "bicycle", "traffic light"]
    path.write_text("person 0\nbike 2\n")
    with pytest.raises(ValueError, match=r"class ids must be 0\.\.C-1; missing \[1\]"):
        read_label_file(path)
    path.write_text("person 0\nbike x\n")
    with pytest.raises(ValueError, match=r"labels\.txt:2: class id 'x' is not an integer"):
        read_label_file(path)
    path.write_text("person 0\nbike 0\n")
    with pytest.raises(ValueError, match=r"labels\.txt:2: class id 0 appears twice"):
        read_label_file(path)
    path.write_text("person\n")
    with pytest.raises(ValueError, match=r"labels\.txt:1: expected 'name id'"):
        read_label_file(path)
    with pytest.raises(FileNotFoundError, match="label file not found"):
        read_label_file(tmp_path / "missing.txt")


# ---------------------------------------------------------------- dataset


def test_dataset_returns_image_tensor_and_multi_hot_target(image_tree):
    root, list_file = image_tree
    ds = MultiLabelImageList(list_file, root, num_classes=4)
    assert len(ds) == 4
    image, target = ds[0]
    assert image.shape == (3, 8, 12) and image.dtype == torch.float32
    assert torch.allclose(image[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert target.dtype == torch.float32 and target.tolist() == [1.0, 0.0, 0.0, 1.0]
    image, target = ds[-1]  # grey image converted to RGB
    assert image.shape == (3, 8, 12) and torch.allclose(image, torch.full_like(image, 7 / 255))
    assert ds.class_counts.tolist() == [1, 1, 0, 2]
    assert ds.neg_class_counts.tolist() == [3, 3, 4, 2]
    assert ds.image_path(1) == root / "sub/b.png"
    ds[1][1][3] = 5.0  # a returned target is a copy
    assert ds.targets[1, 3] == 1.0
    with pytest.raises(IndexError, match="index 4 out of range for 4 images"):
        ds[4]


def test_dataset_applies_transform_and_class_names(image_tree):
    root, list_file = image_tree
    ds = MultiLabelImageList(
        list_file, root, transform=lambda img: torch.tensor(img.size), class_names=list("wxyz")
    )
    assert ds.num_classes == 4 and ds.class_names == list("wxyz")
    assert ds[2][0].tolist() == [12, 8]


def test_dataset_missing_image_named_at_construction(image_tree):
    root, list_file = image_tree
    (root / "sub" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 4 listed images.*sub/b\.png.*list\.txt:2"):
        MultiLabelImageList(list_file, root, num_classes=4)


def test_dataset_missing_image_named_when_loading(image_tree):
    root, list_file = image_tree
    ds = MultiLabelImageList(list_file, root, num_classes=4, check_files=False)
    (root / "c.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"image not found: .*c\.png \(listed at .*:4\)"):
        ds[2]


def test_dataset_corrupt_image_named(image_tree):
    root, list_file = image_tree
    (root / "a.png").write_bytes(b"not a png")
    ds = MultiLabelImageList(list_file, root, num_classes=4)
    with pytest.raises(OSError, match=r"cannot read image .*a\.png \(listed at .*list\.txt:1\)"):
        ds[0]


def test_dataset_bad_arguments(image_tree, tmp_path):
    root, list_file = image_tree
    with pytest.raises(ValueError, match="give num_classes or class_names"):
        MultiLabelImageList(list_file, root)
    with pytest.raises(ValueError, match="class_names has 2 names but num_classes is 4"):
        MultiLabelImageList(list_file, root, 4, class_names=["a", "b"])
    with pytest.raises(ValueError, match="transform must be callable"):
        MultiLabelImageList(list_file, root, 4, transform="resize")
    with pytest.raises(FileNotFoundError, match="image root is not a folder"):
        MultiLabelImageList(list_file, tmp_path / "nowhere", 4)
    with pytest.raises(ValueError, match=r"list\.txt:1: class id 3 out of range \[0, 3\)"):
        MultiLabelImageList(list_file, root, 3)


# ---------------------------------------------------------------- benchmarks and split files


def test_benchmark_info():
    coco, voc = get_lt_benchmark("COCO_LT"), get_lt_benchmark("voc-lt")
    assert coco.class_names == COCO_LT_CLASSES and coco.num_classes == 80
    assert voc.class_names == VOC_LT_CLASSES and voc.num_classes == 20
    assert "COCO 2017" in coco.images and "VOC 2007" in voc.images
    assert set(LT_BENCHMARKS) == {"coco-lt", "voc-lt"}
    with pytest.raises(ValueError, match="unknown benchmark 'nus-lt'"):
        get_lt_benchmark("nus-lt")


@needs_lt_splits
@pytest.mark.parametrize("name", ["coco-lt", "voc-lt"])
def test_real_split_files_match_pinned_digests_and_sizes(name):
    info = LT_BENCHMARKS[name]
    for split, rel in info.files.items():
        data = (LT_SPLITS / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == info.sha256[split], rel
    for split in ("train", "test"):
        entries = read_image_list(lt_split_path(name, split, root=LT_SPLITS), info.num_classes)
        assert len(entries) == info.num_images[split]
    names = read_label_file(lt_split_path(name, "labels", root=LT_SPLITS))
    assert [n.replace(" ", "_") for n in names] == list(info.class_names)


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CPRFL_ZOO_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" / "lt_splits"
    monkeypatch.delenv("CPRFL_ZOO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "cprfl_zoo" / "lt_splits"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "cprfl_zoo" / "lt_splits"


def _mirror(tmp_path, content=b"x.jpg 0\n"):
    mirror = tmp_path / "mirror"
    (mirror / "voc").mkdir(parents=True)
    (mirror / "voc" / "voc_lt_train.txt").write_bytes(content)
    return mirror


def test_download_from_file_url_caches_atomically(tmp_path):
    mirror = _mirror(tmp_path)
    cache = tmp_path / "cache"
    path = download_lt_split(
        "voc-lt", "train", cache_dir=cache, base_url=mirror.as_uri(), verify=False
    )
    assert path == cache / "voc" / "voc_lt_train.txt"
    assert path.read_bytes() == b"x.jpg 0\n"
    assert [p.name for p in path.parent.iterdir()] == ["voc_lt_train.txt"]  # no temp files left
    # cache hit: the source is gone and the URL is unusable, the cached file is returned
    (mirror / "voc" / "voc_lt_train.txt").unlink()
    again = download_lt_split(
        "voc-lt", "train", cache_dir=cache, base_url="file:///nonexistent", verify=False
    )
    assert again == path
    assert lt_split_path("voc-lt", "train", cache_dir=cache) == path


def test_download_rejects_digest_mismatch(tmp_path):
    mirror = _mirror(tmp_path, b"tampered.jpg 0\n")
    cache = tmp_path / "cache"
    with pytest.raises(
        ValueError, match=r"voc_lt_train\.txt has SHA-256 [0-9a-f]{64}, expected 2111a5"
    ):
        download_lt_split("voc-lt", "train", cache_dir=cache, base_url=mirror.as_uri())
    assert not (cache / "voc" / "voc_lt_train.txt").exists()


def test_download_offline_error_says_what_to_do(tmp_path):
    with pytest.raises(
        OSError, match=r"could not download file:///nonexistent/coco/coco_lt_test\.txt.*copy"
    ):
        download_lt_split("coco-lt", "test", cache_dir=tmp_path, base_url="file:///nonexistent")


def test_download_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown split 'val' for voc-lt"):
        download_lt_split("voc-lt", "val", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="must be an https://, http:// or file:// URL"):
        download_lt_split("voc-lt", "train", cache_dir=tmp_path, base_url="ftp://example/x")


@needs_lt_splits
def test_verified_cache_hit_and_re_download_of_a_bad_cached_copy(tmp_path):
    cache = tmp_path / "cache"
    dest = cache / "voc" / "voc_lt_train.txt"
    dest.parent.mkdir(parents=True)
    dest.write_bytes((LT_SPLITS / "voc" / "voc_lt_train.txt").read_bytes())
    assert download_lt_split("voc-lt", "train", cache_dir=cache, base_url="file:///x") == dest
    dest.write_bytes(b"corrupted")  # a wrong cached copy is replaced from the mirror
    path = download_lt_split("voc-lt", "train", cache_dir=cache, base_url=LT_SPLITS.as_uri())
    assert path.read_bytes() == (LT_SPLITS / "voc" / "voc_lt_train.txt").read_bytes()


def test_lt_split_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not found in the cache.*download=True"):
        lt_split_path("coco-lt", "train", cache_dir=tmp_path)
    with pytest.raises(
        FileNotFoundError, match=r"coco-lt test list not found: .*coco_lt_test\.txt"
    ):
        lt_split_path("coco-lt", "test", root=tmp_path)


def test_create_lt_dataset(tmp_path):
    split_root = tmp_path / "splits"
    (split_root / "voc").mkdir(parents=True)
    (split_root / "voc" / "voc_lt_train.txt").write_text(
        "VOCdevkit/VOC2012/JPEGImages/1.jpg 14 4\nVOCdevkit/VOC2012/JPEGImages/2.jpg 19"
    )
    images = tmp_path / "voc"
    (images / "VOCdevkit/VOC2012/JPEGImages").mkdir(parents=True)
    for i in (1, 2):
        Image.new("RGB", (9, 9)).save(images / f"VOCdevkit/VOC2012/JPEGImages/{i}.jpg")
    ds = create_lt_dataset("voc-lt", "train", images, split_root=split_root)
    assert ds.class_names == list(VOC_LT_CLASSES) and len(ds) == 2
    assert ds.class_counts.nonzero().flatten().tolist() == [4, 14, 19]
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        create_lt_dataset("voc-lt", "labels", images, split_root=split_root)


# ---------------------------------------------------------------- transforms


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
        pretrained_backbone=False,
        dim=32,
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


# ---------------------------------------------------------------- issue 13: hostile lists
@pytest.mark.parametrize(
    "bad",
    ["../outside.png", "sub/../../outside.png", "{outside}", "./../outside.png"],
)
def test_image_list_paths_must_stay_inside_the_root(tmp_path, bad):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(root / "a.png")
    outside = tmp_path / "outside.png"
    Image.new("RGB", (4, 4), (9, 9, 9)).save(outside)
    bad = bad.format(outside=outside)
    list_file = tmp_path / "list.txt"
    list_file.write_text(f"a.png 0\nsub/../a.png 1\n{bad} 1\n")
    match = (
        rf"list\.txt:3: image path '{re.escape(bad)}' leaves the image root .*allow_outside_root"
    )
    with pytest.raises(ValueError, match=match):
        MultiLabelImageList(list_file, root, num_classes=2)
    # the refusal comes before any file check, so it tells nothing about what exists outside
    with pytest.raises(ValueError, match="leaves the image root"):
        MultiLabelImageList(list_file, root, num_classes=2, check_files=False)
    ds = MultiLabelImageList(list_file, root, num_classes=2, allow_outside_root=True)
    assert ds.load_image(2).getpixel((0, 0)) == (9, 9, 9)


@pytest.mark.parametrize("token", ["+1", "1_0", "\u0661", "\u00b2", "0x1", "1\u200b"])
def test_class_ids_are_ascii_digits_only(tmp_path, token):
    # int() accepts "+1", "1_0" (= 10) and non-ASCII digits; the list format does not
    list_file = tmp_path / "list.txt"
    list_file.write_text(f"a.png 0\nb.png {token}\n", encoding="utf-8")
    match = rf"list\.txt:2: malformed line, class id {re.escape(repr(token))} is not an integer"
    with pytest.raises(ValueError, match=match):
        read_image_list(list_file, num_classes=20)
    labels = tmp_path / "labels.txt"
    labels.write_text(f"person 0\nbike {token}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"labels\.txt:2: class id .* not an integer"):
        read_label_file(labels)


def test_utf8_bom_is_dropped_and_other_encodings_are_named(tmp_path):
    list_file = tmp_path / "list.txt"
    list_file.write_bytes(b"\xef\xbb\xbfa.png 0\nb.png 1\n")
    assert read_image_list(list_file, num_classes=2).paths == ("a.png", "b.png")
    labels = tmp_path / "labels.txt"
    labels.write_bytes(b"\xef\xbb\xbfperson 0\nbike 1\n")
    assert read_label_file(labels) == ["person", "bike"]
    list_file.write_bytes(b"a.png 0\n\ncaf\xe9.png 1\n")
    match = r"list\.txt:3: not UTF-8 text \(byte 0xe9 at offset 12\); save the image list as UTF-8"
    with pytest.raises(ValueError, match=match):
        read_image_list(list_file, num_classes=2)
    labels.write_bytes(b"caf\xe9 0\n")
    with pytest.raises(ValueError, match=r"labels\.txt:1: not UTF-8 text"):
        read_label_file(labels)


def test_a_folder_where_a_list_is_expected(tmp_path):
    with pytest.raises(IsADirectoryError, match=r"image list .* is a folder; expected a text file"):
        read_image_list(tmp_path, num_classes=2)
    with pytest.raises(IsADirectoryError, match=r"label file .* is a folder"):
        read_label_file(tmp_path)


def test_read_class_names_one_behaviour_for_cli_and_train(tmp_path: Path) -> None:
    # one reader for `cprfl-zoo --classes` and examples/train.py --classes (they used to differ:
    # the CLI took no label files and kept duplicates, train.py named no line of a non-UTF-8 file)
    from cprfl_zoo.class_lists import COCO_LT_CLASSES
    from cprfl_zoo.data import read_class_names

    path = tmp_path / "classes.txt"
    path.write_text(" traffic light \n\ncat\r\n", encoding="utf-8")
    assert read_class_names(path) == ["traffic light", "cat"]
    path.write_text("cat 1\ntraffic light 0\n", encoding="utf-8")  # a label file
    assert read_class_names(str(path)) == ["traffic light", "cat"]
    assert read_class_names("coco-lt") == list(COCO_LT_CLASSES)
    path.write_text("cat\ndog\ncat\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"classes\.txt: duplicate class name 'cat'"):
        read_class_names(path)
    path.write_text("\n \n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"classes\.txt: the file holds no class names"):
        read_class_names(path)
    path.write_bytes(b"cat\nd\xf6g\n")
    with pytest.raises(ValueError, match=r"classes\.txt:2: not UTF-8 text"):
        read_class_names(path)
    with pytest.raises(IsADirectoryError, match="is a folder; expected a text file"):
        read_class_names(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no such file, and not a built-in list"):
        read_class_names(tmp_path / "nope.txt")


@pytest.mark.parametrize("digit", ["\u00b2", "\u0663", "\uff11"])
def test_read_class_names_sniffs_label_files_by_ascii_digits(tmp_path: Path, digit: str) -> None:
    # str.isdigit() takes '²', '٣' and '１': such a file is class names, not a malformed label file
    from cprfl_zoo.data import read_class_names

    path = tmp_path / "classes.txt"
    path.write_text(f"cat {digit}\ndog 0\n", encoding="utf-8")
    assert read_class_names(path) == [f"cat {digit}", "dog 0"]


def test_read_class_names_reads_a_label_file_once(tmp_path: Path, monkeypatch) -> None:
    import cprfl_zoo.data.image_list as data_module

    calls: list[Path] = []
    read = data_module.read_text_lines

    def counting(path, what):
        calls.append(Path(path))
        return read(path, what)

    monkeypatch.setattr(data_module, "read_text_lines", counting)
    path = tmp_path / "labels.txt"
    path.write_text("cat 1\ntraffic light 0\n", encoding="utf-8")
    assert data_module.read_class_names(path) == ["traffic light", "cat"]
    assert calls == [path]
