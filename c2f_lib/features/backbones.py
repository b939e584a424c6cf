"""Frozen image-text backbones behind one interface (open_clip or transformers' CLIPModel).

    backbone = load_backbone("ViT-B-32:openai")        # open_clip name:tag (downloads once)
    backbone = load_backbone("ViT-B-16:/w/model.pt")   # open_clip name:local weights file
    backbone = load_backbone("hf:/w/clip-vit-base-patch32")  # transformers hub id or local dir
    backbone = load_backbone("tinyclip")               # the embedded default (trained on SynthMoments)

    backbone.encode_frames(uint8 [N, H, W, 3])  -> [N, D]     projected image embeddings
    backbone.encode_sentences(list[str])        -> [T, D]     projected EOT features (X-Pool's t)
    backbone.encode_tokens(list[str])           -> ([T, Lq, Dt], mask [T, Lq])
                                                   text transformer last hidden states (after the
                                                   final LayerNorm, before projection: MESM/QD-DETR)
    backbone.encode_tokens(texts, with_ids=True) -> the same plus the tokenizer's ids [T, Lq]
    backbone.encode_texts(list[str])            -> sentences, tokens, mask and ids from one
                                                   text-transformer pass

Token ids are aligned with the token features (position i of both is one token, SOT/EOT included)
and index a vocabulary of `backbone.vocab_size` entries (MESM's masked-word targets).

Nothing is normalised here; every output is float32 on the CPU.

Weights named by a tag are downloaded once (open_clip / transformers cache them). When the hub cannot be
reached, loading fails at once with a `BackboneError` that says how to get the weights, instead of
retrying for a minute.
"""
from __future__ import annotations

import json
import logging
import socket
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from c2f_lib.errors import UserError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HUB_HOST = "huggingface.co"


class BackboneError(UserError, ValueError):
    """A backbone that cannot be loaded here: unknown name, missing weights, hub out of reach."""


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers (never, in its offline mode)."""
    import huggingface_hub.constants as hub

    if hub.HF_HUB_OFFLINE:
        return False
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


@contextmanager
def hub_offline_unless_reachable() -> Iterator[bool]:
    """Put huggingface_hub in offline mode for the block when the hub is out of reach (yields whether it
    is): a cached file still loads, a missing one fails at once rather than after a minute of retries."""
    import huggingface_hub.constants as hub

    saved = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = offline = saved or not hub_reachable()
    try:
        yield offline
    finally:
        hub.HF_HUB_OFFLINE = saved


class _HoldRecords(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


@contextmanager
def quiet_open_clip() -> Iterator[None]:
    """Hold what open_clip logs (through the root logger) while it builds a model: dropped if building
    fails (the error raised says why), re-emitted if it succeeds, but for "No pretrained weights loaded
    ... initialized randomly", which is noise where the weights are loaded or trained right after."""
    root = logging.getLogger()
    held = _HoldRecords()
    root.addFilter(held)
    try:
        yield
    finally:
        root.removeFilter(held)
    for record in held.records:
        if not record.getMessage().startswith("No pretrained weights loaded for model"):
            root.handle(record)


def _weights_help(spec: str, offline: bool) -> str:
    model_name, _, tag = spec.partition(":")
    where = f"{HUB_HOST} cannot be reached" if offline else "the download failed"
    return (f"{where}: fetch the weights once on a machine with internet (python -c \"import open_clip; "
            f"open_clip.create_model('{model_name}', pretrained='{tag}')\") and copy ~/.cache/huggingface here, "
            f"or pass a weights file ({model_name}:/path/to/weights.bin), or use the embedded tinyclip:CHECKPOINT")


def mean_frame_embedding(backbone, clip_frames: np.ndarray) -> torch.Tensor:
    """uint8 [L, K, H, W, 3] -> [L, D]: the mean of each clip's K frame embeddings (what an image backbone
    gives a clip); `backbone` needs only `encode_frames`."""
    L, K = clip_frames.shape[:2]
    return backbone.encode_frames(clip_frames.reshape(L * K, *clip_frames.shape[2:])).reshape(L, K, -1).mean(1)


