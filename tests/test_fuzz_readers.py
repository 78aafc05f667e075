"""Property-based tests of every reader of user files (issue 20), with Hypothesis.

Each reader is given inputs that start valid and are then mutated: keys dropped and added,
values replaced by wrong types, NaN, inf, huge, tiny and negative numbers, deep nesting,
quoted numbers and odd strings; the bytes truncated, flipped, re-encoded (UTF-16, Latin-1) or
replaced by random bytes; binary counts set to 2^60. The property, for every reader:

    the input loads (and what is loaded is usable: finite poses that can be inverted,
    positive focal lengths, consistent shapes), or the reader raises nerfmine's own error
    (NerfmineError: DataError, ConfigError) whose message names the file;

never another exception (KeyError, TypeError, LinAlgError, UnicodeDecodeError, OverflowError,
RecursionError, ...), never a hang (each call runs under an alarm of READER_SECONDS).

How many inputs are tried is set by the Hypothesis profile of tests/conftest.py: "ci" (the
default, derandomised, bounded for CI) or "long" (NERFMINE_HYPOTHESIS_PROFILE=long, by hand).
``--hypothesis-show-statistics`` shows, per test, how often the inputs loaded and how often
they raised; with NERFMINE_FUZZ_COUNTS=<file> the same counts are also written there as JSON.

Each reader's valid input is also loaded by a plain test, so that a property cannot pass by
rejecting everything; the known defects of issue 20 have plain regression tests at the end.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import pickle
import signal
import struct
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

hypothesis = pytest.importorskip("hypothesis", reason="pip install 'nerfmine[test]'")
from hypothesis import event, given, note  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from nerfmine.camera_paths import read_camera_path  # noqa: E402
from nerfmine.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from nerfmine.config import load_config, load_overrides, make_config  # noqa: E402
from nerfmine.data import load_scene  # noqa: E402
from nerfmine.data.files import resolve_data_path, rotation_problem  # noqa: E402
from nerfmine.errors import ConfigError, DataError, NerfmineError  # noqa: E402

try:
    import pycolmap
except ImportError:  # optional extra: the COLMAP tests are skipped without it
    pycolmap = None
needs_pycolmap = pytest.mark.skipif(pycolmap is None, reason="pycolmap is optional")

# A reader that takes longer than this on one tiny input is taken to hang (the slowest valid
# input here loads in well under a second on a slow CPU).
READER_SECONDS = 60
W, H = 8, 6

# --------------------------------------------------------------------------- bookkeeping
COUNTS: dict[str, Counter] = defaultdict(Counter)


class ReaderHung(AssertionError):
    """A reader did not return within READER_SECONDS."""


@contextmanager
def time_limit(seconds: float, what: str):
    """Raise ReaderHung in the test when the body runs longer than ``seconds`` (SIGALRM: the
    main thread only, which is where pytest runs tests)."""
    def on_alarm(signum, frame):
        raise ReaderHung(f"{what} did not return within {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(reader: str, names, fn, *args, **kwargs):
    """Run ``fn`` (a reader) on a generated input: its result, or None when it raised a
    NerfmineError whose message names one of ``names`` (the file, or the folder every file
    of the input lies in; None for an input that is no file). Any other exception
    propagates: Hypothesis reports the input."""
    with time_limit(READER_SECONDS, reader):
        try:
            result = fn(*args, **kwargs)
        except NerfmineError as exc:
            message = str(exc)
            note(f"{type(exc).__name__}: {message}")
            assert names is None or any(str(n) in message for n in names), (
                f"{reader}: the error does not name the file ({names}): {message}")
            COUNTS[reader]["raised " + type(exc).__name__] += 1
            event(f"raised {type(exc).__name__}")
            return None
    COUNTS[reader]["loaded"] += 1
    event("loaded")
    return result


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    """Print how the generated inputs fared per reader (shown with -s) and write them to
    $NERFMINE_FUZZ_COUNTS as JSON when it is set (BENCHMARKS.md's robustness figures)."""
    yield
    if not COUNTS:
        return
    lines = [f"  {reader}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
             for reader, c in sorted(COUNTS.items())]
    print("\nfuzzed readers (every call, shrinking included):\n" + "\n".join(lines))
    target = os.environ.get("NERFMINE_FUZZ_COUNTS")
    if target:
        Path(target).write_text(json.dumps({r: dict(c) for r, c in COUNTS.items()},
                                           indent=1, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- JSON mutations
class Raw:
    """JSON text spliced into a document as it is: what json.dumps cannot write (a nesting
    thousands deep, an integer of 5000 digits, 1e999)."""

    def __init__(self, text: str, name: str):
        self.text, self.name = text, name

    def __repr__(self) -> str:
        return f"Raw({self.name})"


RAW_VALUES = [
    Raw("[" * 50_000 + "]" * 50_000, "list nested 50000 deep"),
    Raw('{"a": ' * 3000 + "1" + "}" * 3000, "object nested 3000 deep"),
    Raw("[" * 300 + "1" + "]" * 300, "list nested 300 deep"),
    Raw("1" * 5000, "integer of 5000 digits"),
    Raw("1e999", "1e999"),
    Raw("-1e999", "-1e999"),
    Raw("NaN", "NaN"),
    Raw("-Infinity", "-Infinity"),
]
NASTY = [
    None, True, False, 0, -1, 1, 3, 2**31, 2**63, 2**64 + 1, -(2**63), 10**30, 10**400,
    1e308, -1e308, 3.5e38, 5e-324, -0.0, 1e-300, -1e-9, math.nan, math.inf, -math.inf,
    "", "0.01", "2", "nan", "true", "OPENCV", "\x00", "\ud800", "é\u202e", "../../etc/passwd",
    "/", "images", "a" * 300, [], {}, [[]], {"": None}, [1, 2, 3], [[1, 2], [3]],
    [[0.0] * 4] * 4, [0.0] * 16,
]
plain_values = st.one_of(
    st.sampled_from(NASTY),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.lists(st.floats(allow_nan=True), max_size=5),
    st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=4),
                 lambda inner: st.lists(inner, max_size=3)
                 | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8),
)
values = st.one_of(plain_values, st.sampled_from(RAW_VALUES))


def _paths(doc, prefix=()) -> list[tuple]:
    """Every path (tuple of keys and indices) to a node of ``doc``, the root first."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


def _get(doc, path):
    for k in path:
        doc = doc[k]
    return doc


def _set(doc, path, value):
    if not path:
        return value
    _get(doc, path[:-1])[path[-1]] = value
    return doc


@st.composite
def mutation(draw, doc, pool=values):
    """One mutation of the JSON document ``doc`` (changed in place, or a new root); new
    values come from ``pool``, copied (the pool's lists and dicts are shared constants: a
    mutation inside one must never reach the next example, nor make a document contain
    itself)."""
    path = draw(st.sampled_from(_paths(doc)))
    node = _get(doc, path)
    op = draw(st.sampled_from(["replace", "replace", "replace", "drop", "add", "stringify",
                               "scale", "truncate", "duplicate", "wrap"]))
    note(f"mutation: {op} at {list(path)}")
    if op == "replace":
        return _set(doc, path, copy.deepcopy(draw(pool)))
    if op == "drop" and path:
        parent = _get(doc, path[:-1])
        del parent[path[-1]]
        return doc
    if op == "add" and isinstance(node, dict):
        node[draw(st.sampled_from(["extra", "frames", "fl_x", "w", "c2w", "transform_matrix",
                                   "camera_model", "train", "lr", "format_version", ""]))] = \
            copy.deepcopy(draw(pool))
        return doc
    if op == "add" and isinstance(node, list):
        node.append(copy.deepcopy(draw(pool)))
        return doc
    if op == "stringify" and not isinstance(node, (dict, list, Raw)):
        return _set(doc, path, str(node))
    if op == "scale" and isinstance(node, (int, float)) and not isinstance(node, bool):
        factor = draw(st.sampled_from([0, -1, 1e-30, 1e30, 1e300, 2**70]))
        try:
            return _set(doc, path, node * factor)
        except OverflowError:
            return _set(doc, path, math.inf)
    if op == "truncate" and isinstance(node, list):
        return _set(doc, path, node[:draw(st.integers(0, max(len(node) - 1, 0)))])
    if op == "duplicate" and isinstance(node, list) and node:
        node.append(copy.deepcopy(node[draw(st.integers(0, len(node) - 1))]))
        return doc
    if op == "wrap":
        return _set(doc, path, [node])
    return doc


def dumps(doc, ensure_ascii: bool = True) -> str:
    """json.dumps with Raw values spliced in and NaN/inf written as Python's json does."""
    raws: list[Raw] = []

    def swap(v):
        if isinstance(v, Raw):
            raws.append(v)
            return f"__raw_{len(raws) - 1}__"
        if isinstance(v, dict):
            return {k: swap(x) for k, x in v.items()}
        if isinstance(v, list):
            return [swap(x) for x in v]
        return v

    text = json.dumps(swap(doc), ensure_ascii=ensure_ascii)
    for k, raw in enumerate(raws):
        text = text.replace(f'"__raw_{k}__"', raw.text, 1)
    return text


@st.composite
def file_bytes(draw, text: str):
    """The bytes of a file holding ``text``: mostly UTF-8, else another encoding, truncated,
    with bytes flipped or inserted, or entirely random bytes."""
    kind = draw(st.sampled_from(["utf-8"] * 6 + ["utf-8-sig", "utf-16", "utf-32", "latin-1",
                                                 "truncate", "flip", "insert", "random",
                                                 "empty"]))
    data = text.encode("utf-8", errors="surrogatepass")
    if kind in ("utf-8-sig", "utf-16", "utf-32", "latin-1"):
        data = text.encode(kind, errors="replace" if kind == "latin-1" else "surrogatepass")
    elif kind == "truncate":
        data = data[:draw(st.integers(0, max(len(data) - 1, 0)))]
    elif kind == "flip" and data:
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            buf[draw(st.integers(0, len(buf) - 1))] ^= draw(st.integers(1, 255))
        data = bytes(buf)
    elif kind == "insert":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    elif kind == "random":
        data = draw(st.binary(max_size=256))
    elif kind == "empty":
        data = b""
    note(f"bytes: {kind}, {len(data)} bytes")
    return data


@st.composite
def mutated(draw, valid_docs: list, max_mutations: int = 3, pool=values):
    """A valid document of ``valid_docs`` mutated 0 to ``max_mutations`` times."""
    doc = copy.deepcopy(draw(st.sampled_from(valid_docs)))
    for _ in range(draw(st.integers(0, max_mutations))):
        doc = draw(mutation(doc, pool))
    return doc


@st.composite
def mutated_json(draw, valid_docs: list, max_mutations: int = 3):
    """A valid document of ``valid_docs``, mutated 0 to ``max_mutations`` times, as the
    bytes of a file (see :func:`file_bytes`)."""
    doc = draw(mutated(valid_docs, max_mutations))
    text = dumps(doc, ensure_ascii=draw(st.booleans()))
    return draw(file_bytes(text))


# --------------------------------------------------------------------------- what loads
def _finite32(x) -> bool:
    a = np.asarray(x, dtype=np.float64)
    return bool(np.isfinite(a).all() and np.isfinite(a.astype(np.float32)).all())


def check_scene(scene) -> None:
    """A loaded split is usable: poses finite with invertible rotations, focal lengths > 0,
    every array of the same number of images and of the stated size."""
    n = len(scene)
    assert n >= 1 and scene.images.shape == (n, scene.height, scene.width, 4)
    c2w = scene.c2w.double().numpy()
    assert c2w.shape == (n, 4, 4) and _finite32(c2w)
    for pose in c2w:
        assert rotation_problem(pose) is None
    intr = (np.array([[scene.fx, scene.fy, scene.cx, scene.cy]]) if scene.intrinsics is None
            else scene.intrinsics.numpy())
    assert _finite32(intr) and (intr[:, :2] > 0).all()
    if scene.distortion is not None:
        assert _finite32(scene.distortion.numpy())
    assert math.isfinite(scene.scale) and scene.scale > 0 and _finite32(scene.offset)
    assert math.isfinite(scene.aabb_scale) and scene.aabb_scale > 0


def check_camera_path(path) -> None:
    n = len(path)
    assert n >= 1 and path.c2w.shape == (n, 4, 4) and _finite32(path.c2w.numpy())
    for pose in path.c2w.double().numpy():
        assert rotation_problem(pose) is None
    fov = path.fov_y.numpy()
    assert fov.shape == (n,) and ((fov > 0) & (fov < 180)).all()
    assert 0 < path.width <= 65535 and 0 < path.height <= 65535
    assert math.isfinite(path.fps) and path.fps > 0
    assert all(math.isfinite(path.focal(i)) for i in range(n))


# --------------------------------------------------------------------------- transforms.json
def _pose(i: int) -> list:
    m = np.eye(4)
    m[:3, 3] = [0.1 * i, 0.05 * i, 2.0]
    return m.tolist()


def _png(i: int, w: int = W, h: int = H, mode: str = "RGB") -> bytes:
    pixels = np.full((h, w, 4), (30 * i) % 256, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


N_FRAMES = 4
INTRINSICS = {"fl_x": 10.0, "fl_y": 11.0, "cx": 4.1, "cy": 2.9, "w": W, "h": H}
NGP_DOC = {**INTRINSICS, "k1": 0.01, "k2": -0.02, "p1": 1e-3, "p2": -1e-3, "aabb_scale": 4,
           "scale": 0.5, "offset": [0.5, 0.5, 0.5],
           "frames": [{"file_path": f"images/{i:04d}.png", "sharpness": 30.0 + i,
                       "transform_matrix": _pose(i)} for i in range(N_FRAMES)]}
NERFSTUDIO_DOC = {"camera_model": "OPENCV", **INTRINSICS, "k1": 0.01, "k2": 0.0, "p1": 0.0,
                  "p2": 0.0, "applied_transform": np.eye(4)[:3].tolist(),
                  "frames": [{"file_path": f"images/{i:04d}.png", "transform_matrix": _pose(i),
                              "fl_x": 10.5} for i in range(N_FRAMES)]}
SYNTHETIC_DOC = {"camera_angle_x": 0.69,
                 "frames": [{"file_path": f"images/{i:04d}", "transform_matrix": _pose(i)}
                            for i in range(N_FRAMES)]}
TRANSFORMS_DOCS = [NGP_DOC, NERFSTUDIO_DOC, SYNTHETIC_DOC]


@pytest.fixture(scope="module")
def capture_root(tmp_path_factory) -> Path:
    """A capture folder: images/0000.png .. 0003.png (8x6) and a transforms.json that the
    tests overwrite."""
    root = tmp_path_factory.mktemp("capture")
    (root / "images").mkdir()
    for i in range(N_FRAMES):
        (root / "images" / f"{i:04d}.png").write_bytes(_png(i))
    (root / "transforms.json").write_text(json.dumps(NGP_DOC))
    return root


@pytest.mark.parametrize("doc", TRANSFORMS_DOCS, ids=["instant-ngp", "nerfstudio", "synthetic"])
def test_valid_transforms_json_loads(capture_root, doc):
    (capture_root / "transforms.json").write_text(json.dumps(doc))
    scene = load_scene(capture_root / "transforms.json", "all")
    check_scene(scene)
    assert len(scene) == N_FRAMES


@given(data=mutated_json(TRANSFORMS_DOCS),
       split=st.sampled_from(["train", "test", "all"]),
       min_sharpness=st.sampled_from([None, None, 0.0, 31.5, 1e9]),
       decode=st.booleans())
def test_fuzz_transforms_json(capture_root, data, split, min_sharpness, decode):
    path = capture_root / "transforms.json"
    path.write_bytes(data)
    scene = outcome("transforms.json", [path], load_scene, path, split, holdout_every=2,
                    min_sharpness=min_sharpness, decode=decode)
    if scene is not None:
        check_scene(scene)


# --------------------------------------------------------------------------- images
def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((H, W, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _png16() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((H, W), dtype=np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


IMAGE_VARIANTS = {
    "rgb": _png(1), "rgba": _png(1, mode="RGBA"), "grey": _png(1, mode="L"),
    "palette": _png(1, mode="P"), "one-bit": _png(1, mode="1"), "jpeg": _jpeg(),
    "16-bit": _png16(), "other size": _png(1, w=W + 1), "tiny": _png(1, w=1, h=1),
    "text": b"not an image\n", "empty": b"",
}


@st.composite
def image_bytes(draw):
    """The bytes of an image file: a valid PNG or JPEG of some mode or size, or one damaged
    by truncation, flipped bytes or random bytes."""
    name = draw(st.sampled_from(sorted(IMAGE_VARIANTS)))
    data = IMAGE_VARIANTS[name]
    how = draw(st.sampled_from(["as is", "as is", "truncate", "flip", "random"]))
    note(f"image: {name}, {how}")
    if how == "truncate":
        data = data[:draw(st.integers(0, max(len(data) - 1, 0)))]
    elif how == "flip" and data:
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            buf[draw(st.integers(0, len(buf) - 1))] ^= draw(st.integers(1, 255))
        data = bytes(buf)
    elif how == "random":
        data = draw(st.binary(max_size=200))
    return data


@given(data=image_bytes(), which=st.integers(0, N_FRAMES - 1), downscale=st.sampled_from([1, 2]),
       decode=st.booleans())
def test_fuzz_images_of_a_capture(capture_root, data, which, downscale, decode):
    (capture_root / "transforms.json").write_text(json.dumps(NGP_DOC))
    image = capture_root / "images" / f"{which:04d}.png"
    image.write_bytes(data)
    try:
        scene = outcome("images", [capture_root], load_scene, capture_root, "all",
                        downscale=downscale, decode=decode)
        if scene is not None:
            check_scene(scene)
    finally:
        image.write_bytes(_png(which))


# --------------------------------------------------------------------------- Blender folders
BLENDER_DOC = {"camera_angle_x": 0.69, "camera_angle_y": 0.6,
               "frames": [{"file_path": f"./train/r_{i}", "rotation": 0.1,
                           "transform_matrix": _pose(i)} for i in range(3)]}


@pytest.fixture(scope="module")
def blender_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("blender")
    (root / "train").mkdir()
    for i in range(3):
        (root / "train" / f"r_{i}.png").write_bytes(_png(i, mode="RGBA"))
    (root / "transforms_train.json").write_text(json.dumps(BLENDER_DOC))
    return root


def test_valid_blender_folder_loads(blender_root):
    (blender_root / "transforms_train.json").write_text(json.dumps(BLENDER_DOC))
    scene = load_scene(blender_root, "train")
    check_scene(scene)
    assert len(scene) == 3 and scene.dialect == "blender"


@given(data=mutated_json([BLENDER_DOC]), downscale=st.sampled_from([1, 1, 2, 7]),
       decode=st.booleans())
def test_fuzz_blender_transforms(blender_root, data, downscale, decode):
    path = blender_root / "transforms_train.json"
    path.write_bytes(data)
    scene = outcome("blender", [blender_root], load_scene, blender_root, "train",
                    downscale=downscale, decode=decode)
    if scene is not None:
        check_scene(scene)


# --------------------------------------------------------------------------- LLFF folders
def _llff_rows(n: int = 4) -> np.ndarray:
    """[n, 17] poses_bounds rows of cameras on a circle looking at the origin."""
    rows = []
    for i in range(n):
        a = 2 * math.pi * i / n
        eye = np.array([2 * math.cos(a), 2 * math.sin(a), 0.5])
        back = eye / np.linalg.norm(eye)
        right = np.cross([0.0, 0.0, 1.0], back)
        right /= np.linalg.norm(right)
        up = np.cross(back, right)
        drb = np.stack([-up, right, back], axis=1)  # LLFF's down, right, back columns
        mat = np.concatenate([drb, eye[:, None], np.array([[H], [W], [9.0]])], axis=1)
        rows.append(np.concatenate([mat.reshape(-1), [0.5, 6.0]]))
    return np.stack(rows)


LLFF_ROWS = _llff_rows()


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


@pytest.fixture(scope="module")
def llff_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("llff")
    (root / "images").mkdir()
    for i in range(len(LLFF_ROWS)):
        (root / "images" / f"IMG_{i:03d}.png").write_bytes(_png(i))
    (root / "poses_bounds.npy").write_bytes(_npy(LLFF_ROWS))
    return root


def test_valid_llff_folder_loads(llff_root):
    (llff_root / "poses_bounds.npy").write_bytes(_npy(LLFF_ROWS))
    scene = load_scene(llff_root, "all")
    check_scene(scene)
    assert len(scene) == len(LLFF_ROWS) and scene.dialect == "llff"


NPY_VALUES = [np.nan, np.inf, -np.inf, 0.0, -1.0, 1e-300, 1e300, 3e38, 1e-45, -6.0, 2.0**70]


@st.composite
def poses_bounds_bytes(draw):
    """poses_bounds.npy: the valid array with entries, shape or dtype changed (a singular
    pose among them), or its bytes damaged, or a header claiming 2^60 rows."""
    a = LLFF_ROWS.copy()
    kind = draw(st.sampled_from(["values", "values", "shape", "dtype", "singular", "bytes",
                                 "header", "valid"]))
    note(f"poses_bounds: {kind}")
    if kind == "values":
        for _ in range(draw(st.integers(1, 4))):
            a[draw(st.integers(0, len(a) - 1)), draw(st.integers(0, 16))] = draw(
                st.sampled_from(NPY_VALUES) | st.floats(width=64))
        return _npy(a)
    if kind == "shape":
        shapes = [a[:, :16], a[:0], a[:2], np.concatenate([a, a[:1]]), a.T, a.reshape(-1),
                  a.reshape(4, 17, 1), a[None]]
        return _npy(draw(st.sampled_from(shapes)))
    if kind == "dtype":
        dtype = draw(st.sampled_from([np.float32, np.float16, np.int64, np.uint8, np.bool_,
                                      np.complex128, "U8", "S4", "<M8[s]"]))
        try:
            return _npy(a.astype(dtype))
        except (TypeError, ValueError):
            return _npy(a.astype(np.float32))
    if kind == "singular":
        poses = a[:, :15].reshape(-1, 3, 5)
        k = draw(st.integers(0, len(a) - 1))
        col = draw(st.sampled_from([[0], [1], [2], [0, 1, 2]]))
        poses[k][:, col] = 0.0 if draw(st.booleans()) else poses[k][:, [(col[0] + 1) % 3]]
        a[:, :15] = poses.reshape(-1, 15)
        return _npy(a)
    data = _npy(a)
    if kind == "bytes":
        return _damage(draw, data)
    if kind == "header":
        rows = draw(st.sampled_from([2**60, 2**33, 5, 10**6]))
        header = data.split(b"\n", 1)[0].decode("latin-1")
        return data.replace(header.encode("latin-1"), header.replace(
            "(4, 17)", f"({rows}, 17)").ljust(len(header)).encode("latin-1"), 1)
    return data


def _damage(draw, data: bytes) -> bytes:
    """``data`` truncated, with bytes flipped or overwritten by random ones."""
    how = draw(st.sampled_from(["truncate", "flip", "random", "zip"]))
    note(f"damage: {how}")
    if how == "truncate":
        return data[:draw(st.integers(0, max(len(data) - 1, 0)))]
    if how == "flip":
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 6))):
            buf[draw(st.integers(0, len(buf) - 1))] ^= draw(st.integers(1, 255))
        return bytes(buf)
    if how == "zip":  # an .npz (a zip file) saved under the .npy name
        buf = io.BytesIO()
        np.savez(buf, poses=LLFF_ROWS)
        return buf.getvalue()
    return draw(st.binary(max_size=300))


@given(data=poses_bounds_bytes(), downscale=st.sampled_from([1, 2]), decode=st.booleans())
def test_fuzz_llff_poses_bounds(llff_root, data, downscale, decode):
    path = llff_root / "poses_bounds.npy"
    path.write_bytes(data)
    scene = outcome("llff", [path], load_scene, llff_root, "all", downscale=downscale,
                    decode=decode)
    if scene is not None:
        check_scene(scene)


# --------------------------------------------------------------------------- COLMAP models
def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


@pytest.fixture(scope="module")
def colmap_root(tmp_path_factory) -> Path:
    """A COLMAP project: sparse/0 (binary), text/ (the same model as .txt) and images/."""
    if pycolmap is None:
        pytest.skip("pycolmap is optional")
    root = tmp_path_factory.mktemp("colmap")
    rng = np.random.default_rng(0)
    rec = pycolmap.Reconstruction()
    for cid, (model, params) in enumerate(
            [("PINHOLE", [10.0, 11.0, 4.5, 3.5]),
             ("OPENCV", [12.0, 13.0, 4.0, 3.0, 0.1, -0.02, 0.003, -0.004])], start=1):
        rec.add_camera_with_trivial_rig(pycolmap.Camera(model=model, width=W, height=H,
                                                        params=params, camera_id=cid))
    (root / "images").mkdir()
    for k in range(4):
        name = f"img{k:02d}.png"
        image = pycolmap.Image(name=name, keypoints=np.zeros((2, 2)), camera_id=k % 2 + 1,
                               image_id=k + 1)
        rec.add_image_with_trivial_frame(
            image, pycolmap.Rigid3d(pycolmap.Rotation3d(_rotation(rng)), rng.normal(size=3)))
        (root / "images" / name).write_bytes(_png(k))
    for p in rng.normal(size=(5, 3)):
        rec.add_point3D(p, pycolmap.Track(), np.zeros(3, dtype=np.uint8))
    (root / "sparse" / "0").mkdir(parents=True)
    (root / "text").mkdir()
    rec.write(str(root / "sparse" / "0"))
    rec.write_text(str(root / "text"))
    return root


def _model_files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for d in ("sparse/0", "text") for p in sorted((root / d).iterdir())}


@pytest.fixture(scope="module")
def colmap_files(colmap_root) -> dict[Path, bytes]:
    """The model files' valid bytes, restored before each example."""
    return _model_files(colmap_root)


def _restore(files: dict[Path, bytes]) -> None:
    for path, data in files.items():
        path.write_bytes(data)


@needs_pycolmap
@pytest.mark.parametrize("model", ["sparse/0", "text"])
def test_valid_colmap_model_loads(colmap_root, colmap_files, model):
    from nerfmine.data.colmap import load_colmap

    _restore(colmap_files)
    scene = load_colmap(colmap_root / model, colmap_root / "images", "all")
    check_scene(scene)
    assert len(scene) == 4 and scene.dialect == "colmap"


# Offsets of the counts in the valid binary files (found by the format: each file starts with
# its record count; images.bin's first image has its number of 2D points after id, pose,
# camera id and name).
BIN_COUNTS = {"cameras.bin": [0], "images.bin": [0, 64 + 8 + len("img00.png") + 1],
              "points3D.bin": [0, 8 + 43], "rigs.bin": [0], "frames.bin": [0]}


@st.composite
def colmap_binary_damage(draw, files: dict[Path, bytes]):
    """(path, new bytes) of one binary model file: a count set to a huge or wrong value,
    or the bytes truncated, flipped or random."""
    bins = sorted(p for p in files if p.suffix == ".bin")
    path = draw(st.sampled_from(bins))
    data = files[path]
    if draw(st.booleans()):
        offset = draw(st.sampled_from(BIN_COUNTS[path.name]))
        value = draw(st.sampled_from([2**60, 2**64 - 1, 2**33, 2**32 + 1, 1000, 5, 0]))
        note(f"{path.name}: count at {offset} set to {value}")
        if offset + 8 <= len(data):
            data = data[:offset] + struct.pack("<Q", value) + data[offset + 8:]
        return path, data
    return path, _damage(draw, data)


TXT_TOKENS = ["nan", "inf", "-inf", "-1", "0", "1e309", "1e-320", "abc", "", "4294967297",
              "18446744073709551616", "PINHOLE", "FOV", "img00.png", "../x.png", "é", "\t",
              "1 2 3", "9999999999999999999999"]


@st.composite
def colmap_text_damage(draw, files: dict[Path, bytes]):
    """(path, new bytes) of one text model file: tokens replaced (NaN, inf, negative, huge,
    words), lines dropped or duplicated, or the bytes damaged."""
    txts = sorted(p for p in files if p.suffix == ".txt")
    path = draw(st.sampled_from(txts))
    lines = files[path].decode().split("\n")
    how = draw(st.sampled_from(["tokens", "tokens", "drop", "duplicate", "bytes"]))
    note(f"{path.name}: {how}")
    if how == "bytes":
        return path, _damage(draw, files[path])
    data_lines = [k for k, line in enumerate(lines) if line and not line.startswith("#")]
    if not data_lines:
        return path, files[path]
    k = draw(st.sampled_from(data_lines))
    if how == "drop":
        del lines[k]
    elif how == "duplicate":
        lines.insert(k, lines[k])
    else:
        tokens = lines[k].split(" ")
        for _ in range(draw(st.integers(1, 3))):
            tokens[draw(st.integers(0, len(tokens) - 1))] = draw(st.sampled_from(TXT_TOKENS))
        lines[k] = " ".join(tokens)
    return path, "\n".join(lines).encode()


@needs_pycolmap
@given(data=st.data(), split=st.sampled_from(["train", "test", "all"]), decode=st.booleans())
def test_fuzz_colmap_binary_model(colmap_root, colmap_files, data, split, decode):
    _restore(colmap_files)
    path, damaged = data.draw(colmap_binary_damage(colmap_files))
    path.write_bytes(damaged)
    scene = outcome("colmap .bin", [colmap_root], load_scene, colmap_root, split,
                    holdout_every=2, decode=decode)
    if scene is not None:
        check_scene(scene)


@needs_pycolmap
@given(data=st.data(), decode=st.booleans())
def test_fuzz_colmap_text_model(colmap_root, colmap_files, data, decode):
    from nerfmine.data.colmap import load_colmap

    _restore(colmap_files)
    path, damaged = data.draw(colmap_text_damage(colmap_files))
    path.write_bytes(damaged)
    scene = outcome("colmap .txt", [colmap_root], load_colmap, colmap_root / "text",
                    colmap_root / "images", "all", decode=decode)
    if scene is not None:
        check_scene(scene)


# --------------------------------------------------------------------------- camera paths
def _look(eye) -> list:
    eye = np.asarray(eye, dtype=np.float64)
    back = eye / np.linalg.norm(eye)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, np.cross(back, right), back, eye
    return m.tolist()


NERFMINE_PATH = {"width": 64, "height": 48, "fps": 24,
                 "frames": [{"c2w": _look([2, 0, 1]), "fov_y": 40.0},
                            {"c2w": _look([0, 2, 1]), "fx": 60.0},
                            {"c2w": _look([-2, 0, 1]), "fov_y": 45.5}]}
NERFSTUDIO_PATH = {"render_width": 64, "render_height": 48, "seconds": 2.0,
                   "camera_type": "perspective",
                   "camera_path": [{"camera_to_world": sum(_look([2, 1, 1]), []), "fov": 50,
                                    "aspect": 1.33},
                                   {"camera_to_world": _look([1, 2, 1]), "fov": 50}]}


def test_valid_camera_paths_load(tmp_path):
    for k, doc in enumerate([NERFMINE_PATH, NERFSTUDIO_PATH]):
        (tmp_path / f"{k}.json").write_text(json.dumps(doc))
        check_camera_path(read_camera_path(tmp_path / f"{k}.json"))


@given(data=mutated_json([NERFMINE_PATH, NERFSTUDIO_PATH]))
def test_fuzz_camera_path_json(tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / "fuzz_camera_path.json"
    path.write_bytes(data)
    result = outcome("camera path", [path], read_camera_path, path)
    if result is not None:
        check_camera_path(result)


# --------------------------------------------------------------------------- configs
def _config_doc() -> dict:
    return json.loads(json.dumps(make_config("cpu", {"train": {"max_steps": 10}}).to_dict()))


OVERRIDES = {"train": {"max_steps": 50, "eval_at": [10, 20], "seed": 3},
             "optim": {"lr": 0.01, "betas": [0.9, 0.99]},
             "data": {"downscale": 2, "offset": [0.5, 0.5, 0.5], "aabb_scale": None},
             "model": {"log2_table_size": 14}, "backend": "torch"}
LAYOUT_1 = {"train": {"max_steps": 5, "lr": 0.003, "step_size": 0.01, "eval_max_images": 2},
            "model": {"n_levels": 8}}


def test_valid_configs_load(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_config_doc()))
    assert load_config(tmp_path / "config.json") == make_config("cpu",
                                                                {"train": {"max_steps": 10}})
    (tmp_path / "overrides.json").write_text(json.dumps(OVERRIDES))
    overrides, moved = load_overrides(tmp_path / "overrides.json")
    config = make_config("cpu", overrides)
    assert config.optim.lr == 0.01 and config.data.downscale == 2 and moved == []
    (tmp_path / "old.json").write_text(json.dumps(LAYOUT_1))
    overrides, moved = load_overrides(tmp_path / "old.json")
    assert make_config("cpu", overrides).optim.lr == 0.003 and "train.lr -> optim.lr" in moved


@given(data=mutated_json([_config_doc(), LAYOUT_1]))
def test_fuzz_config_file(tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / "fuzz_config.json"
    path.write_bytes(data)
    outcome("config.json", [path], load_config, path)


@given(data=mutated_json([OVERRIDES, LAYOUT_1]))
def test_fuzz_config_overrides_file(tmp_path_factory, data):
    """A ``--config`` file: read (errors name the file), then merged with the cpu preset
    (errors name the field: they may come from the flags too)."""
    path = tmp_path_factory.getbasetemp() / "fuzz_overrides.json"
    path.write_bytes(data)
    read = outcome("--config file", [path], load_overrides, path)
    if read is not None:
        outcome("--config merged", None, make_config, "cpu", read[0])


@given(overrides=mutated([OVERRIDES, LAYOUT_1], pool=plain_values))
def test_fuzz_config_overrides_dict(overrides):
    """Overrides given in Python (make_config's argument), not through a file."""
    outcome("overrides dict", None, make_config, "cpu", overrides)


# --------------------------------------------------------------------------- checkpoints
def _state() -> dict:
    return {"step": 7, "config": _config_doc(), "model": {"w": torch.arange(6.0)},
            "optimizer": {"t": 3, "m": [torch.zeros(2)]}}


class _Payload:
    """A pickle that would create a file when unpickled with code execution allowed."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    save_checkpoint(path, _state())
    return path.read_bytes()


def test_valid_checkpoint_loads(tmp_path, checkpoint_bytes):
    (tmp_path / "checkpoint.pt").write_bytes(checkpoint_bytes)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 7 and torch.equal(state["model"]["w"], torch.arange(6.0))


@given(data=st.data())
def test_fuzz_checkpoint_bytes(tmp_path_factory, checkpoint_bytes, data):
    """A checkpoint file damaged (truncated, flipped, random bytes) or replaced by a pickle
    that would run code: refused with a ConfigError, and the code never runs."""
    base = tmp_path_factory.getbasetemp()
    path, sentinel = base / "fuzz_checkpoint.pt", base / "payload_ran"
    if data.draw(st.integers(0, 4)) == 0:
        buf = io.BytesIO()
        torch.save({"format_version": 1, "x": _Payload(str(sentinel))}, buf)
        raw = buf.getvalue() if data.draw(st.booleans()) else pickle.dumps(
            _Payload(str(sentinel)))
    else:
        raw = _damage(data.draw, checkpoint_bytes)
    path.write_bytes(raw)
    outcome("checkpoint bytes", [path], load_checkpoint, path)
    assert not sentinel.exists(), "loading a checkpoint ran code from the file"


@given(data=st.data(), version=st.sampled_from(["saved", 1, 2, 3, "1", None]))
def test_fuzz_checkpoint_state(tmp_path_factory, data, version):
    """A checkpoint whose content is well-formed but holds odd values: its config mutated
    like a config file's, its format version changed."""
    path = tmp_path_factory.getbasetemp() / "fuzz_state.pt"
    state = _state()
    state["config"] = data.draw(mutated([state["config"]], pool=plain_values))
    if version == "saved":
        save_checkpoint(path, state)
    else:
        torch.save({"format_version": version, **state}, path)
    outcome("checkpoint state", [path], load_checkpoint, path)


def test_checkpoint_with_a_section_that_is_not_an_object(tmp_path):
    state = _state()
    state["config"]["data"] = [1]
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    with pytest.raises(ConfigError, match="checkpoint.pt"):
        load_checkpoint(tmp_path / "checkpoint.pt")


# --------------------------------------------------------------------------- issue 20's defects
def test_config_strings_name_the_field(tmp_path):
    """{"train": {"lr": "0.01"}} and {"data": {"downscale": "2"}} in --config gave a
    TypeError; now a ConfigError names the file, the field and the fix."""
    for doc, field in [({"train": {"lr": "0.01"}}, "optim.lr"),
                       ({"data": {"downscale": "2"}}, "data.downscale"),
                       ({"train": {"max_steps": "5"}}, "train.max_steps")]:
        path = tmp_path / "c.json"
        path.write_text(json.dumps(doc))
        with pytest.raises(ConfigError) as info:
            load_overrides(path)
        assert str(path) in str(info.value) and field in str(info.value)
        assert "without quotes" in str(info.value)
    with pytest.raises(ConfigError, match="data.downscale must be a whole number"):
        make_config("cpu", {"data": {"downscale": "2"}, "train": {"max_steps": 1}})
    with pytest.raises(ConfigError, match="optim.lr must be a finite number"):
        make_config("cpu", {"optim": {"lr": "0.01"}, "train": {"max_steps": 1}})


def test_singular_rotations_are_refused(capture_root, blender_root, llff_root, tmp_path):
    """Poses whose rotation is singular loaded silently and failed later with LinAlgError
    (inverting them for the occupancy grid's visibility); now every reader names the pose."""
    singular = np.eye(4)
    singular[:3, :3] = 0.0
    doc = copy.deepcopy(NGP_DOC)
    for frame in doc["frames"]:
        frame["transform_matrix"] = singular.tolist()
    (capture_root / "transforms.json").write_text(json.dumps(doc))
    with pytest.raises(DataError,
                       match=r"frames\[0\].*transform_matrix has a singular rotation part"):
        load_scene(capture_root, "all")
    doc["frames"] = NGP_DOC["frames"][:1] + [{**NGP_DOC["frames"][1],
                                             "transform_matrix": [[1, 1, 0, 0], [0, 0, 0, 0],
                                                                  [0, 0, 1, 0], [0, 0, 0, 1]]}]
    (capture_root / "transforms.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"frames\[1\].*singular rotation part"):
        load_scene(capture_root, "all")

    blender = copy.deepcopy(BLENDER_DOC)
    blender["frames"][2]["transform_matrix"] = singular.tolist()
    (blender_root / "transforms_train.json").write_text(json.dumps(blender))
    with pytest.raises(DataError, match=r"frames\[2\]"):
        load_scene(blender_root, "train")

    rows = LLFF_ROWS.copy()
    rows[1, :15].reshape(3, 5)[:, :3] = 0.0  # row 1's rotation
    (llff_root / "poses_bounds.npy").write_bytes(_npy(rows))
    with pytest.raises(DataError, match=r"row 1 \(pose of IMG_001.png\)"):
        load_scene(llff_root, "all")

    path_doc = copy.deepcopy(NERFMINE_PATH)
    path_doc["frames"][1]["c2w"] = singular.tolist()
    (tmp_path / "path.json").write_text(json.dumps(path_doc))
    with pytest.raises(NerfmineError,
                       match=r"frames\[1\].c2w has a singular rotation part") as info:
        read_camera_path(tmp_path / "path.json")
    assert str(tmp_path / "path.json") in str(info.value)


def test_an_image_above_pillows_limit_names_file_size_and_remedy(capture_root, monkeypatch):
    (capture_root / "transforms.json").write_text(json.dumps(NGP_DOC))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # the 8x6 images: 48 > 2 * 10 pixels
    for decode in (True, False):
        with pytest.raises(DataError) as info:
            load_scene(capture_root, "all", decode=decode)
        message = str(info.value)
        assert "0000.png" in message and str(capture_root) in message
        assert "48 pixels" in message
        assert "MAX_IMAGE_PIXELS" in message and "--downscale" in message


def test_a_symlink_loop_as_data_path(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.symlink_to(b)
    b.symlink_to(a)
    for call in (lambda: load_scene(a), lambda: resolve_data_path(a),
                 lambda: load_scene(tmp_path / "a" / "scene")):
        with pytest.raises(DataError, match="loop of symbolic links") as info:
            call()
        assert str(a) in str(info.value)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    with pytest.raises(DataError, match="symbolic link to .*gone, which does not exist"):
        load_scene(dangling)
    assert resolve_data_path(tmp_path) == tmp_path.resolve()


@needs_pycolmap
@pytest.mark.parametrize("name, offset", [("points3D.bin", 0), ("points3D.bin", 51),
                                          ("images.bin", 0), ("images.bin", 82),
                                          ("cameras.bin", 0)])
def test_colmap_counts_of_2_to_the_60_fail_fast(colmap_root, colmap_files, name, offset):
    """pycolmap trusts the counts: 2^60 points made it allocate (or read past the end for
    minutes); the model is now checked first."""
    _restore(colmap_files)
    path = colmap_root / "sparse" / "0" / name
    data = path.read_bytes()
    path.write_bytes(data[:offset] + struct.pack("<Q", 2**60) + data[offset + 8:])
    start = time.perf_counter()
    with pytest.raises(DataError, match=f"{name}: damaged COLMAP binary file"):
        load_scene(colmap_root, "all")
    assert time.perf_counter() - start < 5.0
    _restore(colmap_files)


@needs_pycolmap
def test_a_colmap_image_name_without_its_nul_is_refused(colmap_root, colmap_files):
    """COLMAP reads an image name until a NUL: at the end of a truncated images.bin it loops."""
    _restore(colmap_files)
    path = colmap_root / "sparse" / "0" / "images.bin"
    data = path.read_bytes()
    path.write_bytes(data[:data.index(b"img00.png") + 4])
    with pytest.raises(DataError, match="images.bin: damaged COLMAP binary file"):
        load_scene(colmap_root, "all")
    _restore(colmap_files)


def test_deep_nesting_and_huge_literals_in_json_files(tmp_path):
    for text in ["[" * 100_000 + "]" * 100_000, '{"frames": ' + "1" * 5000 + "}",
                 '{"frames": [{"file_path": "a", "transform_matrix": '
                 + "1" + "0" * 400 + "}]}"]:
        (tmp_path / "transforms.json").write_text(text)
        with pytest.raises(DataError) as info:
            load_scene(tmp_path / "transforms.json")
        assert str(tmp_path / "transforms.json") in str(info.value)


def test_utf16_and_latin1_files_are_named(tmp_path, capture_root):
    path = capture_root / "transforms.json"
    path.write_bytes(json.dumps(NGP_DOC).encode("utf-16"))
    with pytest.raises(DataError, match="not UTF-8 text .*UTF-16"):
        load_scene(path, "all")
    path.write_bytes(json.dumps(NGP_DOC).encode("utf-8-sig"))  # a BOM is accepted
    check_scene(load_scene(path, "all"))
    config = tmp_path / "c.json"
    config.write_bytes(b'{"data": {"path": "caf\xe9"}}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_overrides(config)
