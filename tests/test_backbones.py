"""Backbones: open_clip and transformers CLIP behind one interface, fully offline."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from c2f_lib.features.backbone_specs import load_backbone
from c2f_lib.features.backbones import HFClipBackbone, OpenClipBackbone, write_hf_clip_tokenizer
from c2f_lib.features.testing import tiny_open_clip

TEXTS = ["a red ball bounces", "the small blue square turns green and then spins quickly"]


@pytest.fixture(scope="module")
def open_clip_tiny():
    torch.manual_seed(0)
    return tiny_open_clip()


@pytest.fixture(scope="module")
def hf_tiny_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    directory = tmp_path_factory.mktemp("hf_clip")
    config = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 32},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(directory)
    write_hf_clip_tokenizer(directory)
    return directory


def frames(n=3, size=48):
    return np.random.default_rng(0).integers(0, 256, (n, size, 40, 3), dtype=np.uint8)


def test_open_clip_shapes_and_pooling_match_open_clip(open_clip_tiny):
    b = open_clip_tiny
    assert b.encode_frames(frames()).shape == (3, b.embed_dim)
    sentences = b.encode_sentences(TEXTS)
    expected = b.model.encode_text(b.tokenizer(TEXTS))  # open_clip's own EOT pooling + projection
    torch.testing.assert_close(sentences, expected, atol=1e-5, rtol=1e-5)
    tokens, mask = b.encode_tokens(TEXTS)
    n_tokens = [len(b.tokenizer.encode(t)) + 2 for t in TEXTS]  # + <sot>, <eot>
    assert mask.sum(1).tolist() == n_tokens and tokens.shape == (2, max(n_tokens), b.token_dim)
    alone, _ = b.encode_tokens(TEXTS[:1])  # batching never changes a text's features (causal mask)
    torch.testing.assert_close(alone[0], tokens[0, :n_tokens[0]], atol=1e-5, rtol=1e-5)


def test_open_clip_token_ids_align_with_token_features(open_clip_tiny):
    b = open_clip_tiny
    tokens, mask, ids = b.encode_tokens(TEXTS, with_ids=True)
    assert ids.shape == mask.shape and ids.dtype == torch.long and b.vocab_size == 49408
    for row, valid, text in zip(ids, mask, TEXTS):
        sot, eot = b.tokenizer.sot_token_id, b.tokenizer.eot_token_id
        assert row[valid].tolist() == [sot, *b.tokenizer.encode(text), eot]   # position i = token feature i
        assert (row[~valid] == 0).all()
    sentences, hidden, mask2, ids2 = b.encode_texts(TEXTS)          # one pass gives the same four
    torch.testing.assert_close(hidden, tokens)
    assert torch.equal(mask2, mask) and torch.equal(ids2, ids) and sentences.shape == (2, b.embed_dim)


def test_preprocess_resizes_short_side_and_crops(open_clip_tiny):
    pixels = open_clip_tiny.preprocess(frames(2, size=100))
    assert pixels.shape == (2, 3, open_clip_tiny.image_size, open_clip_tiny.image_size)


def test_hf_tokenizer_built_offline_matches_open_clip(hf_tiny_dir, open_clip_tiny):
    from transformers import AutoTokenizer

    hf_ids = AutoTokenizer.from_pretrained(hf_tiny_dir)(TEXTS[1])["input_ids"]
    oc_ids = open_clip_tiny.tokenizer([TEXTS[1]])[0]
    assert hf_ids == oc_ids[: len(hf_ids)].tolist()


def test_hf_backbone_from_local_dir(hf_tiny_dir):
    b = load_backbone(f"hf:{hf_tiny_dir}")
    assert isinstance(b, HFClipBackbone) and b.embed_dim == 16 and b.token_dim == 32
    assert b.encode_frames(frames()).shape == (3, 16)
    assert b.encode_sentences(TEXTS).shape == (2, 16)
    tokens, mask = b.encode_tokens(TEXTS)
    assert tokens.shape[:2] == mask.shape and tokens.shape[2] == 32
    assert mask[0].sum() < mask[1].sum() and mask[1].all()
    _, hidden, mask2, ids = b.encode_texts(TEXTS)
    assert b.vocab_size == 49408 and torch.equal(mask2, mask) and hidden.shape[:2] == ids.shape
    expected = b.tokenizer(TEXTS, padding=True, return_tensors="pt")["input_ids"]
    assert torch.equal(ids[mask], expected[mask]) and torch.equal(b.encode_tokens(TEXTS, with_ids=True)[2], ids)


def test_bad_specs_are_explained(tmp_path):
    from c2f_lib.features.backbones import BackboneError

    with pytest.raises(BackboneError, match="ViT-B-32:openai"):
        load_backbone("ViT-B-32")
    with pytest.raises(BackboneError, match="not a known tag"):
        load_backbone("ViT-B-32:no-such-tag")
    with pytest.raises(BackboneError, match="cannot load backbone 'hf:"):
        load_backbone(f"hf:{tmp_path / 'nothing'}")


def test_missing_tagged_weights_fail_at_once_when_the_hub_is_out_of_reach(monkeypatch):
    """`c2f index` offline with the default ViT-B-32:openai retried for ~50 s, then printed a 106-line
    traceback; now the hub is probed first and the load fails at once, saying how to get the weights."""
    import socket

    import huggingface_hub
    import huggingface_hub.constants as hub
    import open_clip

    from c2f_lib.features.backbones import BackboneError

    if isinstance(huggingface_hub.try_to_load_from_cache("timm/vit_base_patch32_clip_224.openai",
                                                         "open_clip_pytorch_model.bin"), str):
        pytest.skip("ViT-B-32 weights are cached here")

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    seen = {}
    real = open_clip.create_model

    def spy(*args, **kwargs):
        seen["offline"] = hub.HF_HUB_OFFLINE
        return real(*args, **kwargs)

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)      # a user's machine: no HF_HUB_OFFLINE set
    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(open_clip, "create_model", spy)
    with pytest.raises(BackboneError) as err:
        load_backbone("ViT-B-32:openai")
    assert seen["offline"] is True and hub.HF_HUB_OFFLINE is False   # offline only while loading
    message = str(err.value)
    assert "huggingface.co cannot be reached" in message and "open_clip.create_model('ViT-B-32'" in message
    assert "ViT-B-32:/path/to/weights.bin" in message and "\n" not in message


def test_tinyclip_without_its_checkpoint_says_where_one_is(tmp_path):
    from c2f_lib.features.backbones import BackboneError

    with pytest.raises(BackboneError, match=r"'tinyclip' is trained on a dataset.*tinyclip:PATH"):
        load_backbone("tinyclip")
    with pytest.raises(BackboneError, match="tiny CLIP checkpoint not found"):
        load_backbone(f"tinyclip:{tmp_path / 'nope.pt'}")


def test_random_init_warning_is_silenced_where_weights_follow(caplog):
    """open_clip logs "No pretrained weights loaded ... initialized randomly" for every model it builds
    without weights; OpenClipBackbone builds its model that way and loads or trains the weights next."""
    import open_clip

    from c2f_lib.features.testing import TINY_OPEN_CLIP

    tiny_open_clip()                                     # registers the tiny model config
    with caplog.at_level("WARNING"):
        open_clip.create_model(TINY_OPEN_CLIP, pretrained=None)
    assert [r for r in caplog.records if "No pretrained weights" in r.getMessage()]   # open_clip's own noise
    caplog.clear()
    with caplog.at_level("WARNING"):
        backbone = OpenClipBackbone(TINY_OPEN_CLIP, None)      # builds through open_clip.create_model itself
    assert backbone.embed_dim > 0
    assert not [r for r in caplog.records if "No pretrained weights" in r.getMessage()]
