"""Registry: dataset name -> feature layout(s), standardization to the standard trajectory (DESIGN §4), fps.

Standard trajectory (per episode, T steps), produced by `standardize`:
  image_primary  string[T]    encoded JPEG/PNG bytes
  image_wrist    string[T]    encoded bytes, "" where the dataset has no wrist camera (or its has_image_* flag is false)
  image_secondary string[T]   a second third-person camera, "" where absent (same rule)
  action         float32[T,7] EEF delta: xyz(3), rpy(3), gripper (1 = open, 0 = closed); zeros where invalid
  action_valid   bool[T]      False for action-free video (and the invalid last step of datasets that mark it so)
  proprio        float32[T,8] dataset proprio padded with zeros to PROPRIO_DIM
  language       string[]     episode instruction ("" if none)
Per-dataset facts follow oxe_rlds.md §1.1 (Octo/OpenVLA conventions); deviations are noted on each entry.

Lineage conventions are explicit per-dataset options on `DatasetSpec` (defaults = what Octo/OpenVLA do; change one
with `with_options(name, drop_first_step=False)`), applied after the layout's standardization:
  gripper_relabel  'scan' (Octo `binarize_gripper_actions`: > 0.95 open, < 0.05 closed, in-between values take the
                   next settled state, scanning backwards from the last raw value) | 'threshold' (> 0.5) | 'none'
  drop_first_step  drop step 0 of every episode (OpenVLA bridge_orig: Bridge's first action is all zero)
  camera_flags     standardized camera -> episode-level bool flag (e.g. has_image_3); a false flag blanks that
                   camera to "" (= absent) for the whole episode instead of passing a black frame on as valid
  default_camera   the camera the single-camera tools (VQGAN, LAM, caches) read unless told otherwise
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from core.lookup import lookup
from data import tf_setup
from data.rlds import DataError, FeatureInfo, OpenedDataset

tf = tf_setup.tf

ACTION_DIM = 7
PROPRIO_DIM = 8
DEFAULT_ACTION_NORM_MASK = (True,) * 6 + (False,)  # gripper stays raw


@dataclasses.dataclass(frozen=True)
class Expect:
    """Expected feature leaf: kind 'image' | 'text' | 'tensor' (dtype + shape checked; images: any H×W×3)."""

    kind: str
    dtype: str | None = None
    shape: tuple[int, ...] | None = None

    def matches(self, found: FeatureInfo) -> bool:
        if self.kind != found.kind:
            return False
        if self.kind == "image":
            return len(found.shape) == 3 and found.shape[-1] == 3
        return (self.dtype is None or self.dtype == found.dtype) and (self.shape is None or self.shape == found.shape)

    def describe(self) -> str:
        return "image [H,W,3]" if self.kind == "image" else f"{self.kind} {self.dtype or ''}{list(self.shape or ())}"


IMG, TXT = Expect("image"), Expect("text")


def T(*shape: int, dtype: str = "float32") -> Expect:
    return Expect("tensor", dtype, tuple(shape))


def _lookup(node: Any, parts: list[str], path: str) -> Any:
    """Nested dict lookup where keys may themselves contain '/' (kuka 'clip_function_input/...')."""
    if not parts:
        return node
    for j in range(len(parts), 0, -1):
        key = "/".join(parts[:j])
        if isinstance(node, Mapping) and key in node:
            return _lookup(node[key], parts[j:], path)
    raise KeyError(path)


class Reader:
    """Access to one episode (SkipDecoding) by flattened path; inflates zlib/bytes tensors to [T, *shape]."""

    def __init__(self, episode: dict, features: Mapping[str, FeatureInfo]):
        self.episode, self.features = episode, features

    def raw(self, path: str) -> Any:
        return _lookup(self.episode, path.split("/"), path)

    def get(self, path: str) -> Any:
        """Tensor [T, ...] (or episode-level scalar); zlib/bytes-encoded tensors are decoded."""
        x = self.raw(path)
        info = self.features[path]
        if info.kind == "tensor" and info.encoding in ("zlib", "bytes"):
            if info.encoding == "zlib":
                x = tf.io.decode_compressed(x, compression_type="ZLIB")
            x = tf.io.decode_raw(x, tf.dtypes.as_dtype(info.dtype))
            x = tf.reshape(x, tf.concat([tf.shape(x)[:1], tf.constant(info.shape, tf.int32)], 0))
        return x

    def length(self) -> Any:
        return tf.shape(self.raw("steps/is_first"))[0]


StandardizeFn = Callable[[Reader], dict]
CAMERAS = ("primary", "secondary", "wrist")
GRIPPER_RELABELS = ("none", "threshold", "scan")


@dataclasses.dataclass(frozen=True)
class Layout:
    """One accepted on-disk layout: required leaves and the function mapping them to the standard fields."""

    required: Mapping[str, Expect]
    standardize: StandardizeFn

    def problems(self, features: Mapping[str, FeatureInfo]) -> list[str]:
        out = []
        for key, exp in self.required.items():
            if key not in features:
                out.append(f"missing {key} (expected {exp.describe()})")
            elif not exp.matches(features[key]):
                out.append(f"mismatched {key}: expected {exp.describe()}, found {features[key].describe()}")
        return out


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Registry entry. fps drives fps-dependent window strides; last_action_valid=False marks step T-1 invalid.

    revision: bump when the standardization changes meaning (it keys the normalization-stats cache).
    """

    name: str
    fps: float
    default_version: str
    layouts: tuple[Layout, ...]
    proprio_dim: int = 0
    has_actions: bool = True
    action_norm_mask: tuple[bool, ...] = DEFAULT_ACTION_NORM_MASK
    last_action_valid: bool = True
    episode_filter: Callable[[Reader], Any] | None = None
    notes: str = ""
    revision: int = 1
    gripper_relabel: str = "none"
    drop_first_step: bool = False
    camera_flags: tuple[tuple[str, str], ...] = ()
    default_camera: str = "primary"

    def __post_init__(self) -> None:
        if self.gripper_relabel not in GRIPPER_RELABELS:
            raise DataError(f"dataset {self.name!r}: gripper_relabel {self.gripper_relabel!r} unknown; expected one "
                            f"of {GRIPPER_RELABELS}")
        bad = [c for c in (self.default_camera, *(c for c, _ in self.camera_flags)) if c not in CAMERAS]
        if bad:
            raise DataError(f"dataset {self.name!r}: camera {bad[0]!r} unknown; expected one of {CAMERAS}")

    def conventions(self) -> str:
        """The options that change the standardized values (keys normalization caches and data fingerprints)."""
        return (f"rev={self.revision};gripper={self.gripper_relabel};drop_first={int(self.drop_first_step)};"
                f"flags={sorted(self.camera_flags)}")

    def select_layout(self, opened: OpenedDataset) -> Layout:
        """First layout whose required keys match; DataError listing missing/mismatched keys otherwise."""
        best: list[str] | None = None
        for layout in self.layouts:
            problems = layout.problems(opened.features)
            if not problems:
                return layout
            if best is None or len(problems) < len(best):
                best = problems
        raise DataError(f"dataset {self.name!r} at {opened.path}: features do not match the registry entry: "
                        + "; ".join(best or []))


