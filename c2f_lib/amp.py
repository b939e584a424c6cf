"""Mixed precision shared by the training loops and feature extraction.

The `amp` switch of a training config takes
* False / "off": fp32 everywhere.
* True / "cuda": mixed precision on CUDA only (fp16 autocast + GradScaler), fp32 on CPU. This is the
  meaning the switch always had, so configs that say `amp: true` run on CPU exactly as before.
* "auto": fp16 autocast + GradScaler on CUDA, bf16 autocast on CPU (no scaler: bf16 has fp32's range).
* "bf16": bf16 autocast on any device, no scaler (CPU, or Ampere+ GPUs).
* "fp16": fp16 autocast + GradScaler; CUDA only (CPU autocast has no fp16 path worth using).

`Precision.of(amp, device)` resolves it once; `autocast()` is the context for the forward + loss,
`backward(loss, optimizer, params, clip)` does the (scaled) backward, unscale, clip and step.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable

import torch

AMP_MODES = (False, True, "off", "cuda", "auto", "bf16", "fp16")


def check_amp(amp) -> None:
    if amp not in AMP_MODES or isinstance(amp, (int, float)) and not isinstance(amp, bool):
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")


@dataclass(frozen=True)
class Precision:
    device_type: str                 # "cpu" | "cuda"
    dtype: torch.dtype | None        # autocast dtype; None = fp32
    scaled: bool                     # GradScaler in use (fp16 on CUDA)

    @classmethod
    def of(cls, amp, device: str | torch.device) -> "Precision":
        check_amp(amp)
        kind = torch.device(device).type
        cuda = kind == "cuda"
        if amp in (False, "off") or (amp in (True, "cuda") and not cuda):
            return cls(kind, None, False)
        if amp == "bf16" or (amp == "auto" and not cuda):
            return cls(kind, torch.bfloat16, False)
        if not cuda:
            raise ValueError(f"amp={amp!r} (fp16 with a GradScaler) needs a CUDA device, not {kind}; "
                             "use amp='bf16' or 'auto' on CPU")
        return cls(kind, torch.float16, True)

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler("cuda", enabled=self.scaled)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
             params: Iterable[torch.nn.Parameter], grad_clip: float) -> None:
        """Backward (scaled under fp16), unscale, clip the grad norm (when grad_clip > 0), step."""
        scaler.scale(loss.float()).backward()
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(list(params), grad_clip)
        scaler.step(optimizer)
        scaler.update()
