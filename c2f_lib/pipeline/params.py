"""What values each notebook parameter takes, checked by `c2f run` before any stage runs.

A parameter's *type* is its default in the notebook's `parameters` cell (int, float, bool, str, or a
list of one of them); its *range* is declared here, in `RULES`, under the notebook's two-digit prefix
or under "*" for a name that means the same in every notebook that declares it. Every parameter of
every notebook must have a rule (tests/test_params.py checks), so a new parameter is declared here in
the same change that adds it to a notebook: one line, e.g. ``"n_layers": at_least(1),``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rule:
    """The values a parameter may take besides being of its default's type (lists: every element)."""

    low: float | None = None           # smallest allowed value ...
    low_open: bool = False             # ... excluded
    high: float | None = None          # largest allowed value ...
    high_open: bool = False            # ... excluded
    multiple_of: int | None = None
    choices: tuple[Any, ...] = ()
    pattern: str | None = None         # strings: a regular expression the whole value matches
    min_items: int = 0                 # lists: at least this many elements

    def problem(self, value: Any) -> str | None:
        """Why `value` (one element, for lists) is outside the rule, or None."""
        if self.choices and value not in self.choices:
            return f"expected one of {list(self.choices)}"
        if self.pattern is not None and not re.fullmatch(self.pattern, str(value)):
            return f"expected a value matching {self.pattern}"
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return f"must be {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return f"must be {'<' if self.high_open else '<='} {self.high:g}"
        if self.multiple_of and value % self.multiple_of:
            return f"must be a multiple of {self.multiple_of}"
        return None


ANY = Rule()


def at_least(low: float, **extra: Any) -> Rule:
    return Rule(low=low, **extra)


def above(low: float) -> Rule:
    return Rule(low=low, low_open=True)


def between(low: float, high: float, high_open: bool = False) -> Rule:
    return Rule(low=low, high=high, high_open=high_open)


def one_of(*choices: Any, **extra: Any) -> Rule:
    return Rule(choices=choices, **extra)


FINE_MODELS = ("moment_detr", "qd_detr", "mesm", "mesm_transductive")

# prefix -> parameter -> rule. "*" holds names shared by several notebooks (a notebook's own entry wins).
RULES: dict[str, dict[str, Rule]] = {
    "*": {
        "run_dir": ANY,                                   # supplied by the runner
        "seed": at_least(0),
        "device": Rule(pattern=r"auto|cpu|cuda(:\d+)?"),
        "dataset": Rule(pattern=r"[A-Za-z0-9_.-]+"),
        "backbone": Rule(pattern=r"[A-Za-z0-9_.-]+"),
        "split": Rule(pattern=r"[A-Za-z0-9_.-]+"),
        "n_seeds": at_least(1),
        "epochs": at_least(1),
        "batch_size": at_least(1),
        "lr": above(0),
        "chunk_size": at_least(1),
        "k_videos": at_least(1),
        "train_on_moments": ANY,                          # a bool: its type is checked from the default
    },
    "01": {
        "n_train_videos": at_least(1), "n_val_videos": at_least(1), "n_test_videos": at_least(1),
        "n_test_cg_videos": at_least(1), "min_duration": above(0), "max_duration": above(0),
        "fps": above(0), "frame_size": at_least(16), "n_coarse_captions": at_least(1),
        "n_heldout_pairs": at_least(1), "twin_prob": between(0, 1), "shared_datasets": ANY,
    },
    "02": {
        "num_frames": at_least(1), "clip_len": above(0), "frames_per_clip": at_least(2), "motion": ANY,
        "tiny_steps": at_least(1), "tiny_batch_size": at_least(2),
        "tiny_width": at_least(32),                        # GroupNorm(8) over the clip encoder's channels
        "tiny_embed_dim": at_least(2),
        "tiny_lr": above(0),
    },
    "03": {
        "dropout": between(0, 1, high_open=True), "support_weight": at_least(0), "num_trials": at_least(1),
    },
    "04": {
        "base_epochs": at_least(1), "teacher_epochs": at_least(1), "student_epochs": at_least(1),
        "num_steps": at_least(1), "step_ablation": at_least(1), "diffused_dim": at_least(0),
        "readout": one_of("gated", "exp"), "width": at_least(2), "student_lr": above(0),
    },
    "05": {
        "hidden_dim": at_least(4, multiple_of=4),         # 4 attention heads
        "num_queries": at_least(1), "input_dropout": between(0, 1, high_open=True),
        "denoising_groups": at_least(0), "models": one_of(*FINE_MODELS, min_items=1), "workers": at_least(1),
    },
    "06": {
        "ks_videos": at_least(1), "fusion": one_of("fine", "product", "weighted"), "alpha": between(0, 1), "temperature": at_least(0),
        "coarse_query": one_of("moment", "caption"),
    },
    "07": {
        "query": ANY, "fusion": one_of("fine", "product", "weighted"), "alpha": between(0, 1),
        "temperature": at_least(0),
    },
}
# Checks between two parameters of one notebook: (prefix, left, operator, right).
RELATIONS: tuple[tuple[str, str, str, str], ...] = (
    ("01", "min_duration", "<=", "max_duration"),
)