class Backbone(ABC):
    """A frozen CLIP-like model. Subclasses set the attributes below and the three text/image hooks."""

    clip_level = False    # True for a video backbone: the coarse stage's "frames" are clip embeddings
    name: str             # the spec it was loaded from, e.g. "ViT-B-32:openai"
    weights: str          # what pins the weights: tag, file path, or content hash
    image_size: int
    embed_dim: int        # D
    token_dim: int        # Dt
    vocab_size: int       # tokenizer vocabulary (token ids lie in [0, vocab_size))
    device: str
    dtype: torch.dtype
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def preprocess(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> normalised [N, 3, S, S]: bicubic resize of the short side, centre crop."""
        x = torch.as_tensor(frames).to(self.device).permute(0, 3, 1, 2).float() / 255.0  # [N, 3, H, W]
        h, w = x.shape[-2:]
        scale = self.image_size / min(h, w)
        size = (max(self.image_size, round(h * scale)), max(self.image_size, round(w * scale)))
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
        top, left = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        x = x[..., top:top + self.image_size, left:left + self.image_size].clamp(0, 1)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.dtype)

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray | torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        out = [self._image_features(self.preprocess(frames[i:i + batch_size]))
               for i in range(0, len(frames), batch_size)]
        return torch.cat(out).float().cpu() if out else torch.zeros(0, self.embed_dim)  # [N, D]

    @torch.no_grad()
    def encode_clips(self, clip_frames: np.ndarray, batch_size: int = 64) -> torch.Tensor:
        """uint8 [L, K, H, W, 3], the K frames of each clip -> [L, D]. An image backbone averages the
        K frame embeddings; a video backbone (`clip_level`) encodes the clip as a whole."""
        return mean_frame_embedding(self, clip_frames)

    @torch.no_grad()
    def encode_sentences(self, texts: list[str]) -> torch.Tensor:
        return self._text_features(texts)[1].float().cpu()  # [T, D]

    @torch.no_grad()
    def encode_tokens(self, texts: list[str], with_ids: bool = False) -> tuple[torch.Tensor, ...]:
        """-> hidden [T, Lq, Dt], mask [T, Lq] bool (+ token ids [T, Lq] long when `with_ids`)."""
        hidden, _, mask, ids = self._text_features(texts)
        out = (hidden.float().cpu(), mask.cpu())
        return out + (ids.long().cpu(),) if with_ids else out

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sentence and token features (with their token ids) from one pass of the text transformer."""
        hidden, sentence, mask, ids = self._text_features(texts)
        # [T, D], [T, Lq, Dt], [T, Lq] bool, [T, Lq] long
        return sentence.float().cpu(), hidden.float().cpu(), mask.cpu(), ids.long().cpu()

    @abstractmethod
    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] -> [N, D]"""

    @abstractmethod
    def _text_features(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> hidden [T, Lq, Dt], sentence [T, D], mask [T, Lq], token ids [T, Lq]
        (Lq = longest text in the batch)."""


