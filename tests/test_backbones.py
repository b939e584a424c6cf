"""Backbones: open_clip and transformers CLIP behind one interface, fully offline."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from c2f_lib.features.backbones import (HFClipBackbone, OpenClipBackbone, load_backbone,
                                        write_hf_clip_tokenizer)
from c2f_lib.features.tiny_clip import MODEL_NAME, register_config

TEXTS = ["a red ball bounces", "the small blue square turns green and then spins quickly"]


@pytest.fixture(scope="module")
def open_clip_tiny():
    register_config()
    torch.manual_seed(0)
    return OpenClipBackbone(MODEL_NAME, None)


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
    with pytest.raises(ValueError, match="ViT-B-32:openai"):
        load_backbone("ViT-B-32")
    with pytest.raises(ValueError, match="dataset_dir"):
        load_backbone("tinyclip")
    with pytest.raises(Exception):
        load_backbone(f"hf:{tmp_path / 'nothing'}")
