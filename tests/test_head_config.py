"""The head's config record, and the 0.1.0 spelling of its widths (``dim``, ``embed_dim``)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from cprfl_zoo import CPRFL, HeadConfig, create_cprfl
from cprfl_zoo.config import MODEL_ARGS
from cprfl_zoo.head_config import HEAD_FIELDS, upgrade_legacy_args

NAMES = ["cat", "dog", "bird"]
SMALL = {"num_heads": 2, "head_dim": 8, "mlp_hidden_dim": 24}


def _model(**kwargs: object) -> CPRFL:
    torch.manual_seed(0)
    return create_cprfl(
        "test_resnet", NAMES, torch.randn(3, 12), pretrained=False, **SMALL, **kwargs
    )


def test_embed_dim_is_the_head_width_as_in_timm() -> None:
    model = _model(embed_dim=40)
    assert model.embed_dim == model.head_hidden_size == 40
    assert model.text_dim == 12  # from the embeddings
    assert model.visual_proj.out_features == 40 and model.prompt_init.in_dim == 12
    assert model.head_cfg == HeadConfig(text_dim=12, embed_dim=40, **SMALL)
    assert model.model_args["embed_dim"] == 40 and model.model_args["text_dim"] == 12
    assert "dim" not in model.model_args


def test_config_round_trip_and_head_cfg_argument() -> None:
    cfg = HeadConfig(text_dim=12, embed_dim=40, cosine_classifier=True, **SMALL)
    assert HeadConfig.from_dict(cfg.to_dict()) == cfg
    assert tuple(cfg.to_dict()) == HEAD_FIELDS
    assert set(HEAD_FIELDS) <= MODEL_ARGS
    torch.manual_seed(0)
    model = CPRFL("test_resnet", NAMES, torch.randn(3, 12), head_cfg=cfg)
    assert model.head_cfg == cfg and model.cosine_classifier
    with pytest.raises(ValueError, match="the head is given twice: as head_cfg and as num_heads"):
        CPRFL("test_resnet", NAMES, torch.randn(3, 12), head_cfg=cfg, num_heads=4)
    with pytest.raises(TypeError, match=r"head_cfg must be a cprfl_zoo\.HeadConfig, got dict"):
        CPRFL("test_resnet", NAMES, torch.randn(3, 12), head_cfg=cfg.to_dict())
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.embed_dim = 8  # type: ignore[misc]


def test_head_fields_are_checked_with_their_names() -> None:
    with pytest.raises(ValueError, match=r"num_heads must be a positive int, got 0"):
        HeadConfig(text_dim=12, num_heads=0)
    with pytest.raises(ValueError, match=r"qkv_bias must be true or false, got 'no' \(str\)"):
        HeadConfig(text_dim=12, qkv_bias="no")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown argument\(s\) embed_width for CPRFL"):
        CPRFL("test_resnet", NAMES, torch.randn(3, 12), embed_width=40)


def test_old_spelling_is_translated_with_a_warning() -> None:
    with pytest.warns(FutureWarning, match=r"dim= is deprecated.*embed_dim=.*text_dim="):
        old = _model(dim=40)
    assert (old.embed_dim, old.text_dim) == (40, 12)
    with pytest.warns(FutureWarning):  # both old names: embed_dim meant the text width
        both = _model(dim=40, embed_dim=12)
    assert (both.embed_dim, both.text_dim) == (40, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _model(embed_dim=40).head_cfg == old.head_cfg  # the new spelling is silent
    with pytest.raises(ValueError, match=r"dim= .* cannot be combined with text_dim="):
        _model(dim=40, text_dim=12)


def test_upgrade_leaves_current_arguments_alone() -> None:
    args = {"embed_dim": 40, "text_dim": 12, "num_heads": 2}
    assert upgrade_legacy_args(args, warn=True) == args
    assert upgrade_legacy_args({"dim": 40, "embed_dim": 12}, warn=False) == {
        "embed_dim": 40,
        "text_dim": 12,
    }


def test_old_saved_config_loads_silently_and_resaves_in_the_new_spelling(
    tmp_path: Path,
) -> None:
    model = _model(embed_dim=40).eval()
    folder = model.save_pretrained(tmp_path / "new")
    old = Path(shutil.copytree(folder, tmp_path / "old"))
    cfg = json.loads((old / "config.json").read_text())
    args = cfg["model_args"]
    args["dim"], args["embed_dim"] = args.pop("embed_dim"), args.pop("text_dim")
    cfg.pop("weights_sha256")  # a 0.1.0 folder records no checksum
    (old / "config.json").write_text(json.dumps(cfg))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        loaded = CPRFL.from_pretrained(old).eval()
    assert (loaded.embed_dim, loaded.text_dim) == (40, 12)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))
    resaved = json.loads((loaded.save_pretrained(tmp_path / "re") / "config.json").read_text())
    assert "dim" not in resaved["model_args"] and resaved["model_args"]["text_dim"] == 12


def test_saved_config_mixing_both_spellings_is_refused(tmp_path: Path) -> None:
    folder = _model(embed_dim=40).save_pretrained(tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_args"]["dim"] = 40  # beside text_dim: neither 0.1.0's spelling nor today's
    (folder / "config.json").write_text(json.dumps(cfg))
    match = r"config\.json: model_args: dim= .* cannot be combined with text_dim="
    with pytest.raises(ValueError, match=match):
        CPRFL.from_pretrained(folder)