class OpenClipBackbone(Backbone):
    """An open_clip model: `pretrained` is a tag (downloaded by open_clip), a weights file, or None."""

    def __init__(self, model_name: str, pretrained: str | None, device: str = "cpu", precision: str = "fp32",
                 name: str | None = None, model: torch.nn.Module | None = None):
        import open_clip

        if model is None:
            spec = name or f"{model_name}:{pretrained}"
            with hub_offline_unless_reachable() as offline, quiet_open_clip():
                try:
                    model = open_clip.create_model(model_name, pretrained=pretrained, precision=precision,
                                                   device=device, require_pretrained=pretrained is not None)
                except RuntimeError as err:
                    reason = str(err).splitlines()[0]
                    hint = _weights_help(spec, offline) if "download" in reason.lower() else reason
                    raise BackboneError(f"cannot load backbone {spec!r}: {hint}") from None
        self.model = model.eval().requires_grad_(False).to(device)
        if not hasattr(self.model, "token_embedding"):
            raise ValueError(f"{model_name}: only open_clip's standard CLIP class exposes token features")
        self.tokenizer = open_clip.get_tokenizer(model_name, context_length=self.model.context_length)
        cfg = open_clip.get_model_preprocess_cfg(self.model)
        size = cfg.get("size", 224)
        self.image_size = size if isinstance(size, int) else size[0]
        self.mean, self.std = tuple(cfg.get("mean", CLIP_MEAN)), tuple(cfg.get("std", CLIP_STD))
        self.name = name or f"{model_name}:{pretrained}"
        self.weights = str(pretrained)
        self.device, self.dtype = device, next(self.model.parameters()).dtype
        self.embed_dim = int(self.model.text_projection.shape[-1] if self.model.text_projection is not None
                             else self.model.ln_final.normalized_shape[0])
        self.token_dim = int(self.model.ln_final.normalized_shape[0])
        self.vocab_size = int(self.model.token_embedding.num_embeddings)

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _text_features(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(texts).to(self.device)  # [T, context_length], 0 = padding
        m = self.model
        x = m.token_embedding(tokens).to(self.dtype) + m.positional_embedding.to(self.dtype)
        x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask))  # [T, C, Dt]
        # The EOT token has the largest id in CLIP's vocabulary: it marks the pooled position.
        sentence = x[torch.arange(len(texts)), tokens.argmax(-1)]  # [T, Dt]
        if m.text_projection is not None:
            sentence = m.text_projection(sentence) if isinstance(m.text_projection, torch.nn.Linear) \
                else sentence @ m.text_projection
        mask = tokens != 0
        longest = int(mask.sum(1).max())
        return x[:, :longest], sentence, mask[:, :longest], tokens[:, :longest]


class HFClipBackbone(Backbone):
    """transformers' CLIPModel from a hub id (downloaded by transformers) or a local directory."""

    def __init__(self, source: str, device: str = "cpu", precision: str = "fp32", name: str | None = None):
        from transformers import AutoTokenizer, CLIPModel

        dtype = torch.float16 if precision == "fp16" else torch.float32
        local = Path(source).is_dir()
        offline = not local and not hub_reachable()
        try:
            self.model = CLIPModel.from_pretrained(source, dtype=dtype, local_files_only=local or offline)
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local or offline)
        except OSError as err:
            where = f"{HUB_HOST} cannot be reached and it is not in the cache" if offline else str(err).splitlines()[0]
            raise BackboneError(f"cannot load backbone 'hf:{source}': {where}; pass a local CLIPModel folder "
                                f"(hf:/path/to/clip) or use the embedded tinyclip:CHECKPOINT") from None
        self.model = self.model.eval().requires_grad_(False).to(device)
        cfg = self.model.config
        self.image_size = cfg.vision_config.image_size
        self.mean, self.std = CLIP_MEAN, CLIP_STD
        preprocessor = Path(source) / "preprocessor_config.json"
        if preprocessor.is_file():
            pp = json.loads(preprocessor.read_text())
            self.mean, self.std = tuple(pp.get("image_mean", CLIP_MEAN)), tuple(pp.get("image_std", CLIP_STD))
        self.name, self.weights = name or f"hf:{source}", str(source)
        self.device, self.dtype = device, dtype
        self.embed_dim, self.token_dim = cfg.projection_dim, cfg.text_config.hidden_size
        self.vocab_size = cfg.text_config.vocab_size
        self.context_length = cfg.text_config.max_position_embeddings

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output  # [N, width]
        return self.model.visual_projection(pooled)

    def _text_features(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.context_length,
                               return_tensors="pt").to(self.device)
        out = self.model.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        sentence = self.model.text_projection(out.pooler_output)  # [T, D]
        return out.last_hidden_state, sentence, batch["attention_mask"].bool(), batch["input_ids"]


def write_hf_clip_tokenizer(directory: str | Path) -> Path:
    """Write vocab.json / merges.txt for transformers' CLIPTokenizer from open_clip's bundled BPE.

    Both libraries ship the same OpenAI CLIP BPE, so a local CLIPModel directory that lacks its
    tokenizer files can be completed offline.
    """
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bpe = SimpleTokenizer()
    # Same ids; transformers names the special tokens <|startoftext|> / <|endoftext|>.
    renamed = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {renamed.get(token, token): index for token, index in bpe.encoder.items()}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt")).save_pretrained(directory)
    return directory
