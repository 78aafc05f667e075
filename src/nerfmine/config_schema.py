"""How a config's JSON maps onto its dataclasses: the type each field's value must have (a
value of another type is a ConfigError naming the field and, for a quoted number, the fix),
and the moves that bring a config of an older layout into today's (:func:`upgrade_layout`).
Pure functions of dicts and types, used by :mod:`nerfmine.config` and
:mod:`nerfmine.checkpoint`.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
import types
import typing
from typing import Any

from nerfmine.errors import ConfigError
from nerfmine.json_files import shown

CONFIG_VERSION = 2


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved type of every field of the config dataclass ``cls`` (the modules use
    ``from __future__ import annotations``, so the annotations are strings)."""
    return typing.get_type_hints(cls)


def _type_words(hint: Any) -> str:
    """What a value of type ``hint`` is, in the words of a JSON file."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        words = [_type_words(a) for a in args if a is not type(None)]
        return " or ".join(words) + (" or null" if type(None) in args else "")
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_words(args[0]).removeprefix('a ')}s"
        return f"a list of {len(args)} {_type_words(args[0]).removeprefix('a ')}s"
    return {int: "a whole number", float: "a finite number", bool: "true or false",
            str: "a string", dict: "an object"}.get(origin or hint, str(hint))


class _WrongType(Exception):
    """A value does not have its field's type (turned into a ConfigError naming the field)."""


def _typed(value: Any, hint: Any) -> Any:
    """``value`` as a value of ``hint`` (a JSON list becomes a tuple, an integral float such as
    1e4 an int, an int a float), or _WrongType. Strings are never parsed as numbers: a quoted
    number in a config file is a mistake the message points out."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None):
                try:
                    return _typed(value, arg)
                except _WrongType:
                    pass
        raise _WrongType
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _WrongType
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_typed(v, args[0]) for v in value)
        if len(value) != len(args):
            raise _WrongType
        return tuple(_typed(v, a) for v, a in zip(value, args))
    if hint is bool:
        if not isinstance(value, bool):
            raise _WrongType
        return value
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _WrongType
        try:
            number = float(value)
        except (OverflowError, ValueError):
            raise _WrongType from None
        if not math.isfinite(number):
            raise _WrongType
        if hint is float:
            return number
        if isinstance(value, numbers.Integral):
            return int(value)
        if number != int(number):
            raise _WrongType
        return int(number)
    if hint in (str, dict):
        if not isinstance(value, hint):
            raise _WrongType
        return value
    return value  # a type this checker does not know: left to validate()


def check_field(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the type of field ``where`` (e.g. "optim.lr"), or a ConfigError that names
    the field, the type expected and (for a quoted number) how to write it."""
    try:
        return _typed(value, hint)
    except _WrongType:
        pass
    tip = ""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
            _typed(parsed, hint)
            tip = f"; write it without quotes: {value.strip()}"
        except (ValueError, RecursionError, _WrongType):
            pass
    raise ConfigError(f"{where} must be {_type_words(hint)}, got {shown(value)} "
                      f"({type(value).__name__}){tip}")



# Where the fields of layout 1 (before the march, optim and eval sections) live now.
LAYOUT_1_MOVES = {
    ("train", "step_size"): ("march", "step_size"),
    ("train", "max_steps_per_ray"): ("march", "max_steps_per_ray"),
    ("train", "cone_angle"): ("march", "cone_angle"),
    ("train", "min_transmittance"): ("march", "min_transmittance"),
    ("train", "lr"): ("optim", "lr"),
    ("train", "betas"): ("optim", "betas"),
    ("train", "eps"): ("optim", "eps"),
    ("train", "l2_reg"): ("optim", "l2_reg"),
    ("train", "lr_milestones"): ("optim", "lr_milestones"),
    ("train", "lr_gamma"): ("optim", "lr_gamma"),
    ("train", "ema_decay"): ("optim", "ema_decay"),
    ("train", "eval_rays_per_chunk"): ("eval", "rays_per_chunk"),
    ("train", "eval_max_images"): ("eval", "max_images"),
    ("train", "save_renders"): ("eval", "save_renders"),
}


def upgrade_layout(values: dict[str, Any], where: str = "config") -> tuple[dict[str, Any],
                                                                          list[str]]:
    """A config dict of an older layout in today's (a new dict), and what was moved.

    Layout 1 kept marching, optimizer and evaluation settings in ``train``; they are moved to
    ``march``, ``optim`` and ``eval`` (:data:`LAYOUT_1_MOVES`). A key given in both places is
    an error naming both. Dicts of today's layout come back unchanged."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
    train = out.get("train")
    moved: list[str] = []
    if isinstance(train, dict):
        for (old_section, old_key), (section, key) in LAYOUT_1_MOVES.items():
            if old_key not in train:
                continue
            target = out.setdefault(section, {})
            if not isinstance(target, dict):
                continue  # config_from_dict names the malformed section
            if key in target:
                raise ConfigError(f"{where}: {old_section}.{old_key} and {section}.{key} are "
                                  f"the same setting; give only {section}.{key}")
            target[key] = train.pop(old_key)
            moved.append(f"{old_section}.{old_key} -> {section}.{key}")
    version = out.get("config_version", 1)
    if isinstance(version, int) and not isinstance(version, bool) and version < CONFIG_VERSION:
        out["config_version"] = CONFIG_VERSION  # (a value of another type: config_from_dict)
    return out, moved