# ---------------------------------------------------------------- helpers (all tf ops on [T, ...] tensors)

def rel2abs_gripper(rel: Any) -> Any:
    """Relative gripper commands (+1 close, -1 open, ~0 keep) -> absolute float32[T] with 1 = open.

    Steps before the first command take the opposite of that command; with no command at all the gripper is open.
    """
    rel = tf.reshape(tf.cast(rel, tf.float32), [-1])
    cmd = tf.where(rel < -0.1, 1.0, tf.where(rel > 0.1, 0.0, -1.0))
    has_cmd = cmd >= 0
    first = tf.cond(tf.reduce_any(has_cmd), lambda: 1.0 - tf.boolean_mask(cmd, has_cmd)[0], lambda: tf.constant(1.0))
    return tf.scan(lambda prev, c: tf.where(c >= 0, c, prev), cmd, initializer=first)


def binarize_gripper(g: Any, threshold: float = 0.5) -> Any:
    """Continuous gripper opening in [0, 1] -> {0, 1} (1 = open) by thresholding."""
    return tf.cast(tf.reshape(g, [-1]) > threshold, tf.float32)


def scan_relabel_gripper(g: Any, open_above: float = 0.95, closed_below: float = 0.05) -> Any:
    """Octo-style gripper binarization float32[T] -> float32[T] (1 = open).

    Settled values (> open_above: 1, < closed_below: 0) are binarized; in-between values (the gripper half-way
    through a close/open) take the state reached *after* them, found by scanning backwards. A run of in-between
    values at the very end has nothing settled after it and keeps the episode's last raw value (as Octo does).
    E.g. [1.0, 0.6, 0.3, 0.0, 0.0, 0.5] -> [1, 0, 0, 0, 0, 0.5].
    """
    g = tf.reshape(tf.cast(g, tf.float32), [-1])
    settled = tf.logical_or(g > open_above, g < closed_below)
    value = tf.cast(g > open_above, tf.float32)
    last = tf.cond(tf.size(g) > 0, lambda: g[-1], lambda: tf.constant(1.0))
    pairs = tf.stack([tf.cast(settled, tf.float32), value], -1)
    return tf.scan(lambda carry, p: tf.where(p[0] > 0, p[1], carry), pairs, initializer=last, reverse=True)


