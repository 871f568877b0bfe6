"""``sentence-transformers:<folder>`` text encoders, on a tiny random BERT built offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cprfl_zoo import CPRFL, create_cprfl
from cprfl_zoo.text import TextConfig

WORDS = ["a", "photo", "of", "cat", "dog", "traffic", "light", "zebra", "the", ".", "red", "bus"]
TINY = {"embed_dim": 16, "num_heads": 2, "head_dim": 8, "mlp_hidden_dim": 24}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizer

    root = tmp_path_factory.mktemp("st")
    bert = root / "bert"
    bert.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (bert / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(bert / "vocab.txt")).save_pretrained(bert)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=12, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=32,
    )  # fmt: skip
    BertModel(config).save_pretrained(bert)
    modules = [models.Transformer(str(bert)), models.Pooling(12, "mean")]
    SentenceTransformer(modules=modules, device="cpu").save(str(root / "st"))
    return root / "st"


def _reference(folder: Path, prompts: list[str]) -> torch.Tensor:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    return model.encode(prompts, convert_to_tensor=True).float()


def test_a_sentence_encoder_folder_gives_its_embeddings_and_is_recorded(folder) -> None:
    names = ["cat", "traffic_light", "zebra"]
    model = create_cprfl(
        "test_resnet", names, text_encoder=f"sentence-transformers:{folder}", **TINY
    )
    expected = _reference(
        folder, ["a photo of a cat.", "a photo of a traffic light.", "a photo of a zebra."]
    )
    torch.testing.assert_close(model.class_embeddings, expected, rtol=1e-5, atol=1e-6)
    cfg = model.text_encoder_cfg
    assert cfg["model_name"] == f"sentence-transformers:{folder.resolve()}"
    assert cfg["weights"].startswith("sentence-transformers-sha256:") and cfg["text_dim"] == 12


def test_a_saved_model_encodes_new_names_with_set_classes(folder, tmp_path) -> None:
    model = create_cprfl(
        "test_resnet", ["cat", "dog"], text_encoder=f"sentence-transformers:{folder}", **TINY
    )
    loaded = CPRFL.from_pretrained(model.save_pretrained(tmp_path / "m"))
    loaded.set_classes(["red bus", "zebra", "dog"])
    expected = _reference(
        folder, ["a photo of a red bus.", "a photo of a zebra.", "a photo of a dog."]
    )
    torch.testing.assert_close(loaded.class_embeddings, expected, rtol=1e-5, atol=1e-6)


def test_the_folder_is_checked_and_its_contents_name_the_weights(folder, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"does not exist"):
        TextConfig.resolve(f"sentence-transformers:{tmp_path / 'nope'}")
    with pytest.raises(ValueError, match=r"has no modules\.json"):
        TextConfig.resolve(f"sentence-transformers:{tmp_path}")
    with pytest.raises(ValueError, match="carries its own weights"):
        TextConfig.resolve(f"sentence-transformers:{folder}", "openai")
    first = TextConfig.resolve(f"sentence-transformers:{folder}").weights_identity()
    assert first == TextConfig.resolve(f"sentence-transformers:{folder}").weights_identity()
    with pytest.raises(ValueError, match="needs an open_clip text tower"):
        create_cprfl(
            "test_resnet", ["cat"], text_encoder=f"sentence-transformers:{folder}",
            trainable_text_encoder=True, **TINY,
        )  # fmt: skip