def rule_for(prefix: str, name: str) -> Rule | None:
    return RULES.get(prefix, {}).get(name, RULES["*"].get(name))


def _type_name(default: Any) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, str):
        return "a string"
    return type(default).__name__


def _typed(value: Any, default: Any) -> tuple[Any, str | None]:
    """`value` as the default's type (an int where a float is declared becomes a float), or why not."""
    if default is None:
        return value, None
    if isinstance(default, bool):
        return (value, None) if isinstance(value, bool) else (value, f"expected {_type_name(default)}")
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value, f"expected {_type_name(default)}"
        if isinstance(default, int) and not isinstance(value, int):
            return value, "expected an integer"
        if isinstance(value, float) and not math.isfinite(value):
            return value, "expected a finite number"
        return (float(value) if isinstance(default, float) else value), None
    if isinstance(default, str):
        return (value, None) if isinstance(value, str) else (value, "expected a string")
    if isinstance(default, list):
        if not isinstance(value, list):
            return value, f"expected a list like {default!r}"
        if not default:
            return value, None
        items = [_typed(item, default[0]) for item in value]
        bad = next((problem for _, problem in items if problem), None)
        return [item for item, _ in items], (f"every element: {bad}" if bad else None)
    return value, None


def check_parameter(prefix: str, name: str, value: Any, default: Any) -> tuple[Any, str | None]:
    """(the value to inject, the problem or None) for one parameter of notebook `prefix`."""
    typed, problem = _typed(value, default)
    if problem:
        return value, f"{problem} (the notebook's default is {default!r}), got {value!r}"
    rule = rule_for(prefix, name) or ANY  # undeclared: its type alone (tests/test_params.py asks for a rule)
    items = typed if isinstance(typed, list) else [typed]
    if isinstance(typed, list) and len(typed) < rule.min_items:
        return value, f"needs at least {rule.min_items} element(s), got {value!r}"
    for item in items:
        problem = rule.problem(item)
        if problem:
            return value, f"{problem}, got {item!r}" + (f" in {value!r}" if isinstance(typed, list) else "")
    return typed, None


def relation_problems(prefix: str, params: dict[str, Any]) -> list[tuple[str, str]]:
    """(parameter, problem) for every declared relation `params` breaks."""
    compare = {"<=": lambda a, b: a <= b, "<": lambda a, b: a < b}
    problems = []
    for where, left, op, right in RELATIONS:
        if where == prefix and left in params and right in params and not compare[op](params[left], params[right]):
            problems.append((left, f"must be {op} {right} ({params[right]!r}), got {params[left]!r}"))
    return problems
