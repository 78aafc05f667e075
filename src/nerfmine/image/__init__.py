"""The image primitive of Instant-NGP (Müller et al. 2022, Sec. 5.1): a 2-D multiresolution hash
grid and a small MLP fitted to one image, optionally with online hard sample mining over pixels.

- :mod:`~nerfmine.image.config`: :class:`ImageConfig` (paper defaults) and its presets;
- :mod:`~nerfmine.image.io`: reading the image (a :class:`~nerfmine.errors.DataError` for bad
  input);
- :mod:`~nerfmine.image.field`: :class:`ImageField`, the parameters and the tiled render;
- :mod:`~nerfmine.image.fit`: :class:`ImageFit`, the training loop, its run folder and resume.

Importing this package does not import torch; its modules do.
"""