def relabel_gripper(g: Any, mode: str) -> Any:
    """Applies a `gripper_relabel` option to gripper values float32[T]."""
    if mode == "scan":
        return scan_relabel_gripper(g)
    if mode == "threshold":
        return binarize_gripper(g)
    return tf.reshape(tf.cast(g, tf.float32), [-1])


def _zeros(reader: Reader, dim: int, dtype: Any = tf.float32) -> Any:
    return tf.zeros([reader.length(), dim], dtype)


def _valid(reader: Reader, value: bool = True) -> Any:
    return tf.fill([reader.length()], value)


def _no_wrist(reader: Reader) -> Any:
    return tf.fill([reader.length()], "")


_no_camera = _no_wrist


def _first_text(x: Any) -> Any:
    return tf.cond(tf.size(x) > 0, lambda: tf.reshape(x, [-1])[0], lambda: tf.constant(""))


def _std(action: Any, valid: Any, proprio: Any, language: Any, primary: Any, wrist: Any,
         secondary: Any = None) -> dict:
    out = {"action": tf.cast(action, tf.float32), "action_valid": valid, "proprio": tf.cast(proprio, tf.float32),
           "language": language, "image_primary": primary, "image_wrist": wrist}
    if secondary is not None:
        out["image_secondary"] = secondary
    return out


# ---------------------------------------------------------------- per-dataset standardizations

_RT1_ACTION = {"steps/action/world_vector": T(3), "steps/action/rotation_delta": T(3),
               "steps/action/gripper_closedness_action": T(1)}


def _fractal(r: Reader) -> dict:
    a = "steps/action/"
    action = tf.concat([r.get(a + "world_vector"), r.get(a + "rotation_delta"),
                        rel2abs_gripper(r.get(a + "gripper_closedness_action"))[:, None]], -1)
    proprio = tf.concat([r.get("steps/observation/base_pose_tool_reached"), r.get("steps/observation/gripper_closed")],
                        -1)
    return _std(action, _valid(r), proprio, _first_text(r.get("steps/observation/natural_language_instruction")),
                r.get("steps/observation/image"), _no_wrist(r))


def _kuka(r: Reader) -> dict:
    a = "steps/action/"
    action = tf.concat([r.get(a + "world_vector"), r.get(a + "rotation_delta"),
                        rel2abs_gripper(r.get(a + "gripper_closedness_action"))[:, None]], -1)
    proprio = tf.concat([r.get("steps/observation/clip_function_input/base_pose_tool_reached"),
                         r.get("steps/observation/gripper_closed")], -1)
    return _std(action, _valid(r), proprio, _first_text(r.get("steps/observation/natural_language_instruction")),
                r.get("steps/observation/image"), _no_wrist(r))


def _bridge_flat(r: Reader) -> dict:
    # the raw continuous gripper is kept here; DatasetSpec.gripper_relabel binarizes it
    return _std(r.get("steps/action"), _valid(r), r.get("steps/observation/state"),
                _first_text(r.get("steps/language_instruction")), r.get("steps/observation/image_0"),
                r.get("steps/observation/image_3"), r.get("steps/observation/image_1"))


def _bridge_oxe(r: Reader) -> dict:
    a = "steps/action/"
    grip = tf.cast(tf.reshape(r.get(a + "open_gripper"), [-1, 1]), tf.float32)
    action = tf.concat([r.get(a + "world_vector"), r.get(a + "rotation_delta"), grip], -1)
    return _std(action, _valid(r), r.get("steps/observation/state"),
                _first_text(r.get("steps/observation/natural_language_instruction")),
                r.get("steps/observation/image"), _no_wrist(r))


