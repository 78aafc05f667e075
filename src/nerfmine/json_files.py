"""Reading a JSON file that a user gave (a scene's transforms, a camera path, a config), with
every way it can fail worded as the caller's own error naming the file.

``json.loads`` fails in more ways than :class:`json.JSONDecodeError`: text in another encoding
(UTF-16, Latin-1) does not decode, deep nesting (``[[[[...]]]]``) exhausts the interpreter's
recursion limit (:class:`RecursionError`), and an integer literal of more than 4300 digits is
refused by Python's guard against slow conversions (a plain :class:`ValueError`). Each becomes
the caller's error class (:class:`~nerfmine.errors.DataError`,
:class:`~nerfmine.errors.ConfigError`, ...) with the file, what is wrong and what to do.
"""

from __future__ import annotations

import codecs
import json
import reprlib
from pathlib import Path
from typing import Any

from nerfmine.errors import NerfmineError

_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)

_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxtuple = 3, 5, 5, 5
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 60, 60, 40


def shown(value: Any) -> str:
    """A short repr of a value read from a file, for error messages: a few items of lists and
    objects, three levels deep, long strings cut in the middle. Safe on what a plain ``repr``
    fails on: thousands of nesting levels (RecursionError) and integers of more than 4300
    digits (ValueError)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    try:
        return _SHORT.repr(value)
    except (ValueError, RecursionError):
        return f"a {type(value).__name__}"


def read_json_file(path: Path, error: type[NerfmineError], what: str,
                   missing_hint: str = "") -> Any:
    """The JSON value in ``path`` (any type: callers check the shape they expect).

    ``error`` is the class raised for every failure, ``what`` names the file's role in the
    messages ("camera path file"), ``missing_hint`` is appended when the file does not exist.
    A UTF-8 byte-order mark is accepted (editors on Windows write one)."""
    path = Path(path)
    try:
        if path.is_dir():
            raise error(f"{path}: is a folder, not a {what} (a JSON file).")
        if path.exists() and not path.is_file():  # a FIFO or a device would block or never end
            raise error(f"{path}: is not a regular file (a pipe or a device?); pass a {what}.")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: {what} not found{'; ' + missing_hint if missing_hint else ''}."
                    ) from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or exc}).") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        looks = (" (it starts with a UTF-16/UTF-32 byte-order mark)"
                 if raw.startswith(_UTF16_BOMS) else "")
        raise error(f"{path}: the {what} is not UTF-8 text{looks}: byte {raw[exc.start]:#04x} "
                    f"at offset {exc.start} does not decode. JSON files are UTF-8; save it "
                    "as UTF-8 (or check that it is the right file).") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column "
                    f"{exc.colno}. Fix the {what} (a truncated or hand-edited file?).") from None
    except RecursionError:
        raise error(f"{path}: the {what} nests lists or objects too deeply to read (thousands "
                    "of levels); it is not a file nerfmine or the usual tools write.") from None
    except ValueError as exc:  # e.g. an integer literal of more than 4300 digits
        raise error(f"{path}: the {what} holds a value JSON cannot give here ({exc}); "
                    "numbers must fit in a double.") from None
