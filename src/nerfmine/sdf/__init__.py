"""The signed-distance primitive of Instant-NGP (Müller et al. 2022, Sec. 5.2): a 3-D
multiresolution hash grid and a small MLP fitted to the signed distance of a mesh, optionally
with online hard sample mining over the training points.

- :mod:`~nerfmine.sdf.config`: :class:`SdfConfig` (instant-ngp's defaults) and its presets;
- :mod:`~nerfmine.sdf.mesh`: reading the mesh (a :class:`~nerfmine.errors.DataError` for bad
  input), its placement in the unit cube and its ground truth (libigl);
- :mod:`~nerfmine.sdf.samples`: the training-point mix, the pool of points with distances and
  the MAPE loss with its closed-form output gradient;
- :mod:`~nerfmine.sdf.field`: :class:`SdfField`, the parameters;
- :mod:`~nerfmine.sdf.fit`: :class:`SdfFit`, the training loop, IoU, mesh export, run folder
  and resume.

Importing this package does not import torch; its modules do.
"""
