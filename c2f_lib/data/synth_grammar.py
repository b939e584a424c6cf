"""The SynthMoments vocabulary and caption grammar, kept as data.

Every visual attribute (colour, shape, size, background) and every action has a canonical name
(used in meta.json and for the compositional split) and a tuple of surface forms (synonyms and
paraphrases) that captions sample from. Captions are compositional: a noun phrase built from
size x colour x shape, plus a verb phrase for the action, so "the red circle slides left" and
"a crimson disc moves to the left" describe the same event, and retrieval has to bind the right
attribute to the right action.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Colour:
    rgb: tuple[int, int, int]
    words: tuple[str, ...]


@dataclass(frozen=True)
class Shape:
    words: tuple[str, ...]
    rotation_visible: bool  # whether a full turn can be seen (a circle spinning looks still)


@dataclass(frozen=True)
class Action:
    phrases: tuple[str, ...]  # third person present; "{to}" is the target colour word (change_colour)


COLOURS: dict[str, Colour] = {
    "red": Colour((220, 45, 45), ("red", "crimson", "scarlet")),
    "green": Colour((60, 190, 75), ("green", "emerald")),
    "blue": Colour((60, 110, 235), ("blue", "azure")),
    "yellow": Colour((235, 215, 55), ("yellow", "golden")),
    "purple": Colour((165, 70, 205), ("purple", "violet")),
    "orange": Colour((245, 140, 35), ("orange", "amber")),
    "white": Colour((235, 235, 235), ("white", "pale")),
}

SHAPES: dict[str, Shape] = {
    "circle": Shape(("circle", "disc", "ball", "dot"), rotation_visible=False),
    "square": Shape(("square", "box", "block"), rotation_visible=True),
    "triangle": Shape(("triangle", "wedge"), rotation_visible=True),
    "cross": Shape(("cross", "plus sign"), rotation_visible=True),
    "bar": Shape(("bar", "stick", "rod"), rotation_visible=True),
}

SIZES: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny"),
    "large": ("large", "big"),
}

BACKGROUNDS: dict[str, tuple[tuple[int, int, int], tuple[str, ...]]] = {
    "black": ((12, 12, 16), ("black", "dark")),
    "grey": ((70, 70, 76), ("grey", "gray")),
    "brown": ((72, 48, 30), ("brown",)),
    "navy": ((18, 24, 60), ("navy", "dark blue")),
}

ACTIONS: dict[str, Action] = {
    "move_left": Action(("moves left", "slides to the left", "moves to the left", "travels leftwards",
                         "drifts left")),
    "move_right": Action(("moves right", "slides to the right", "moves to the right",
                          "travels rightwards", "drifts right")),
    "move_up": Action(("moves up", "rises", "slides upwards", "goes up", "floats upward")),
    "move_down": Action(("moves down", "falls", "slides downwards", "goes down", "drops")),
    "grow": Action(("grows", "gets bigger", "expands", "becomes larger", "swells")),
    "shrink": Action(("shrinks", "gets smaller", "contracts", "becomes smaller")),
    "spin": Action(("spins", "rotates", "turns around", "twirls")),
    "blink": Action(("blinks", "flickers", "flashes on and off")),
    "appear": Action(("appears", "fades in", "shows up", "becomes visible")),
    "disappear": Action(("disappears", "fades out", "vanishes")),
    "change_colour": Action(("turns {to}", "changes colour to {to}", "becomes {to}")),
}

# Fine (event) caption templates: {np} is "a/the [size] colour shape", {vp} the action phrase.
FINE_TEMPLATES = (
    "{np} {vp}",
    "{np} {vp}",
    "we see {np} that {vp}",
    "{np} {vp} in the clip",
    "here {np} {vp}",
)
# Coarse (whole video) captions: an event list, or a scene description.
COARSE_EVENT_PREFIXES = ("", "a video where ", "in this clip ", "an animation in which ", "first ")
COARSE_JOINERS = (", then ", " and later ", "; after that ", ", and then ")
COARSE_OVERLAP_JOINERS = (" while ", " as ", ", meanwhile ")
COARSE_SCENE_TEMPLATES = (
    "{actors} on a {bg} background",
    "an animation of {actors}",
    "a scene with {actors} in front of a {bg} backdrop",
)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def with_article(rng: np.random.Generator, noun_phrase_text: str, definite_prob: float = 0.5) -> str:
    """'the ...', or 'a'/'an' chosen by the first letter."""
    if rng.random() < definite_prob:
        return f"the {noun_phrase_text}"
    return ("an " if noun_phrase_text[0] in "aeiou" else "a ") + noun_phrase_text


def noun_phrase(rng: np.random.Generator, colour: str, shape: str, size: str | None) -> str:
    """"[size] colour shape" with synonyms; `size` None leaves the size word out."""
    words = [_pick(rng, SIZES[size])] if size is not None else []
    words += [_pick(rng, COLOURS[colour].words), _pick(rng, SHAPES[shape].words)]
    return " ".join(words)


def verb_phrase(rng: np.random.Generator, action: str, to_colour: str | None = None) -> str:
    phrase = _pick(rng, ACTIONS[action].phrases)
    if "{to}" in phrase:
        phrase = phrase.format(to=_pick(rng, COLOURS[to_colour].words))
    return phrase


def fine_caption(rng: np.random.Generator, colour: str, shape: str, size: str | None,
                 action: str, to_colour: str | None = None) -> str:
    template = _pick(rng, FINE_TEMPLATES)
    return template.format(np=with_article(rng, noun_phrase(rng, colour, shape, size)),
                           vp=verb_phrase(rng, action, to_colour))


def event_clause(rng: np.random.Generator, colour: str, shape: str, action: str,
                 to_colour: str | None = None) -> str:
    return f"the {noun_phrase(rng, colour, shape, None)} {verb_phrase(rng, action, to_colour)}"


def join_clauses(rng: np.random.Generator, clauses: list[tuple[str, float, float]]) -> str:
    """Join (clause, start, end) in time order: 'then' for a later event, 'while' for an overlapping one."""
    text, _, previous_end = clauses[0]
    for clause, start, end in clauses[1:]:
        text += _pick(rng, COARSE_OVERLAP_JOINERS if start < previous_end else COARSE_JOINERS) + clause
        previous_end = max(previous_end, end)
    return text


def list_phrase(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def scene_caption(rng: np.random.Generator, actors: list[tuple[str, str, str]], background: str) -> str:
    """Describe who is in the video (no actions): (colour, shape, size) per actor."""
    names = [with_article(rng, noun_phrase(rng, c, s, z if rng.random() < 0.5 else None), 0.0)
             for c, s, z in actors]
    return _pick(rng, COARSE_SCENE_TEMPLATES).format(
        actors=list_phrase(names), bg=_pick(rng, BACKGROUNDS[background][1]))


def vocabulary() -> dict[str, list[str]]:
    """Canonical names of every attribute and action (recorded in meta.json)."""
    return {"colours": list(COLOURS), "shapes": list(SHAPES), "sizes": list(SIZES),
            "backgrounds": list(BACKGROUNDS), "actions": list(ACTIONS)}
