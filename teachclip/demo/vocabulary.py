"""The demo's vocabulary, its ground-truth data model and the caption composer (docs/demo-data.md).

An object is a shape of a colour and a size moving in a direction over a textured, tinted background;
every attribute value has several wordings (:data:`SYNONYMS`), and captions fill one of
:data:`TEMPLATES` with random wordings (:func:`compose_caption`). ``demo.json`` (:data:`META_FILE`),
written next to a demo manifest, holds every video's plan: timeline, objects, captions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

GENERATOR_VERSION = 1
META_FILE = "demo.json"  # marks a directory as demo output (and holds the ground truth)

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star", "ring", "crescent")
COLOURS = {
    "red": (230, 40, 40),
    "orange": (255, 140, 0),
    "yellow": (240, 225, 40),
    "green": (40, 200, 70),
    "cyan": (40, 215, 225),
    "blue": (60, 100, 255),
    "magenta": (225, 60, 215),
    "white": (245, 245, 245),
}
SIZES = {"small": 0.1, "large": 0.17}  # object radius as a fraction of the stage side
_D = 0.7071
DIRECTIONS = {
    "right": (1.0, 0.0),
    "left": (-1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-right": (_D, -_D),
    "up-left": (-_D, -_D),
    "down-right": (_D, _D),
    "down-left": (-_D, _D),
}
TEXTURES = ("stripes", "checks", "dots", "grain")
TINTS = {"grey": (100, 100, 100), "brown": (110, 78, 48), "navy": (38, 48, 105), "olive": (85, 95, 42)}
JUNK_KINDS = ("blank", "flash", "noise", "clutter", "title")

# Every attribute value and its caption wordings (the first is the canonical word).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "ball"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "wedge"),
    "diamond": ("diamond", "rhombus", "lozenge"),
    "cross": ("cross", "plus sign"),
    "star": ("star", "five-pointed star"),
    "ring": ("ring", "hoop", "donut"),
    "crescent": ("crescent", "crescent moon", "sickle"),
    "red": ("red", "crimson", "scarlet"),
    "orange": ("orange", "tangerine"),
    "yellow": ("yellow", "golden"),
    "green": ("green", "lime"),
    "cyan": ("cyan", "turquoise", "aqua"),
    "blue": ("blue", "cobalt", "azure"),
    "magenta": ("magenta", "pink", "fuchsia"),
    "white": ("white", "snowy", "ivory"),
    "small": ("small", "little", "tiny"),
    "large": ("large", "big", "huge"),
    "right": ("to the right", "rightward", "towards the right"),
    "left": ("to the left", "leftward", "towards the left"),
    "up": ("up", "upward", "towards the top"),
    "down": ("down", "downward", "towards the bottom"),
    "up-right": ("up and to the right", "diagonally up-right", "towards the top right"),
    "up-left": ("up and to the left", "diagonally up-left", "towards the top left"),
    "down-right": ("down and to the right", "diagonally down-right", "towards the bottom right"),
    "down-left": ("down and to the left", "diagonally down-left", "towards the bottom left"),
    "stripes": ("striped", "stripy"),
    "checks": ("checkered", "tiled"),
    "dots": ("dotted", "spotted"),
    "grain": ("grainy", "mottled"),
    "grey": ("grey", "gray"),
    "brown": ("brown",),
    "navy": ("navy",),
    "olive": ("olive",),
}
VERBS = ("moves", "slides", "drifts", "travels", "glides", "floats")
GERUNDS = ("moving", "sliding", "drifting", "travelling", "gliding", "heading")
SCENE_PREPOSITIONS = ("on", "against", "over", "in front of")
SCENE_NOUNS = ("background", "backdrop")
# "A_" becomes "a" or "an" after the slots are filled; {scene} is "" or " on a striped grey backdrop".
TEMPLATES = (
    "A_ {size} {colour} {shape} {verb} {direction}{scene}",
    "{direction} {verb} A_ {size} {colour} {shape}{scene}",
    "A_ {colour} {shape}, {size}, {gerund} {direction}{scene}",
    "there is A_ {size} {colour} {shape} {gerund} {direction}{scene}",
    "the {shape} is {size} and {colour}, and it {verb} {direction}{scene}",
    "A_ {size} {shape} coloured {colour} {gerund} {direction}{scene}",
    "{gerund} {direction}{scene}: A_ {size} {colour} {shape}",
    "clip of A_ {size} {colour} {shape} that {verb} {direction}{scene}",
)


# ---- the data model of a demo video --------------------------------------------------------------


@dataclass(frozen=True)
class ObjectSpec:
    """One object segment: what moves, where to, and on which background."""

    shape: str
    colour: str
    size: str
    direction: str
    texture: str
    tint: str

    @property
    def description(self) -> tuple[str, str, str, str]:
        return (self.shape, self.colour, self.size, self.direction)

    @property
    def scene(self) -> tuple[str, str]:
        return (self.texture, self.tint)


@dataclass(frozen=True)
class CaptionSpec:
    caption_id: str
    object_index: int  # which of the video's objects the caption names
    mentions_scene: bool
    text: str


@dataclass(frozen=True)
class VideoPlan:
    index: int
    video_id: str
    split: str
    # One entry per second: "object:0", "object:1" or "junk:<kind>".
    timeline: tuple[str, ...]
    objects: tuple[ObjectSpec, ...]
    target: int  # the object of the first caption (the only one in the test split)
    captions: tuple[CaptionSpec, ...]

    def seconds_of(self, object_index: int) -> list[int]:
        """The seconds that show object ``object_index`` (its ground-truth relevant frames)."""
        return [s for s, entry in enumerate(self.timeline) if entry == f"object:{object_index}"]

    def to_json(self) -> dict:
        record = asdict(self)
        for caption in record["captions"]:
            caption["relevant_seconds"] = self.seconds_of(caption["object_index"])
        return record


def compose_caption(rng: np.random.Generator, obj: ObjectSpec, template: str, mention_scene: bool) -> str:
    """Fill ``template`` with a random wording of ``obj``'s attributes (and its scene)."""

    def word(value: str) -> str:
        return pick(rng, SYNONYMS[value])

    scene = ""
    if mention_scene:
        scene = f" {pick(rng, SCENE_PREPOSITIONS)} A_ {word(obj.texture)} {word(obj.tint)} {pick(rng, SCENE_NOUNS)}"
    text = template.format(
        size=word(obj.size),
        colour=word(obj.colour),
        shape=word(obj.shape),
        direction=word(obj.direction),
        verb=pick(rng, VERBS),
        gerund=pick(rng, GERUNDS),
        scene=scene,
    )
    return re.sub(r"A_ (\w)", lambda m: ("an " if m.group(1) in "aeiou" else "a ") + m.group(1), text)


def pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


