"""Request payload decoding for the policy server: bytes of an ``/act`` body -> (images uint8[W, R, R, 3],
instruction, seed, proprio f32[p] or None), or an :class:`APIError` naming the field and what was expected.

``proprio`` is the raw effector state (the dataset's units; the policy normalizes it) of a policy whose metadata has
``proprio_dim`` P > 0: required for such a policy, refused for any other; P to ``MAX_PROPRIO`` finite numbers, as a
JSON list (``"proprio": [0.1, -0.2]``) or, in a multipart form, a field holding that JSON list.

Pure functions of bytes (no I/O, no event loop, no JAX): the server runs them in its thread pool. The three
encodings (JSON lists or base64 files, multipart image files, multipart npz) and the validation decisions are
described in ``policy/serve.py``. Every text the client sends must be valid Unicode without NULs: a lone surrogate
(``"\\ud800"`` in JSON) cannot be encoded to UTF-8 by the tokenizer and used to surface as HTTP 500.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import zipfile
from typing import Any

import numpy as np
from PIL import Image
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from policy.metadata import PolicyMetadata

DEFAULT_MAX_INSTRUCTION_CHARS = 1000
MAX_PROPRIO = 8  # data/oxe.py PROPRIO_DIM: the standardized proprio width every dataset is padded to
SEED_RANGE = (0, 2**32)
ENCODINGS = ("json:images", "json:image_b64_jpeg", "multipart:image{i}", "multipart:npz")
_IMAGE_FORMATS = ("JPEG", "PNG")


def safe_text(text: str) -> str:
    """``text`` encodable as UTF-8: lone surrogates become ``\\udXXX`` escapes (an error message or field name that
    repeats a client's bad text must not itself fail to encode)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class APIError(Exception):
    """A request error answered as JSON ``{"error", "field", "expected", "status"}`` (see :meth:`body`)."""

    def __init__(self, status: int, message: str, *, field: str | None = None, expected: str | None = None):
        message = safe_text(message)
        super().__init__(message)
        self.status, self.message = status, message
        self.field = None if field is None else safe_text(field)
        self.expected = None if expected is None else safe_text(expected)

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field, "expected": self.expected, "status": self.status}


class Spec:
    """What the policy expects, from its metadata record: W frames of R x R RGB, H x A actions; and the largest JSON
    body such a request can need (:attr:`max_json_bytes`)."""

    def __init__(self, meta: PolicyMetadata, max_instruction_chars: int = DEFAULT_MAX_INSTRUCTION_CHARS):
        self.R, self.W, self.A, self.H = meta.image_size, meta.num_frames, meta.action_dim, meta.chunk
        if self.H < 1:
            raise ValueError(f"policy metadata has chunk={self.H}: this policy has no action output to serve")
        self.max_instruction_chars = max_instruction_chars
        self.P = int(meta.extra.get("proprio_dim") or 0)  # > 0: the policy takes the effector state as input

    @property
    def max_json_bytes(self) -> int:
        """A generous bound on a valid JSON /act body: 16 bytes per pixel value covers ``images`` as indented lists
        (``"255,\\n" + indent``) and base64 PNG/JPEG files (<= ~1.4 bytes per value); 6 bytes per instruction
        character covers ``\\uXXXX`` escapes; 64 KiB for the rest. Larger JSON bodies are refused before parsing:
        ``json.loads`` of a 15 MB body builds ~10x its size in Python objects."""
        return 16 * self.W * self.R * self.R * 3 + 6 * self.max_instruction_chars + 65536

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.W, self.R, self.R, 3)

    @property
    def images_expected(self) -> str:
        return f"uint8 array of shape [{self.W}, {self.R}, {self.R}, 3] (W frames oldest first, R x R RGB, 0..255)"

    @property
    def image_names(self) -> list[str]:
        return [f"image{i}" for i in range(self.W)]


def _check_instruction(value: Any, spec: Spec) -> str:
    expected = f"a non-blank string of at most {spec.max_instruction_chars} characters"
    if value is None:
        raise APIError(422, "missing field 'instruction'", field="instruction", expected=expected)
    if not isinstance(value, str):
        raise APIError(
            422, f"instruction must be a string, got {type(value).__name__}", field="instruction", expected=expected
        )
    if not value.strip():
        raise APIError(422, "instruction is empty", field="instruction", expected=expected)
    if len(value) > spec.max_instruction_chars:
        raise APIError(422, f"instruction has {len(value)} characters", field="instruction", expected=expected)
    if "\x00" in value:
        raise APIError(422, "instruction contains a NUL character", field="instruction", expected=expected)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # JSON "\\ud800": a lone surrogate, not text
        raise APIError(
            422,
            f"instruction is not valid Unicode text (lone surrogate {value[e.start]!r} at character {e.start})",
            field="instruction",
            expected=expected + " of valid Unicode (no lone surrogates)",
        ) from None
    return value


