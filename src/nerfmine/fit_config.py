"""What the settings of the single-task primitives share
(:class:`~nerfmine.image.config.ImageConfig`, :class:`~nerfmine.sdf.config.SdfConfig`): the
checks of the settings both have (the time budget ``seconds`` and the evaluation times
``eval_at`` among them), the dict round trip through config.json and the checkpoint, a config
from a named preset, and the rule that a time budget lifts the step budget
(:func:`lift_step_limit`).

No torch here: the command line builds its parsers from the presets and the choices without
importing it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from nerfmine.errors import ConfigError

BACKEND_CHOICES = ("auto", "torch", "triton")

STEPS_WITHOUT_LIMIT = 2**40
"""``steps`` of a run whose time budget is given without a step budget: never reached (at a
million steps a second it would take 12 days), so the clock alone ends the run."""


def lift_step_limit(overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` with ``steps`` set to :data:`STEPS_WITHOUT_LIMIT` when they give a time
    budget (``seconds``) but no ``steps``: the presets' step counts (10000) would otherwise end
    a GPU run long before its clock does. The command line and benchmarks/primitives.py both
    build their configs through it."""
    if overrides.get("seconds") is not None and overrides.get("steps") is None:
        return {**overrides, "steps": STEPS_WITHOUT_LIMIT}
    return overrides


class FitConfig:
    """Mixed into a primitive's frozen dataclass, whose fields hold its settings (each class keeps
    its own fields, defaults and order: the order is config.json's).

    The class names ``NAME`` (the primitive, in messages: "image", "sdf"), ``MINING_CHOICES``
    and ``AT_LEAST_ONE`` (the settings that must be at least 1), and adds the checks only it
    needs in :meth:`_problems`. Every problem of a config is reported at once, in one
    :class:`ConfigError`. ``eval_at`` is stored sorted, without repeats, as a tuple (a list
    read from JSON included)."""

    NAME: ClassVar[str] = ""
    MINING_CHOICES: ClassVar[tuple[str, ...]] = ()
    AT_LEAST_ONE: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        problems = []
        if self.mining not in self.MINING_CHOICES:
            problems.append(f"mining must be one of {self.MINING_CHOICES}, got {self.mining!r}")
        if self.backend not in BACKEND_CHOICES:
            problems.append(f"backend must be one of {BACKEND_CHOICES}, got {self.backend!r}")
        if not 1 <= self.log2_table_size <= 24:
            problems.append(f"log2_table_size must lie in [1, 24], got {self.log2_table_size}")
        for name in self.AT_LEAST_ONE:
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        problems += self._budget_problems()
        problems += self._problems()
        if problems:
            raise ConfigError(f"{self.NAME} config: " + "; ".join(problems))

    def _budget_problems(self) -> list[str]:
        """The checks of ``seconds`` and ``eval_at`` (normalised here, the dataclass being
        frozen): positive finite seconds, and no point beyond the time budget (training stops
        there, so it would never be evaluated; the end always is)."""
        problems = []
        seconds = self.seconds
        if seconds is not None and not (isinstance(seconds, (int, float))
                                        and math.isfinite(seconds) and seconds > 0):
            problems.append(f"seconds must be a positive number of seconds (or None: no time "
                            f"budget), got {seconds!r}")
            seconds = None
        try:
            points = tuple(sorted({float(p) for p in self.eval_at}))
        except (TypeError, ValueError):
            return [*problems, f"eval_at must be a list of seconds of training clock, got "
                               f"{self.eval_at!r}"]
        object.__setattr__(self, "eval_at", points)
        bad = [p for p in points if not (math.isfinite(p) and p > 0)]
        if bad:
            problems.append(f"eval_at points must be positive seconds, got {bad}")
        beyond = [p for p in points if seconds is not None and p > seconds]
        if beyond:
            problems.append(f"eval_at point(s) {', '.join(f'{p:g}' for p in beyond)} lie beyond "
                            f"the time budget seconds = {seconds:g}: training stops there, so "
                            "they would never be evaluated (the end always is); raise seconds "
                            "or drop them")
        return problems

    def _problems(self) -> list[str]:
        """The class's own checks, after the shared ones: one message per problem."""
        return []

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str | None = None) -> Any:
        """The config of ``values`` (a config.json or a checkpoint's); unknown keys are an
        error, named with ``where`` (default: "<NAME> config"). JSON has no tuples: ``betas``
        comes back as one."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"{where or cls.NAME + ' config'}: unknown setting(s) "
                              f"{', '.join(unknown)}")
        values = dict(values)
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**values)

    @classmethod
    def from_preset(cls, presets: dict[str, dict[str, Any]], preset: str,
                    overrides: dict[str, Any] | None = None) -> Any:
        """The values of ``presets[preset]`` (recorded as ``preset``) under ``overrides``."""
        if preset not in presets:
            raise ConfigError(f"unknown {cls.NAME} preset {preset!r}; choose one of "
                              f"{sorted(presets)}")
        return cls.from_dict({**presets[preset], "preset": preset, **(overrides or {})})
