"""Captions for the procedural world (`world.py`): templated sentences with synonyms, and a parser back.

`caption` writes one sentence per scene: every group's colour, shape and motion (and its count when above one),
sometimes its size, the background and the camera pan. `parse_prompt` reads the world's grammar, synonyms
included, back into the attribute dict that `adherence.score_video` checks, so arbitrary prompts can be scored.

Every vocabulary entry is a pair (train words, held-out words). Held-out words and the held-out templates
("in this clip, ...", "watch a ... move", "a circle in red", "a pair of ...", "...; meanwhile ...", "the view
panning ...") appear only in the "heldout" split, so a model can be tested on phrasings it never read.
`uses_heldout_phrasing` detects them.

Captions never name a palette colour or a direction outside the object phrases (backgrounds are "dark",
"striped", ...), so the parser can take every colour word as an object's colour and every direction word that
follows an object as its motion. The pan clause is removed before motions are read.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from vidfusion.data.world import ObjectSpec, SceneSpec

COLOUR_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "red": (("red", "crimson"), ("scarlet",)),
    "orange": (("orange", "tangerine"), ("amber",)),
    "yellow": (("yellow", "golden"), ("lemon",)),
    "green": (("green", "lime"), ("emerald",)),
    "cyan": (("cyan", "turquoise"), ("aqua",)),
    "blue": (("blue", "azure"), ("cobalt",)),
    "purple": (("purple", "violet"), ("indigo",)),
    "magenta": (("magenta", "pink"), ("fuchsia",)),
}
# (singular, plural) forms.
SHAPE_WORDS: dict[str, tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]] = {
    "circle": ((("circle", "circles"), ("ball", "balls"), ("dot", "dots")), (("disc", "discs"),)),
    "square": ((("square", "squares"), ("box", "boxes"), ("block", "blocks")), (("tile", "tiles"),)),
    "triangle": ((("triangle", "triangles"),), (("wedge", "wedges"),)),
    "star": ((("star", "stars"),), (("starburst", "starbursts"),)),
    "cross": ((("cross", "crosses"), ("plus sign", "plus signs")), ()),
}
SIZE_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "small": (("small", "little", "tiny"), ()),
    "large": (("large", "big"), ("huge",)),
}

Forms = tuple[str, str, str]  # (participle, third person singular, plural): "moving", "moves", "move"
TRANSLATION_VERBS: tuple[tuple[Forms, ...], tuple[Forms, ...]] = (
    (("moving", "moves", "move"), ("sliding", "slides", "slide"), ("drifting", "drifts", "drift"),
     ("travelling", "travels", "travel")),
    (("gliding", "glides", "glide"), ("heading", "heads", "head")),
)
DIRECTION_PHRASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "left": (("to the left", "left", "leftward"), ("toward the left edge",)),
    "right": (("to the right", "right", "rightward"), ("toward the right edge",)),
    "up": (("up", "upward"), ("toward the top",)),
    "down": (("down", "downward"), ("toward the bottom",)),
    "up-left": (("up and to the left", "diagonally up-left", "toward the upper left"),
                ("toward the top left corner",)),
    "up-right": (("up and to the right", "diagonally up-right", "toward the upper right"),
                 ("toward the top right corner",)),
    "down-left": (("down and to the left", "diagonally down-left", "toward the lower left"),
                  ("toward the bottom left corner",)),
    "down-right": (("down and to the right", "diagonally down-right", "toward the lower right"),
                   ("toward the bottom right corner",)),
}
# Verbs that carry their direction, used instead of verb + direction now and then.
DIRECTED_VERBS: dict[str, tuple[tuple[Forms, ...], tuple[Forms, ...]]] = {
    "up": ((("rising", "rises", "rise"),), ()),
    "down": ((("falling", "falls", "fall"),), (("sinking", "sinks", "sink"),)),
}
MOTION_PHRASES: dict[str, tuple[tuple[Forms, ...], tuple[Forms, ...]]] = {
    "bounce": ((("bouncing", "bounces", "bounce"), ("bouncing up and down", "bounces up and down",
                                                     "bounce up and down"), ("hopping", "hops", "hop")),
               (("jumping up and down", "jumps up and down", "jump up and down"),)),
    "rotate": ((("rotating", "rotates", "rotate"), ("spinning", "spins", "spin"),
                ("spinning in place", "spins in place", "spin in place")),
               (("twirling", "twirls", "twirl"),)),
    "grow": ((("growing", "grows", "grow"), ("getting bigger", "gets bigger", "get bigger"),
              ("expanding", "expands", "expand")),
             (("swelling", "swells", "swell"),)),
    "shrink": ((("shrinking", "shrinks", "shrink"), ("getting smaller", "gets smaller", "get smaller"),
                ("contracting", "contracts", "contract")),
               (("dwindling", "dwindles", "dwindle"),)),
    "still": ((("staying still", "stays still", "stay still"), ("standing still", "stands still", "stand still"),
               ("not moving", "does not move", "do not move"), ("resting in place", "rests in place",
                                                                "rest in place")),
              (("remaining motionless", "remains motionless", "remain motionless"),)),
}
BACKGROUND_WORDS = {
    "solid": ("plain", "solid"), "gradient": ("gradient", "shaded"), "stripes": ("striped", "stripy"),
    "noise": ("noisy", "textured", "grainy"), "checker": ("checkered", "chequered"),
}
TONE_WORDS = {"dark": ("dark",), "light": ("light", "pale"), "mixed": ()}
PAN_WORDS = {"left": ("left", "to the left"), "right": ("right", "to the right"), "up": ("up", "upward"),
             "down": ("down", "downward")}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}

# How often optional parts are mentioned.
P_SIZE, P_BACKGROUND, P_PAN, P_HELDOUT_WORD = 0.5, 0.35, 0.6, 0.5


def _pick(rng: np.random.Generator, options: tuple) -> object:
    return options[rng.integers(len(options))]


def _pick_vocab(rng: np.random.Generator, vocab: tuple[tuple, tuple], heldout: bool) -> object:
    """A train word, or in held-out mode a held-out word half of the time when one exists."""
    train, held = vocab
    if heldout and held and rng.uniform() < P_HELDOUT_WORD:
        return _pick(rng, held)
    return _pick(rng, train)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _motion_forms(motion: str, rng: np.random.Generator, heldout: bool) -> Forms:
    if motion in DIRECTED_VERBS and rng.uniform() < 0.25:
        return _pick_vocab(rng, DIRECTED_VERBS[motion], heldout)
    if motion in DIRECTION_PHRASES:
        verb = _pick_vocab(rng, TRANSLATION_VERBS, heldout)
        where = _pick_vocab(rng, DIRECTION_PHRASES[motion], heldout)
        return tuple(f"{form} {where}" for form in verb)
    return _pick_vocab(rng, MOTION_PHRASES[motion], heldout)


def _noun_phrase(obj: ObjectSpec, count: int, rng: np.random.Generator, heldout: bool,
                 colour_after: bool = False) -> str:
    """'a small red circle', 'two crimson balls', or with colour_after (held out) 'a circle in red'."""
    colour = _pick_vocab(rng, COLOUR_WORDS[obj.colour], heldout)
    singular, plural = _pick_vocab(rng, SHAPE_WORDS[obj.shape], heldout)
    words = [singular if count == 1 else plural, "in", colour] if colour_after else \
        [colour, singular if count == 1 else plural]
    if obj.motion not in ("grow", "shrink") and rng.uniform() < P_SIZE:
        words.insert(0, _pick_vocab(rng, SIZE_WORDS[obj.size], heldout))
    if count == 1:
        return f"{_article(words[0])} {' '.join(words)}"
    if count == 2 and heldout and rng.uniform() < 0.5:
        return f"a pair of {' '.join(words)}"
    return f"{NUMBER_WORDS[count]} {' '.join(words)}"


def _background_phrase(scene: SceneSpec, rng: np.random.Generator) -> str:
    kind = _pick(rng, BACKGROUND_WORDS[scene.background.kind])
    tones = TONE_WORDS[scene.background.tone]
    if tones and rng.uniform() < 0.5:
        kind = f"{_pick(rng, tones)} {kind}"
    return _pick(rng, (f"over a {kind} background", f"on a {kind} backdrop", f"against a {kind} background"))


def _pan_phrase(pan: str, rng: np.random.Generator, heldout: bool) -> str:
    where = _pick(rng, PAN_WORDS[pan])
    options = [f", while the camera pans {where}", f" as the camera pans {where}"]
    if heldout:
        options = [f", with the view panning {where}"]
    return _pick(rng, tuple(options))


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def caption(scene: SceneSpec, rng: np.random.Generator, heldout_phrasing: bool = False) -> str:
    """A caption of the scene. With `heldout_phrasing` it always uses a held-out template, and held-out
    synonyms half of the time; without it, it never uses either."""
    held = heldout_phrasing
    colour_after = held and rng.uniform() < 0.35
    groups = []  # per group: noun phrase, and its motion as participle / finite / bare-infinitive clause
    for obj, count in scene.groups():
        noun = _noun_phrase(obj, count, rng, held, colour_after)
        ing, third, plural = _motion_forms(obj.motion, rng, held)
        groups.append({"noun": noun, "ing": f"{noun} {ing}", "finite": f"{noun} {third if count == 1 else plural}",
                       "bare": f"{noun} {plural}", "motion": ing})
    groups = [groups[i] for i in rng.permutation(len(groups))]
    bg = _background_phrase(scene, rng) if rng.uniform() < P_BACKGROUND else ""
    pan = _pan_phrase(scene.pan, rng, held) if scene.pan and rng.uniform() < P_PAN else ""
    tail = (f" {bg}" if bg else "") + pan

    def join(form: str) -> str:
        return _join([g[form] for g in groups])

    if held:
        options = [f"in this clip, {join('finite')}{tail}"]
        if len(groups) == 1:
            options.append(f"{join('ing')}{tail}" if colour_after else f"watch {join('bare')}{tail}")
        else:
            rest = _join([g["finite"] for g in groups[1:]])
            options.append(f"{groups[0]['finite']}; meanwhile {rest}{tail}")
    elif len(groups) == 1:
        there = "there are" if len(scene.objects) > 1 else "there is"
        options = [f"{join('ing')}{tail}", f"{join('finite')}{tail}", f"{there} {join('ing')}{tail}"]
        if bg:
            options.append(f"{bg}, {join('finite')}{pan}")
        if len(scene.objects) == 1:
            options.append(f"{groups[0]['noun'].split(' ', 1)[1]}, {groups[0]['motion']}{tail}")  # tag style
    else:
        header = ""
        if rng.uniform() < 0.5:
            header = f"{NUMBER_WORDS[len(scene.objects)]} {_pick(rng, ('objects', 'shapes'))}: "
        options = [f"{header}{join('ing')}{tail}", f"{join('finite')}{tail}"]
        if len(groups) == 2:
            options.append(f"{groups[0]['finite']} while {groups[1]['finite']}{tail}")
    return str(_pick(rng, tuple(options)))


# ---------------------------------------------------------------------------------------------------------------
# Parsing


def _alternation(words) -> str:
    return "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))


_COLOUR_OF = {w: c for c, (train, held) in COLOUR_WORDS.items() for w in train + held}
_SHAPE_OF = {w: s for s, (train, held) in SHAPE_WORDS.items() for pair in train + held for w in pair}
_SIZE_OF = {w: s for s, (train, held) in SIZE_WORDS.items() for w in train + held}
_COUNT_OF = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "a pair of": 2}
_NP_HEAD = rf"\b(?:(?P<det>{_alternation(_COUNT_OF)})\s+)?(?:(?P<size>{_alternation(_SIZE_OF)})\s+)?"
_COLOUR_RE = rf"(?P<colour>{_alternation(_COLOUR_OF)})"
_SHAPE_RE = rf"(?P<shape>{_alternation(_SHAPE_OF)})"
_NOUN_PHRASES = (re.compile(rf"{_NP_HEAD}{_COLOUR_RE}\s+{_SHAPE_RE}\b"),
                 re.compile(rf"{_NP_HEAD}{_SHAPE_RE}\s+in\s+{_COLOUR_RE}\b"))
_HEADER = re.compile(r"\b(one|two|three)\s+(?:objects|shapes|things)\s*:")
_PAN = re.compile(r"[,;]?\s*(?:while|as|with)?\s*the\s+(?:camera|view)\s+(?:pans|panning|pan)\s+(?:to\s+the\s+)?"
                  r"(left|right|up|down)(?:wards?)?")
# Checked in this order: "bouncing up and down" is a bounce and "not moving" is still, not a translation.
_MOTION_KEYS = (
    ("still", re.compile(r"\b(?:still|motionless|stationary|not\s+mov\w*|rest(?:s|ing)?)\b")),
    ("bounce", re.compile(r"\b(?:bounc\w*|hop(?:s|ping)?|jump\w*)\b")),
    ("rotate", re.compile(r"\b(?:rotat\w*|spin\w*|twirl\w*)\b")),
    ("grow", re.compile(r"\b(?:grow\w*|bigger|larger|expand\w*|swell\w*)\b")),
    ("shrink", re.compile(r"\b(?:shrink\w*|smaller|contract\w*|dwindl\w*)\b")),
)
_UP = re.compile(r"\b(?:up|upwards?|upper|top|ris(?:e|es|ing)|climb\w*)\b")
_DOWN = re.compile(r"\b(?:down|downwards?|lower|bottom|fall(?:s|ing)?|sink(?:s|ing)?|drop\w*)\b")
_LEFT = re.compile(r"\b(?:left|leftwards?)\b")
_RIGHT = re.compile(r"\b(?:right|rightwards?)\b")


def parse_motion(text: str) -> str | None:
    """The motion a phrase of the world's grammar describes ("slides rightward" -> "right"), or None."""
    for motion, pattern in _MOTION_KEYS:
        if pattern.search(text):
            return motion
    up, down = bool(_UP.search(text)), bool(_DOWN.search(text))
    left, right = bool(_LEFT.search(text)), bool(_RIGHT.search(text))
    vertical = "up" if up and not down else "down" if down and not up else None
    horizontal = "left" if left and not right else "right" if right and not left else None
    if vertical and horizontal:
        return f"{vertical}-{horizontal}"
    return vertical or horizontal


