"""``nerfmine view``'s library: a web viewer of a trained scene, or of one while it trains.

The viewer is a viser server (``pip install 'nerfmine[view]'``): :mod:`nerfmine.viewer.server`
serves the page and the browsers' cameras, :mod:`nerfmine.viewer.renderer` turns them into
nerfmine cameras and renders them from its own copy of the scene's field. The command line is
in :mod:`nerfmine.cli.view`.
"""

from nerfmine.viewer.renderer import (
    CV_TO_GL,
    FieldRenderer,
    ViewCamera,
    c2w_to_viser,
    matrix_to_quat,
    quat_to_matrix,
    viser_to_c2w,
)
from nerfmine.viewer.server import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    INSTALL_HINT,
    MAX_FRUSTUMS,
    MIN_SIDE,
    STILL_SECONDS,
    Viewer,
    check_port,
    free_port,
    import_viser,
    load_cameras,
    make_viewer,
    wait_for_interrupt,
)

__all__ = [
    "CV_TO_GL", "DEFAULT_HOST", "DEFAULT_PORT", "INSTALL_HINT", "MAX_FRUSTUMS", "MIN_SIDE",
    "STILL_SECONDS", "FieldRenderer", "ViewCamera", "Viewer", "c2w_to_viser", "check_port",
    "free_port", "import_viser", "load_cameras", "make_viewer", "matrix_to_quat",
    "quat_to_matrix", "viser_to_c2w", "wait_for_interrupt",
]
