"""What the settings of the single-task primitives share
(:class:`~nerfmine.image.config.ImageConfig`, :class:`~nerfmine.sdf.config.SdfConfig`): the
checks of the settings both have, the dict round trip through config.json and the checkpoint,
and a config from a named preset.

No torch here: the command line builds its parsers from the presets and the choices without
importing it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from nerfmine.errors import ConfigError

BACKEND_CHOICES = ("auto", "torch", "triton")


class FitConfig:
    """Mixed into a primitive's frozen dataclass, whose fields hold its settings (each class keeps
    its own fields, defaults and order: the order is config.json's).

    The class names ``NAME`` (the primitive, in messages: "image", "sdf"), ``MINING_CHOICES``
    and ``AT_LEAST_ONE`` (the settings that must be at least 1), and adds the checks only it
    needs in :meth:`_problems`. Every problem of a config is reported at once, in one
    :class:`ConfigError`."""

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
        problems += self._problems()
        if problems:
            raise ConfigError(f"{self.NAME} config: " + "; ".join(problems))

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