def _normalise(text: str) -> str:
    text = text.lower().replace("-", " ")
    text = re.sub(r"[^a-z,;:]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def parse_prompt(text: str) -> dict | None:
    """Colour/shape/motion/count/size of every object group a prompt names, or None when it names none.

    Returns the layout of `world.prompt_attributes`: the first-named group's attributes at the top level,
    "objects" with every group, "num_objects" and "pan". Attributes the prompt leaves out are None.
    """
    text = _normalise(text)
    pan_match = _PAN.search(text)
    pan = pan_match.group(1) if pan_match else None
    if pan_match:
        text = text[: pan_match.start()] + text[pan_match.end():]
    matches = sorted((m for pattern in _NOUN_PHRASES for m in pattern.finditer(text)), key=lambda m: m.start())
    kept: list[re.Match] = []
    for m in matches:
        if not kept or m.start() >= kept[-1].end():
            kept.append(m)
    if not kept:
        return None

    groups = []
    for i, m in enumerate(kept):
        shape_word = m.group("shape")
        plural = any(shape_word == pair[1] for train, held in SHAPE_WORDS.values() for pair in train + held)
        det = m.group("det")
        count = _COUNT_OF[det] if det else (None if plural else 1)
        end = kept[i + 1].start() if i + 1 < len(kept) else len(text)
        motion = parse_motion(text[m.end(): end])
        if motion is None and i == 0:
            motion = parse_motion(text[: m.start()])  # "on a striped background, rising: a red star"
        groups.append({
            "colour": _COLOUR_OF[m.group("colour")], "shape": _SHAPE_OF[shape_word], "motion": motion,
            "count": count, "size": _SIZE_OF.get(m.group("size")) if m.group("size") else None,
        })
    header = _HEADER.search(text)
    counts = [g["count"] for g in groups]
    num_objects = _COUNT_OF[header.group(1)] if header else (None if None in counts else sum(counts))
    return {**groups[0], "objects": groups, "num_objects": num_objects, "pan": pan}


def _heldout_patterns() -> re.Pattern:
    words: list[str] = []
    for _, held in COLOUR_WORDS.values():
        words += held
    for _, held in SHAPE_WORDS.values():
        words += [w for pair in held for w in pair]
    for _, held in SIZE_WORDS.values():
        words += held
    for table in (DIRECTED_VERBS, MOTION_PHRASES):
        for _, held in table.values():
            words += [w for forms in held for w in forms]
    words += [w for forms in TRANSLATION_VERBS[1] for w in forms]
    for _, held in DIRECTION_PHRASES.values():
        words += held
    markers = [rf"\b(?:{_alternation(words)})\b", r"^in this clip\b", r"^watch\b", r"\bmeanwhile\b",
               r"\bpair of\b", r"\bthe view\b", _NOUN_PHRASES[1].pattern]
    return re.compile("|".join(f"(?:{m})" for m in markers))


_HELDOUT_RE = _heldout_patterns()


def uses_heldout_phrasing(text: str) -> bool:
    """True when a caption uses a word or template reserved for the "heldout" split."""
    return bool(_HELDOUT_RE.search(_normalise(text)))
