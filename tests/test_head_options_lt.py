"""Long-tail head options (issue 21): the τ-normalised classifier and a carried logit adjustment."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import tiny_cprfl

from cprfl_zoo import HeadConfig, create_cprfl
from cprfl_zoo.losses import LogitAdjustment, logit_adjustment_offset
from cprfl_zoo.metrics import average_precision, mean_average_precision

NAMES = ["cat", "dog", "fox", "owl"]


def _images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(7))


# ---------------------------------------------------------------- τ-normalised classifier
@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_tau_normalised_logits_match_kangs_formula(tau: float) -> None:
    model = tiny_cprfl(NAMES, text_dim=12, classifier_tau=tau)
    x = _images()
    with torch.no_grad():
        refined = model.forward_refined(model.forward_features(x))  # P' (B, C, d)
        prompts = model.get_prompts()  # P (C, d)
        expected = torch.stack(
            [
                torch.stack(
                    [refined[b, i] @ prompts[i] / prompts[i].norm() ** tau for i in range(4)]
                )
                for b in range(x.shape[0])
            ]
        )
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.deploy()(x), expected, rtol=1e-4, atol=1e-5)


def test_tau_zero_is_the_papers_head_and_the_option_is_saved(tmp_path) -> None:
    paper, tau0 = tiny_cprfl(NAMES, text_dim=12), tiny_cprfl(NAMES, text_dim=12, classifier_tau=0)
    x = _images()
    with torch.no_grad():
        assert torch.equal(paper(x), tau0(x))
    model = tiny_cprfl(NAMES, text_dim=12, classifier_tau=0.7)
    assert model.model_args["classifier_tau"] == 0.7
    model.save_pretrained(tmp_path / "m")
    loaded = create_cprfl(f"local-dir:{tmp_path / 'm'}").eval()
    assert loaded.head_cfg.classifier_tau == 0.7
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_tau_is_checked_and_exclusive_with_cosine() -> None:
    with pytest.raises(ValueError, match="cannot be combined with cosine_classifier"):
        HeadConfig(text_dim=12, cosine_classifier=True, classifier_tau=1.0)
    for bad in (-0.1, float("nan"), True, "1"):
        with pytest.raises(ValueError, match="classifier_tau must be a number"):
            HeadConfig(text_dim=12, classifier_tau=bad)


# ---------------------------------------------------------------- post-hoc logit adjustment
PRIORS = [0.5, 0.1, 0.02, 0.3]


@pytest.mark.parametrize("head", [{}, {"cosine_classifier": True}, {"classifier_tau": 1.0}])
def test_adjusted_logits_are_the_raw_ones_minus_the_offset_and_deploy_folds_it(head) -> None:
    model = tiny_cprfl(NAMES, text_dim=12, **head)
    x = _images()
    with torch.no_grad():
        raw = model(x)
    offset = torch.log(torch.tensor(PRIORS) / (1 - torch.tensor(PRIORS)))  # τ = 1, log-odds
    model.set_logit_adjustment(LogitAdjustment(PRIORS, tau=1.0))
    assert model.logit_adjustment == pytest.approx(offset.tolist())
    with torch.no_grad():
        adjusted = model(x)
        torch.testing.assert_close(adjusted, raw - offset, rtol=1e-5, atol=1e-5)
        deployed = model.deploy()
        torch.testing.assert_close(deployed(x), adjusted, rtol=1e-4, atol=1e-5)
    model.set_logit_adjustment(None)
    with torch.no_grad():
        torch.testing.assert_close(model(x), raw)


def test_logit_adjustment_round_trips_and_is_checked(tmp_path, caplog) -> None:
    model = tiny_cprfl(NAMES, text_dim=12)
    offset = logit_adjustment_offset(PRIORS, tau=0.5)
    model.set_logit_adjustment(offset)
    folder = model.save_pretrained(tmp_path / "m")
    saved = json.loads((folder / "config.json").read_text())["model_args"]["logit_adjustment"]
    assert saved == pytest.approx(offset.tolist())
    loaded = create_cprfl(f"local-dir:{folder}").eval()
    assert loaded.logit_adjustment == pytest.approx(offset.tolist())
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(ValueError, match=r"logit_adjustment must hold one offset per class \(4\)"):
        model.set_logit_adjustment([0.0, 1.0])
    with pytest.raises(ValueError, match=r"logit_adjustment\[1\] must be a finite number"):
        model.set_logit_adjustment([0.0, float("inf"), 0.0, 0.0])
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_args"]["logit_adjustment"] = [0.0, "x", 0.0, 0.0]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config\.json: model_args\.logit_adjustment\[1\]"):
        create_cprfl(f"local-dir:{folder}")
    with caplog.at_level(logging.WARNING, logger="cprfl_zoo.model"):
        model.set_classes(["a", "b"], torch.randn(2, 12))
    assert model.logit_adjustment is None and "logit-adjustment offsets" in caplog.text


def test_a_logit_adjustment_changes_no_average_precision() -> None:
    """A per-class monotone shift ranks each class's images as before: the mAP is unchanged."""
    model = tiny_cprfl(NAMES, text_dim=12)
    x = torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    targets = (torch.rand(24, 4, generator=torch.Generator().manual_seed(4)) < 0.4).float()
    targets[0] = 1.0
    with torch.no_grad():
        raw = model(x)
        model.set_logit_adjustment(logit_adjustment_offset(PRIORS, tau=2.0))
        adjusted = model(x)
    assert not torch.allclose(raw, adjusted)
    torch.testing.assert_close(
        average_precision(adjusted, targets), average_precision(raw, targets)
    )
    assert mean_average_precision(adjusted, targets).map == pytest.approx(
        mean_average_precision(raw, targets).map, abs=1e-12
    )


def test_exported_program_carries_the_adjustment_and_tau(tmp_path) -> None:
    from cprfl_zoo.export import export_pt2, load_pt2

    model = tiny_cprfl(NAMES, text_dim=12, classifier_tau=0.5)
    x = _images(2)
    with torch.no_grad():
        raw = model(x)
    offset = logit_adjustment_offset(PRIORS, tau=1.0).float()
    model.set_logit_adjustment(offset)
    program, _ = load_pt2(export_pt2(model, tmp_path / "m.pt2", input_size=(3, 32, 32)))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), raw - offset, rtol=1e-4, atol=1e-5)