def _language_table(r: Reader) -> dict:
    xy = r.get("steps/action")
    n = r.length()
    action = tf.concat([xy, tf.zeros([n, 4]), tf.ones([n, 1])], -1)
    codes = r.get("steps/observation/instruction")  # int32[T, 512] UTF-8 code points, zero-padded

    def decode() -> Any:
        first = codes[0]
        return tf.strings.unicode_encode(tf.boolean_mask(first, first > 0), "UTF-8")

    language = tf.cond(n > 0, decode, lambda: tf.constant(""))
    return _std(action, _valid(r), r.get("steps/observation/effector_translation"), language,
                r.get("steps/observation/rgb"), _no_wrist(r))


def _taco(r: Reader) -> dict:
    act = r.get("steps/action/rel_actions_world")
    grip = tf.clip_by_value((act[:, 6:7] + 1.0) / 2.0, 0.0, 1.0)  # CALVIN: -1 close, +1 open -> 0 / 1
    obs = r.get("steps/observation/robot_obs")
    proprio = tf.concat([obs[:, :6], obs[:, 7:8]], -1)
    return _std(tf.concat([act[:, :6], grip], -1), _valid(r), proprio,
                _first_text(r.get("steps/observation/natural_language_instruction")),
                r.get("steps/observation/rgb_static"), r.get("steps/observation/rgb_gripper"))


def _jaco(r: Reader) -> dict:
    a = "steps/action/"
    n = r.length()
    action = tf.concat([r.get(a + "world_vector"), tf.zeros([n, 3]),
                        rel2abs_gripper(r.get(a + "gripper_closedness_action"))[:, None]], -1)
    return _std(action, _valid(r), r.get("steps/observation/end_effector_cartesian_pos"),
                _first_text(r.get("steps/observation/natural_language_instruction")),
                r.get("steps/observation/image"), r.get("steps/observation/image_wrist"))


def _demo_robot(r: Reader) -> dict:
    n = r.length()
    action = tf.concat([r.get("steps/action"), tf.zeros([n, 4]), tf.ones([n, 1])], -1)
    return _std(action, _valid(r), r.get("steps/observation/state"), _first_text(r.get("steps/language_instruction")),
                r.get("steps/observation/image"), _no_wrist(r))


def _metaworld_robot(r: Reader) -> dict:
    a = r.get("steps/action")  # f32[T, 4]: xyz hand motion, gripper effort (+1 closes, -1 opens)
    grip = tf.clip_by_value((1.0 - a[:, 3:4]) / 2.0, 0.0, 1.0)  # -> the standard 1 = open, 0 = closed
    action = tf.concat([a[:, :3], tf.zeros([r.length(), 3]), grip], -1)
    return _std(action, _valid(r), r.get("steps/observation/state"), _first_text(r.get("steps/language_instruction")),
                r.get("steps/observation/image"), _no_wrist(r))


def _video_only(image_key: str, language_key: str | None, wrist_key: str | None) -> StandardizeFn:
    def fn(r: Reader) -> dict:
        lang = _first_text(r.get(language_key)) if language_key else tf.constant("")
        wrist = r.get(wrist_key) if wrist_key else _no_wrist(r)
        return _std(_zeros(r, ACTION_DIM), _valid(r, False), _zeros(r, 0), lang, r.get(image_key), wrist)

    return fn


def video_only_spec(name: str, fps: float, *, version: str = "1.0.0", image_key: str = "steps/observation/image",
                    language_key: str | None = "steps/language_instruction", wrist_key: str | None = None,
                    notes: str = "action-free video") -> DatasetSpec:
    """Generic standardization for action-free image(+language) RLDS (e.g. an SSv2 or human-video conversion)."""
    required = {image_key: IMG}
    required.update({language_key: TXT} if language_key else {})
    required.update({wrist_key: IMG} if wrist_key else {})
    return DatasetSpec(name, fps, version, (Layout(required, _video_only(image_key, language_key, wrist_key)),),
                       proprio_dim=0, has_actions=False, notes=notes)


def _kuka_success(r: Reader) -> Any:
    return tf.reduce_all(tf.cast(r.get("success"), tf.bool))


_O = "steps/observation/"
_BRIDGE_FLAGS = (("primary", "episode_metadata/has_image_0"), ("secondary", "episode_metadata/has_image_1"),
                 ("wrist", "episode_metadata/has_image_3"))
