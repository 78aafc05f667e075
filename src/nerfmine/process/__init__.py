"""From a phone video or a folder of photos to a scene ``nerfmine train`` reads.

- :mod:`~nerfmine.process.frames`: the sharpest frame per time window of a video, photos made
  upright, pre-downscaled copies.
- :mod:`~nerfmine.process.sfm`: structure from motion through pycolmap.
- :mod:`~nerfmine.process.convert`: the COLMAP model as nerfmine's colmap loader reads it,
  written as an instant-ngp transforms.json.
- :mod:`~nerfmine.process.preview`: cameras.png, the cameras and points from above and the side.
- :mod:`~nerfmine.process.pipeline`: :func:`process`, the stages in order, the report and the
  scene folder written whole or not at all.

Needs the ``process`` extra (pycolmap, imageio-ffmpeg): ``pip install 'nerfmine[process]'``.
"""

from nerfmine.process.pipeline import ProcessOptions, ProcessReport, Reporter, process

__all__ = ["ProcessOptions", "ProcessReport", "Reporter", "process"]
