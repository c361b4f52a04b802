"""Reading diffusers-style config dicts into our config dataclasses.

A config whose `_class_name` names another architecture is refused (the checkpoint is the wrong kind). Keys we do not
know are ignored with a warning, as diffusers does: configs written by other diffusers versions carry extra keys
that do not change the model.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Mapping, TypeVar

from vidfusion.errors import VidFusionError

C = TypeVar("C")


def config_from_dict(cls: type[C], d: Mapping[str, Any], class_names: tuple[str, ...], what: str) -> C:
    class_name = d.get("_class_name")
    if class_name is not None and class_name not in class_names:
        raise VidFusionError(
            f"this {what} config describes a {class_name}, not a {' or '.join(class_names)}; "
            f"point --model at a CogVideoX-layout folder"
        )
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in d if not k.startswith("_") and k not in known)
    if unknown:
        warnings.warn(f"ignoring unknown {what} config key(s): {', '.join(unknown)}", stacklevel=3)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known}
    return cls(**values)