_SPECS = [
    DatasetSpec("fractal20220817_data", 3, "0.1.0", (Layout(
        {**_RT1_ACTION, _O + "image": IMG, _O + "natural_language_instruction": TXT,
         _O + "base_pose_tool_reached": T(7), _O + "gripper_closed": T(1)}, _fractal),), proprio_dim=8,
        notes="RT-1; relative gripper -> absolute (1 = open)"),
    DatasetSpec("kuka", 10, "0.1.0", (Layout(
        {**_RT1_ACTION, _O + "image": IMG, _O + "natural_language_instruction": TXT,
         _O + "clip_function_input/base_pose_tool_reached": T(7), _O + "gripper_closed": T(1),
         "success": Expect("tensor", "bool", ())}, _kuka),), proprio_dim=8, episode_filter=_kuka_success,
        notes="QT-Opt; unsuccessful episodes dropped; instruction kept (Octo blanks it)"),
    DatasetSpec("bridge_dataset", 5, "1.0.0", (Layout(
        {"steps/action": T(7), _O + "image_0": IMG, _O + "image_1": IMG, _O + "image_3": IMG, _O + "state": T(7),
         "steps/language_instruction": TXT}, _bridge_flat),), proprio_dim=7, revision=2,
        gripper_relabel="scan", drop_first_step=True, camera_flags=_BRIDGE_FLAGS,
        notes="BridgeData V2: primary image_0, secondary image_1, wrist image_3, each only where its "
              "episode_metadata/has_image_k flag is true; gripper relabelled by Octo's scan (gripper_relabel='scan'; "
              "'threshold' = the old > 0.5); the all-zero first step dropped as OpenVLA bridge_orig does "
              "(drop_first_step); xyz/rpy not relabelled from state (Octo does)"),
    DatasetSpec("bridge", 5, "0.1.0", (
        Layout({"steps/action/world_vector": T(3), "steps/action/rotation_delta": T(3),
                "steps/action/open_gripper": Expect("tensor", "bool", ()), _O + "image": IMG, _O + "state": T(7),
                _O + "natural_language_instruction": TXT}, _bridge_oxe),
        Layout({"steps/action": T(7), _O + "image_0": IMG, _O + "image_1": IMG, _O + "image_3": IMG,
                _O + "state": T(7), "steps/language_instruction": TXT}, _bridge_flat)), proprio_dim=7, revision=2,
        gripper_relabel="scan", camera_flags=_BRIDGE_FLAGS,
        notes="OXE copy; accepts the dict-action layout (boolean open_gripper: the scan leaves it unchanged) and the "
              "flat BridgeData V2 layout (same camera flags and gripper scan as bridge_dataset); the first step is "
              "kept (drop_first_step=False: the OXE copy is not OpenVLA's bridge_orig)"),
    DatasetSpec("language_table", 10, "0.0.1", (Layout(
        {"steps/action": T(2), _O + "rgb": IMG, _O + "instruction": T(512, dtype="int32"),
         _O + "effector_translation": T(2)}, _language_table),), proprio_dim=2,
        notes="planar xy delta padded to 7-D with gripper open; instruction from int32 code points"),
    DatasetSpec("taco_play", 15, "0.1.0", (Layout(
        {"steps/action/rel_actions_world": T(7), _O + "rgb_static": IMG, _O + "rgb_gripper": IMG,
         _O + "robot_obs": T(15), _O + "natural_language_instruction": TXT}, _taco),), proprio_dim=7,
        notes="rel_actions_world; gripper -1 close / +1 open mapped to 0 / 1"),
    DatasetSpec("jaco_play", 10, "0.1.0", (Layout(
        {"steps/action/world_vector": T(3), "steps/action/gripper_closedness_action": T(1), _O + "image": IMG,
         _O + "image_wrist": IMG, _O + "end_effector_cartesian_pos": T(7),
         _O + "natural_language_instruction": TXT}, _jaco),), proprio_dim=7,
        notes="no rotation (zeros); relative gripper -> absolute"),
    DatasetSpec("demo_robot", 10, "1.0.0", (Layout(
        {"steps/action": T(2), _O + "image": IMG, _O + "state": T(2), "steps/language_instruction": TXT},
        _demo_robot),), proprio_dim=2, last_action_valid=False,
        notes="built-in world; [dx, dy, 0, 0, 0, 0, 1]; last step's action is invalid"),
    DatasetSpec("metaworld_robot", 80, "1.0.0", (Layout(
        {"steps/action": T(4), _O + "image": IMG, _O + "state": T(4), "steps/language_instruction": TXT},
        _metaworld_robot),), proprio_dim=4, last_action_valid=False,
        notes="Meta-World scripted experts (data/metaworld): [dx, dy, dz, 0, 0, 0, (1 - effort) / 2]; proprio = hand "
              "xyz + gripper opening; last step's action is invalid"),
    video_only_spec("metaworld_video", 80,
                    notes="Meta-World, action-free video of tasks disjoint from metaworld_robot"),
    video_only_spec("demo_human", 10, notes="built-in world, human embodiment, action-free"),
    video_only_spec("ssv2", 12, notes="Something-Something-v2 converted to RLDS (image + language_instruction)"),
]
REGISTRY: dict[str, DatasetSpec] = {s.name: s for s in _SPECS}


