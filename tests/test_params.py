"""Notebook parameters: every one is declared in c2f_lib/pipeline/params.py, and values are checked
against the notebook's default (type) and the declared rule (range)."""
from __future__ import annotations

import pytest

from c2f_lib.pipeline.params import RULES, check_parameter, relation_problems, rule_for
from c2f_lib.pipeline.runner import discover_stages, notebook_parameters

STAGES = discover_stages()


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_every_notebook_parameter_has_a_rule(stage):
    """A parameter added to a notebook must be declared in params.RULES (under its prefix or '*')."""
    missing = sorted(name for name in notebook_parameters(stage) if rule_for(stage.number, name) is None)
    assert not missing, f"{stage.name}: declare {missing} in c2f_lib/pipeline/params.py RULES[{stage.number!r}]"


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_every_notebook_default_obeys_its_rule(stage):
    for name, default in notebook_parameters(stage).items():
        assert check_parameter(stage.number, name, default, default)[1] is None, (stage.name, name, default)


def test_no_rule_for_a_parameter_no_notebook_declares():
    declared = {(s.number, name) for s in STAGES for name in notebook_parameters(s)}
    shared = {name for _, name in declared}
    stale = [(prefix, name) for prefix, rules in RULES.items() for name in rules
             if (prefix == "*" and name not in shared) or (prefix != "*" and (prefix, name) not in declared)]
    assert not stale, f"rules for parameters no notebook declares: {stale}"


@pytest.mark.parametrize("prefix, name, default, value, problem", [
    ("03", "epochs", 5, "two", "expected an integer"),
    ("03", "epochs", 5, 2.0, "expected an integer"),
    ("03", "epochs", 5, True, "expected an integer"),
    ("03", "epochs", 5, 0, "must be >= 1, got 0"),
    ("03", "lr", 1e-3, "1e-3", "expected a number"),
    ("03", "lr", 1e-3, float("nan"), "expected a finite number"),
    ("03", "lr", 1e-3, 0.0, "must be > 0"),
    ("02", "motion", True, 1, "expected true or false"),
    ("03", "device", "auto", 3, "expected a string"),
    ("03", "device", "auto", "tpu", "expected a value matching"),
    ("06", "ks_videos", [1, 2], [1, "b"], "every element: expected an integer"),
    ("06", "ks_videos", [1, 2], "1,2", "expected a list"),
    ("06", "alpha", 0.5, 1.5, "must be <= 1"),
])
def test_bad_values_are_named(prefix, name, default, value, problem):
    _, found = check_parameter(prefix, name, value, default)
    assert found and problem in found, (value, found)


def test_good_values_are_typed_as_declared():
    assert check_parameter("03", "lr", 1, 1e-3) == (1.0, None)          # an int where a float is declared
    assert check_parameter("06", "ks_videos", [1, 5], [1, 2, 5, 10]) == ([1, 5], None)
    assert check_parameter("01", "device", "cuda:1", "auto") == ("cuda:1", None)
    assert check_parameter("05", "models", [], ["mesm"])[1] == "needs at least 1 element(s), got []"


def test_relations_between_parameters():
    assert relation_problems("01", {"min_duration": 40.0, "max_duration": 30.0}) == [
        ("min_duration", "must be <= max_duration (30.0), got 40.0")]
    assert relation_problems("01", {"min_duration": 10.0, "max_duration": 30.0}) == []