def _check_seed(value: Any) -> int:
    lo, hi = SEED_RANGE
    expected = f"an integer in [{lo}, {hi})"
    if value is None:
        return 0
    if isinstance(value, str):  # multipart fields are strings
        if not re.fullmatch(r"\s*[+-]?\d{1,20}\s*", value):
            raise APIError(422, f"seed must be an integer, got {value[:40]!r}", field="seed", expected=expected)
        value = int(value)
    elif isinstance(value, bool) or not isinstance(value, int):
        raise APIError(422, f"seed must be an integer, got {type(value).__name__}", field="seed", expected=expected)
    if not lo <= value < hi:
        raise APIError(422, f"seed {value} is out of range", field="seed", expected=expected)
    return value


def _check_proprio(value: Any, spec: Spec) -> np.ndarray | None:
    """The raw effector state f32[p] (P <= p <= MAX_PROPRIO) for a state-input policy; None for any other."""
    expected = (f"a list of {spec.P} to {MAX_PROPRIO} finite numbers: the raw effector state in the dataset's units"
                if spec.P else "no 'proprio' field (this policy takes no effector state)")
    if value is None:
        if spec.P:
            raise APIError(422, f"missing field 'proprio' (this policy takes the effector state, proprio_dim "
                           f"{spec.P})", field="proprio", expected=expected)
        return None
    if not spec.P:
        raise APIError(422, "this policy takes no effector state", field="proprio", expected=expected)
    if isinstance(value, str):  # multipart fields are strings holding the JSON list
        try:
            value = json.loads(value)
        except ValueError:
            raise APIError(422, f"proprio is not a JSON list: {value[:40]!r}", field="proprio",
                           expected=expected) from None
    if not isinstance(value, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise APIError(422, f"proprio must be a list of numbers, got {type(value).__name__}", field="proprio",
                       expected=expected)
    if not spec.P <= len(value) <= MAX_PROPRIO:
        raise APIError(422, f"proprio has {len(value)} values", field="proprio", expected=expected)
    x = np.asarray(value, np.float64)
    if not np.isfinite(x).all() or np.abs(x).max() > 3.4e38:
        raise APIError(422, "proprio has non-finite values", field="proprio", expected=expected)
    return x.astype(np.float32)


def _check_images_array(arr: np.ndarray, spec: Spec, field: str) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise APIError(422, f"{field} has dtype {arr.dtype}", field=field, expected=spec.images_expected)
    if arr.shape != spec.shape:
        raise APIError(422, f"{field} has shape {list(arr.shape)}", field=field, expected=spec.images_expected)
    return np.ascontiguousarray(arr)


def _images_from_lists(value: Any, spec: Spec) -> np.ndarray:
    field, expected = "images", spec.images_expected
    if not isinstance(value, list):
        raise APIError(422, f"images must be nested lists, got {type(value).__name__}", field=field, expected=expected)
    if len(value) != spec.W:
        raise APIError(422, f"images has {len(value)} frames, expected W={spec.W}", field=field, expected=expected)
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as e:
        raise APIError(
            422, f"images is not a rectangular array of numbers ({e})", field=field, expected=expected
        ) from None
    if arr.dtype.kind not in "iu":
        what = {"f": "floats (or NaN/Infinity)", "b": "booleans", "U": "strings", "O": "mixed/null/huge values"}
        got = what.get(arr.dtype.kind, str(arr.dtype))
        raise APIError(422, f"images must hold integers 0..255, got {got}", field=field, expected=expected)
    if arr.shape != spec.shape:
        raise APIError(422, f"images has shape {list(arr.shape)}", field=field, expected=expected)
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise APIError(
            422, f"images values range over [{arr.min()}, {arr.max()}], outside 0..255", field=field, expected=expected
        )
    return arr.astype(np.uint8)


def _decode_image_file(data: bytes, spec: Spec, field: str) -> np.ndarray:
    expected = f"a JPEG or PNG file of {spec.R} x {spec.R} RGB pixels (resize on the client; the server does not)"
    if not data:
        raise APIError(422, f"{field} is empty", field=field, expected=expected)
    try:
        img = Image.open(io.BytesIO(data), formats=_IMAGE_FORMATS)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise APIError(422, f"{field} is not a decodable JPEG/PNG ({e})", field=field, expected=expected) from None
    with img:
        if img.size != (spec.R, spec.R):  # checked from the header, before decoding any pixels
            w, h = img.size
            raise APIError(
                422, f"{field} is {w} x {h} pixels, expected {spec.R} x {spec.R}", field=field, expected=expected
            )
        if img.mode != "RGB":
            raise APIError(422, f"{field} has mode {img.mode}, expected RGB", field=field, expected=expected)
        try:
            img.load()
            arr = np.asarray(img, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise APIError(422, f"{field} is a corrupt {img.format} ({e})", field=field, expected=expected) from None
    if arr.shape != (spec.R, spec.R, 3):
        raise APIError(422, f"{field} decoded to shape {list(arr.shape)}", field=field, expected=expected)
    return arr


def _images_from_b64(value: Any, spec: Spec) -> np.ndarray:
    field = "image_b64_jpeg"
    expected = f"a list of W={spec.W} base64 strings, each a JPEG/PNG of {spec.R} x {spec.R} RGB pixels"
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise APIError(422, "image_b64_jpeg must be a list of strings", field=field, expected=expected)
    if len(value) != spec.W:
        raise APIError(
            422, f"image_b64_jpeg has {len(value)} images, expected W={spec.W}", field=field, expected=expected
        )
    frames = []
    for i, s in enumerate(value):
        name = f"{field}[{i}]"
        try:
            data = base64.b64decode(s, validate=True)
        except (binascii.Error, ValueError) as e:
            raise APIError(422, f"{name} is not valid base64 ({e})", field=name, expected=expected) from None
        frames.append(_decode_image_file(data, spec, name))
    return np.stack(frames)


def _npy_header(fp) -> tuple[tuple[int, ...], np.dtype]:
    """Reads an .npy header (shape, dtype) without reading the data."""
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version in ((2, 0), (3, 0)):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    return tuple(shape), dtype


def _load_npz(data: bytes, spec: Spec) -> np.ndarray:
    field, expected = "npz", f"an .npz with key 'images' holding a {spec.images_expected} (or a plain .npy)"
    expected_bytes = spec.W * spec.R * spec.R * 3

    def check_header(fp) -> None:  # before reading (or inflating) any data: errors name the real problem
        shape, dtype = _npy_header(fp)
        if dtype.hasobject:
            msg = "npz:images holds Python objects (pickles are refused)"
            raise APIError(422, msg, field="npz:images", expected=spec.images_expected)
        if dtype != np.uint8 or shape != spec.shape:
            raise APIError(
                422, f"npz:images is {dtype}{list(shape)}", field="npz:images", expected=spec.images_expected
            )

    try:
        if data[:6] == b"\x93NUMPY":
            check_header(io.BytesIO(data))
            npy = data
        else:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                names = zf.namelist()
                if "images.npy" not in names:
                    keys = [n.removesuffix(".npy") for n in names][:10]
                    raise APIError(422, f"npz has keys {keys}, no 'images'", field=field, expected=expected)
                with zf.open("images.npy") as member:
                    check_header(member)
                if zf.getinfo("images.npy").file_size > expected_bytes + 4096:  # zip-bomb guard
                    raise APIError(422, "npz 'images' holds trailing data", field=field, expected=expected)
                npy = zf.read("images.npy")
        arr = np.load(io.BytesIO(npy), allow_pickle=False)
    except APIError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError) as e:
        raise APIError(
            422, f"npz is not a readable .npz/.npy ({type(e).__name__}: {e})", field=field, expected=expected
        ) from None
    if not isinstance(arr, np.ndarray):
        raise APIError(422, "npz did not hold an array", field=field, expected=expected)
    return _check_images_array(arr, spec, "npz:images")


def check_json_size(size: int, spec: Spec) -> None:
    """413 when a JSON body of ``size`` bytes is larger than any valid request can be (see ``Spec.max_json_bytes``)."""
    if size > spec.max_json_bytes:
        raise APIError(
            413,
            f"JSON body of {size} bytes is larger than any valid request for this policy",
            field="body",
            expected=f"<= {spec.max_json_bytes} bytes for JSON (send large payloads as multipart npz)",
        )


def parse_json_act(body: bytes, spec: Spec) -> tuple[np.ndarray, str, int, np.ndarray | None]:
    """A JSON /act body -> (images uint8[W, R, R, 3], instruction, seed, proprio f32[p] or None)."""
    check_json_size(len(body), spec)
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise APIError(
            400, f"body is not valid JSON ({type(e).__name__}: {str(e)[:200]})", field="body", expected="a JSON object"
        ) from None
    if not isinstance(payload, dict):
        raise APIError(
            422,
            f"JSON body must be an object, got {type(payload).__name__}",
            field="body",
            expected='{"instruction": str, "images" | "image_b64_jpeg": ..., "seed": int, "proprio": [float]}',
        )
    allowed = {"instruction", "seed", "images", "image_b64_jpeg", "proprio"}
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise APIError(422, f"unknown field(s) {unknown[:5]}", field=unknown[0], expected=f"only {sorted(allowed)}")
    instruction = _check_instruction(payload.get("instruction"), spec)
    seed = _check_seed(payload.get("seed"))
    proprio = _check_proprio(payload.get("proprio"), spec)
    has_lists, has_b64 = "images" in payload, "image_b64_jpeg" in payload
    if has_lists == has_b64:
        raise APIError(
            422, "give exactly one of 'images' and 'image_b64_jpeg'", field="images", expected=spec.images_expected
        )
    images = (
        _images_from_lists(payload["images"], spec) if has_lists else _images_from_b64(payload["image_b64_jpeg"], spec)
    )
    return images, instruction, seed, proprio


_MAX_PARTS = 16
_MAX_FIELD_BYTES = 64 * 1024


def _split_multipart(body: bytes, content_type: str) -> list[tuple[str, str | None, bytes]]:
    """Parses a multipart/form-data body held in memory -> [(name, filename or None, data)]. Nothing touches disk."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise APIError(
            400,
            "multipart content type without a boundary",
            field="Content-Type",
            expected="multipart/form-data; boundary=...",
        )
    parts: list[tuple[dict[bytes, bytes], bytes]] = []
    cur: dict[str, Any] = {}

    def on_part_begin() -> None:
        cur.update(headers={}, data=[], name=b"", value=b"")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        cur["name"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        cur["value"] += data[start:end]

    def on_header_end() -> None:
        cur["headers"][cur["name"].lower()] = cur["value"]
        cur["name"] = cur["value"] = b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        cur["data"].append(data[start:end])

    def on_part_end() -> None:
        parts.append((cur["headers"], b"".join(cur["data"])))
        if len(parts) > _MAX_PARTS:
            raise APIError(422, f"more than {_MAX_PARTS} multipart parts", field="body")

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except (FormParserError, ValueError) as e:
        raise APIError(400, f"malformed multipart body ({e})", field="body") from None
    if not parts:
        raise APIError(400, "multipart body has no parts", field="body")
    out = []
    for headers, data in parts:
        _, opts = parse_options_header(headers.get(b"content-disposition", b""))
        if b"name" not in opts:
            raise APIError(400, "multipart part without a Content-Disposition name", field="body")
        name = opts[b"name"].decode("utf-8", "replace")
        filename = opts[b"filename"].decode("utf-8", "replace") if b"filename" in opts else None
        out.append((name, filename, data))
    return out


def parse_multipart_act(body: bytes, content_type: str, spec: Spec
                        ) -> tuple[np.ndarray, str, int, np.ndarray | None]:
    """A multipart/form-data /act body -> (images uint8[W, R, R, 3], instruction, seed, proprio f32[p] or None)."""
    files_expected = f"files {spec.image_names} (JPEG/PNG) or one file 'npz'"
    allowed_fields, allowed_files = {"instruction", "seed", "proprio"}, {*spec.image_names, "npz"}
    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}
    for name, filename, data in _split_multipart(body, content_type):
        if name in fields or name in files:
            raise APIError(422, f"field {name!r} given more than once", field=name)
        if filename is not None:
            if name not in allowed_files:
                raise APIError(422, f"unexpected file {name!r}", field=name, expected=files_expected)
            files[name] = data
        else:
            if name not in allowed_fields:
                hint = " (send it as a file part)" if name in allowed_files else ""
                raise APIError(
                    422,
                    f"unexpected form field {name!r}{hint}",
                    field=name,
                    expected=f"fields {sorted(allowed_fields)} and {files_expected}",
                )
            if len(data) > _MAX_FIELD_BYTES:
                raise APIError(422, f"form field {name!r} has {len(data)} bytes", field=name)
            try:
                fields[name] = data.decode("utf-8")
            except UnicodeDecodeError:
                raise APIError(422, f"form field {name!r} is not UTF-8", field=name) from None
    instruction = _check_instruction(fields.get("instruction"), spec)
    seed = _check_seed(fields.get("seed"))
    proprio = _check_proprio(fields.get("proprio"), spec)
    if "npz" in files:
        if len(files) > 1:
            extra = sorted(set(files) - {"npz"})
            raise APIError(422, f"got 'npz' together with {extra}", field="npz", expected=files_expected)
        images = _load_npz(files["npz"], spec)
    else:
        missing = [n for n in spec.image_names if n not in files]
        if missing:
            raise APIError(422, f"missing image file(s) {missing}", field=missing[0], expected=files_expected)
        images = np.stack([_decode_image_file(files[n], spec, n) for n in spec.image_names])
    return images, instruction, seed, proprio