def register(spec: DatasetSpec, overwrite: bool = False) -> None:
    """Adds a dataset (e.g. `video_only_spec('my_videos', fps=30)`) to the registry."""
    if spec.name in REGISTRY and not overwrite:
        raise DataError(f"dataset {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec


def get_spec(name: str) -> DatasetSpec:
    """Registry lookup; unknown names suggest the closest registered one."""
    return lookup(REGISTRY, name, "dataset", error=DataError)


def with_options(name: str, **options: Any) -> DatasetSpec:
    """Re-registers `name` with changed convention options (e.g. gripper_relabel='threshold'); returns the new spec.

    Unknown option names are refused with the list of known ones.
    """
    spec = get_spec(name)
    known = {"gripper_relabel", "drop_first_step", "camera_flags", "default_camera", "last_action_valid"}
    for key in options:
        if key not in known:
            from core.errors import unknown

            raise DataError(unknown("dataset option", key, known))
    new = dataclasses.replace(spec, **options)
    register(new, overwrite=True)
    return new


def standardize_fn(spec: DatasetSpec, opened: OpenedDataset) -> Callable[[dict], dict]:
    """Validates features against the registry and returns episode -> standard trajectory (tf, for Dataset.map)."""
    layout = spec.select_layout(opened)
    features = opened.features

    flags = [(cam, key) for cam, key in spec.camera_flags if key in features]

    def fn(episode: dict) -> dict:
        r = Reader(episode, features)
        out = layout.standardize(r)
        out.setdefault("image_secondary", _no_camera(r))
        for cam, key in flags:  # an absent camera is "" for the whole episode, never a black "valid" frame
            present = tf.reshape(tf.cast(r.raw(key), tf.bool), [])
            out[f"image_{cam}"] = tf.where(present, out[f"image_{cam}"], tf.fill(tf.shape(out[f"image_{cam}"]), ""))
        if spec.gripper_relabel != "none":
            a = out["action"]
            out["action"] = tf.concat([a[:, :-1], relabel_gripper(a[:, -1], spec.gripper_relabel)[:, None]], -1)
        if spec.drop_first_step:
            for k in ("action", "action_valid", "proprio", "image_primary", "image_wrist", "image_secondary"):
                out[k] = out[k][1:]
        n = tf.shape(out["action_valid"])[0]
        valid = out["action_valid"]
        if not spec.last_action_valid:
            valid = tf.logical_and(valid, tf.range(n) < n - 1)
        out["action_valid"] = valid
        out["action"] = tf.where(valid[:, None], tf.ensure_shape(out["action"], [None, ACTION_DIM]), 0.0)
        p = out["proprio"]
        out["proprio"] = tf.pad(p, [[0, 0], [0, PROPRIO_DIM - spec.proprio_dim]])
        out["proprio"] = tf.ensure_shape(out["proprio"], [None, PROPRIO_DIM])
        out["language"] = tf.ensure_shape(tf.convert_to_tensor(out["language"]), [])
        return out

    return fn


def keep_fn(spec: DatasetSpec, opened: OpenedDataset) -> Callable[[dict], Any] | None:
    """Episode filter (e.g. kuka success) as a tf predicate, or None."""
    if spec.episode_filter is None:
        return None
    return lambda episode: spec.episode_filter(Reader(episode, opened.features))
