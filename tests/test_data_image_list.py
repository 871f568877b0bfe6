import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from cprfl_zoo.class_lists import VOC_LT_CLASSES
from cprfl_zoo.data import (
    MultiLabelImageList,
    create_lt_dataset,
    read_image_list,
    read_label_file,
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
