"""MESM (Liu et al., AAAI'24): QD-DETR plus two modal-enhancement modules, each switchable.

* FW-MESM (`use_fw`): frames attend to the words before the T2V layers. The same layers, with roles
  swapped, reconstruct masked words from the frames inside the GT segment (training only).
  max(floor(l * mask_fraction), 1) of a sentence's l tokens are replaced by a learned [MASK] feature
  (projected like the words); SOT and EOT, the first and last token, are never masked (MESM gives them
  POS weight 0). With token ids in the batch (`mlm_over_vocab`, the default) a LayerNorm-Linear-ReLU-
  Linear head classifies every token (label-smoothed CE, fine_losses) over MESM's compact classes:
  `word_vocab`, the most frequent token ids of the training captions (`build_word_vocab`), plus one
  unknown class for every other id. Without `word_vocab` the classes are the tokenizer's whole
  vocabulary (`vocab_size`; a training step 2.5-2.9x slower on CPU at notebook size). Without ids
  (released npz features) the head regresses the masked words' features instead.
  Differences from the reference: the word counts come from the training captions only (MESM's
  tables count train+test), SOT/EOT are ordinary frequent ids rather than extra classes, words
  outside the vocabulary keep their own feature as input (MESM swaps in a learned [UNK]:
  `mlm_unknown="replace"`); masked words are drawn uniformly, not weighted 2:1 for nouns/verbs/
  adjectives/adverbs by an NLTK POS tagger (a batch can carry MESM's own draw: `MomentBatch.masked_words`).
  The GT segment (the masked-word keys, the contrastive segment) is the clips inside a GT window;
  MESM takes the clips with a non-zero saliency score (`gt_clips="scores"`).
* SS-MESM (`use_ss`): a learned [MASK] sentence token cross-attends to the video; the result r_i is
  prepended to the words as a context token and trained contrastively against GT segments.

`context` chooses what r_i may read. "self" (default): the query's own video only, so a prediction
never depends on other test queries. "transductive": the concatenated clips of every video in the
batch that shares the query's group key (the YouTube id of QVHighlights-style `ytid_start_end` ids),
MESM's original grouping; `predict` then batches a group's queries together. A video enters a group's
context once; MESM concatenates it once per query showing it (`context_repeats=True`).
The global token is hidden as an encoder key and the negative partner comes from another group, as in MESM.
Note: in the reference, sibling *sentences* are fed to the reconstructor as well, but its layers are
pure cross-attention, so they cannot change the masked slot's output; we therefore do not compute them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from c2f_lib.features.types import MomentSample
from c2f_lib.models.detr_blocks import MLP
from c2f_lib.models.detr_layers import CrossAttentionLayer
from c2f_lib.models.fine_batch import MomentBatch, group_key
from c2f_lib.models.fused import FusedSequential
from c2f_lib.models.qd_detr import QDDETR, QDDETRConfig, SharedProjections
from c2f_lib.models.registry import register

CONTEXT_MODES = ("self", "transductive")
GT_CLIPS = ("window", "scores")
MLM_UNKNOWN = ("keep", "replace")


@dataclass
class MESMConfig(QDDETRConfig):
    use_fw: bool = True
    use_ss: bool = True
    fw_layers: int = 2
    ss_layers: int = 4
    context: str = "self"
    context_repeats: bool = False     # transductive: a video once per query showing it (MESM), not once
    gt_clips: str = "window"          # GT segment: clips in a GT window, or with a non-zero score (MESM)
    mlm_unknown: str = "keep"         # a word outside word_vocab: its own feature, or MESM's learned [UNK]
    negative_partner: str = "other_group"
    mask_fraction: float = 1 / 3      # words masked per sentence: max(floor(l * fraction), 1)
    # Masked-word targets: word classes (below) when the batch carries token ids
    # (MESM); False, or a batch without ids: the masked words' features are regressed.
    mlm_over_vocab: bool = True
    # Token ids lie in [0, vocab_size). 49408 = CLIP's BPE, the tokenizer of every backbone here
    # (open_clip, transformers CLIP, tinyclip); a feature store records its own in meta.vocab_size.
    vocab_size: int = 49408
    # Classes of that head: the ids in `word_vocab` (most frequent first) + 1 unknown class. Training
    # (training.fine.train_or_load) fills it with the `mlm_words` most frequent ids of the train
    # captions (MESM: 1111 Charades/TACoS, 5000 QVHighlights); mlm_words 0 or word_vocab None: one
    # class per tokenizer id. Kept in the config, so a checkpoint reloads with its classes.
    mlm_words: int = 1111
    word_vocab: list[int] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, allowed in (("gt_clips", GT_CLIPS), ("mlm_unknown", MLM_UNKNOWN)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"MESMConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.context not in CONTEXT_MODES:
            raise ValueError(f"MESMConfig.context must be one of {CONTEXT_MODES}, got {self.context!r}")
        if self.mlm_over_vocab and self.vocab_size < 1:
            raise ValueError(f"MESMConfig.vocab_size must be positive with mlm_over_vocab, got {self.vocab_size}")
        if self.mlm_words < 0:
            raise ValueError(f"MESMConfig.mlm_words must be >= 0, got {self.mlm_words}")
        vocab = self.word_vocab
        if vocab is not None and (len(set(vocab)) != len(vocab) or not all(0 <= i < self.vocab_size for i in vocab)):
            raise ValueError(f"MESMConfig.word_vocab must hold distinct ids in [0, vocab_size={self.vocab_size})")

    @property
    def mlm_classes(self) -> int:
        return self.vocab_size if self.word_vocab is None else len(self.word_vocab) + 1


def build_word_vocab(samples: list[MomentSample], max_words: int) -> list[int]:
    """The `max_words` most frequent token ids over the samples' captions (token occurrences), most
    frequent first, ties by lower id; [] when no sample carries ids. Pass the *training* samples."""
    ids = [s.token_ids for s in samples if s.token_ids is not None]
    if not ids or max_words < 1:
        return []
    values, counts = torch.cat(ids).long().unique(return_counts=True)              # values ascending
    order = torch.sort(counts, descending=True, stable=True).indices               # stable: ties by id
    return values[order[:max_words]].tolist()


@register("mesm", MESMConfig)
class MESM(QDDETR):
    global_token_is_key = False

    def __init__(self, cfg: MESMConfig):
        super().__init__(cfg)
        d = cfg.hidden_dim
        block = (d, cfg.n_heads, cfg.ffn_dim, cfg.dropout, cfg.ffn_activation)
        if cfg.use_fw:
            self.enhance_encoder = nn.ModuleList(CrossAttentionLayer(*block) for _ in range(cfg.fw_layers))
            self.masked_word_token = nn.Parameter(torch.zeros(cfg.text_dim))   # a token feature, projected
            if cfg.mlm_unknown == "replace":
                self.unknown_word_token = nn.Parameter(torch.zeros(cfg.text_dim))
            self.mlm_head = MLP(d, d, cfg.text_dim, 2)                         # feature targets (no ids)
            if cfg.mlm_over_vocab:                                             # MESM's `output_txt_proj`
                self.mlm_vocab_head = FusedSequential(nn.LayerNorm(d), nn.Dropout(cfg.input_dropout),
                                                      nn.Linear(d, d), nn.ReLU(), nn.Linear(d, cfg.mlm_classes))
                self.register_buffer("word_class", self.word_class_table(cfg), persistent=False)
        if cfg.use_ss:
            self.ss_layers = nn.ModuleList(CrossAttentionLayer(*block) for _ in range(cfg.ss_layers))
            self.masked_sent_token = nn.Parameter(torch.zeros(d))
        self.init_weights(self)

    @staticmethod
    def word_class_table(cfg: MESMConfig) -> torch.Tensor:
        """[vocab_size] long: token id -> class (its rank in word_vocab, else the last, unknown, class);
        the identity without word_vocab. Rebuilt from the config, so not saved in the state dict."""
        if cfg.word_vocab is None:
            return torch.arange(cfg.vocab_size)
        table = torch.full((cfg.vocab_size,), len(cfg.word_vocab), dtype=torch.long)
        table[torch.tensor(cfg.word_vocab, dtype=torch.long)] = torch.arange(len(cfg.word_vocab))
        return table

    # ---------------------------------------------------------------- FW-MESM
    def enhance_video(self, video, pos, words, words_mask, shared: SharedProjections | None = None):
        if not self.cfg.use_fw:
            return video
        for i, layer in enumerate(self.enhance_encoder):           # frames attend to words
            given = {} if shared is None else shared.layer_inputs(layer, shared.word_kv[i])
            video = layer(video, words, words_mask, pos_q=pos, **given)
        return video

    def video_query_layers(self) -> list[nn.Module]:
        return (list(self.enhance_encoder) if self.cfg.use_fw else []) + list(self.t2v_encoder)

    def share_projections(self, video, pos, words, text) -> SharedProjections:
        shared = super().share_projections(video, pos, words, text)
        if self.cfg.use_fw:
            shared.word_kv = [layer.attn.project_keys(words) for layer in self.enhance_encoder]
        return shared

    def mask_words(self, text_mask: torch.Tensor) -> torch.Tensor:
        """[B, Lq] valid tokens -> [B, Lq] the masked ones: max(floor(l * fraction), 1) of a sentence's
        l tokens, drawn uniformly among all but its first and last (SOT/EOT)."""
        masked = torch.zeros_like(text_mask)
        for b, n in enumerate(text_mask.sum(1).tolist()):
            k = min(max(int(n * self.cfg.mask_fraction), 1), n - 2)
            if k > 0:
                masked[b, 1 + torch.randperm(n - 2, device=masked.device)[:k]] = True
        return masked

    def gt_segment(self, batch: MomentBatch) -> torch.Tensor:
        """[B, L] bool: the GT clips (`gt_clips`: inside a GT window, or a non-zero saliency score)."""
        if self.cfg.gt_clips == "scores":
            return (batch.saliency > 0) & batch.video_mask
        return batch.window_clip_mask()

    def extra_outputs(self, batch: MomentBatch, video, pos, words, out: dict) -> None:
        if not self.cfg.use_fw:
            return
        masked = self.mask_words(batch.text_mask) if batch.masked_words is None else batch.masked_words  # [B, Lq]
        ids = batch.token_ids
        over_vocab = self.cfg.mlm_over_vocab and ids is not None
        if over_vocab and int(ids.max()) >= self.cfg.vocab_size:
            raise ValueError(f"token id {int(ids.max())} >= MESMConfig.vocab_size {self.cfg.vocab_size}: "
                             f"set vocab_size to the feature store's meta.vocab_size")
        x = words
        if over_vocab and self.cfg.mlm_unknown == "replace":
            unknown = self.word_class[ids] == self.cfg.mlm_classes - 1 if self.cfg.word_vocab is not None \
                else torch.zeros_like(masked)
            x = torch.where(unknown[..., None], self.input_txt_proj(self.unknown_word_token.to(words.dtype)), x)
        x = torch.where(masked[..., None], self.input_txt_proj(self.masked_word_token.to(words.dtype)), x)
        segment = self.gt_segment(batch)
        segment = torch.where(segment.any(1, keepdim=True), segment, batch.video_mask)
        for layer in self.enhance_encoder:                         # words attend to GT-segment frames
            x = layer(x, video, segment, pos_k=pos)
        out["mlm_mask"] = masked
        if not over_vocab:
            out["mlm_pred"] = self.mlm_head(x)                                       # [B, Lq, Dt]
            return
        out["mlm_logits"] = self.mlm_vocab_head(x[batch.text_mask])                  # [N valid tokens, C]
        out["mlm_word_class"] = self.word_class              # [vocab_size] id -> class; the loss maps the ids

    # ---------------------------------------------------------------- SS-MESM
    def context_keys(self, batch: MomentBatch, video: torch.Tensor):
        """Keys the [MASK] sentence token reads: [B, Lk, d] and mask [B, Lk]."""
        if self.cfg.context == "self":
            return video, batch.video_mask
        keys = []
        groups = [group_key(v) for v in batch.vids]
        for g, vid in zip(groups, batch.vids):
            members = [j for j in range(len(groups)) if groups[j] == g]
            if not self.cfg.context_repeats or g == vid:         # each video once (MESM: own video off QVH)
                members = list({batch.vids[j]: j for j in members}.values())
            keys.append(torch.cat([video[j][batch.video_mask[j]] for j in members]))
        length = max(k.shape[0] for k in keys)
        padded = video.new_zeros(len(keys), length, video.shape[-1])
        mask = torch.zeros(len(keys), length, dtype=torch.bool, device=video.device)
        for i, k in enumerate(keys):
            padded[i, : len(k)], mask[i, : len(k)] = k, True
        return padded, mask

    def text_tokens(self, batch: MomentBatch, video, words, out: dict, extras: bool):
        if not self.cfg.use_ss:
            return words, batch.text_mask
        keys, key_mask = self.context_keys(batch, video)
        r = self.masked_sent_token.to(video.dtype).expand(video.shape[0], 1, -1)      # [B, 1, d]
        for layer in self.ss_layers:
            r = layer(r, keys, key_mask)
        r = F.normalize(r, dim=-1)
        text = torch.cat([r, words], 1)                                                # [B, 1+Lq, d]
        mask = torch.cat([batch.text_mask.new_ones(len(words), 1), batch.text_mask], 1)
        if extras:
            out["ss_sentence"] = (text * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            seg = self.gt_segment(batch).float()
            out["ss_segment"] = (video * seg[..., None]).sum(1) / seg.sum(1, keepdim=True).clamp(min=1)
        return text, mask

    def prediction_batches(self, samples: list[MomentSample]) -> list[list[int]]:
        """Transductive mode keeps every query of a group in one batch; otherwise the plain batching."""
        if self.cfg.context == "self":
            return super().prediction_batches(samples)
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(samples):
            groups.setdefault(group_key(s.vid), []).append(i)
        batches, current = [], []
        for members in groups.values():
            if current and len(current) + len(members) > self.cfg.predict_batch_size:
                batches.append(current)
                current = []
            current = current + members
        return batches + ([current] if current else [])
