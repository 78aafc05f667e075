"""Scenes on disk and what feeds training from them.

:func:`load_scene` reads a split of a scene in any format (NeRF-synthetic folders, instant-ngp
and nerfstudio transforms.json, COLMAP projects) into a :class:`SceneData`; the formats' own
loaders are :mod:`~nerfmine.data.blender`, :mod:`~nerfmine.data.transforms` and
:mod:`~nerfmine.data.colmap`, with :mod:`~nerfmine.data.files` (reading files) and
:mod:`~nerfmine.data.capture` (hold-out splits, scene placement) shared below them.
:mod:`~nerfmine.data.rays` draws a training step's rays from a split's images.
"""

from nerfmine.data.capture import holdout_indices
from nerfmine.data.loader import load_scene
from nerfmine.data.scene_data import SceneData

__all__ = ["SceneData", "holdout_indices", "load_scene"]
