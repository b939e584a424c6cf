"""Published loss weights per dataset and model, as named presets (spec fine.md §1.3, §2.2, §2.4)."""
from __future__ import annotations

from dataclasses import dataclass, replace


SALIENCY_LABELS = ("auto", "graded", "binary")


@dataclass(frozen=True)
class FineLossWeights:
    span: float = 10.0            # L1 on normalised (c, w); also the matching cost
    giou: float = 1.0
    label: float = 4.0            # foreground CE weight (= matching class cost)
    eos_coef: float = 0.1         # CE weight of the background class
    aux: bool = True              # repeat span/GIoU/label losses on earlier decoder layers
    saliency: float = 1.0
    saliency_kind: str = "qd"     # "qd": neg-pair + rank-contrastive (+ hinge); "hinge": Moment-DETR
    use_hinge: bool = True
    margin: float = 0.2
    rank_coef: float = 12.0       # rank-contrastive sum divided by this
    rank_tau: float = 0.5
    # Saliency targets: "graded" QVHighlights scores (hard + easy hinge pairs, 11 rank levels) or "binary"
    # GT membership (random pairs, MESM/lighthouse on Charades/TACoS); "auto" (ours) takes binary when every
    # label of the batch is 0 or 1, since a feature store's targets do not say which kind they are.
    saliency_labels: str = "auto"
    rec_fw: float = 0.0           # MESM masked-word reconstruction
    rec_fw_smoothing: float = 0.1  # label smoothing of its CE over the word classes (MESM's eps)
    rec_fw_tokens: str = "valid"  # CE averaged over every "valid" token (MESM's code) or the "masked" ones only
    rec_ss: float = 0.0           # MESM segment-sentence contrastive
    ss_tau: float = 0.5
    ss_iou_gamma: float = 0.9     # GIoU above which two GT segments count as positives
    ss_positives: str = "video"   # ... among the queries of one "video" (ours) or YouTube-id "group" (MESM)

    def __post_init__(self) -> None:
        for name, allowed in (("rec_fw_tokens", ("valid", "masked")), ("saliency_labels", SALIENCY_LABELS),
                              ("ss_positives", ("video", "group")), ("saliency_kind", ("qd", "hinge"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")


PRESETS: dict[str, FineLossWeights] = {
    "moment_detr": FineLossWeights(saliency_kind="hinge", label=4.0),
    "qd_detr": FineLossWeights(),
    "mesm_qvhighlights": FineLossWeights(rec_fw=0.5, rec_ss=0.1),
    "mesm_charades": FineLossWeights(saliency=4.0, use_hinge=False, rec_fw=0.1, rec_ss=0.1),
    "mesm_tacos": FineLossWeights(label=6.0, rank_coef=1.0, rec_fw=0.1, rec_ss=0.1),
}


def loss_preset(name: str, **overrides) -> FineLossWeights:
    if name not in PRESETS:
        raise KeyError(f"unknown loss preset {name!r}; known: {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
