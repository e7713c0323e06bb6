"""``Config``: every section's settings composed into one, loaded from presets, YAML and overrides.

The sections are the dataclasses of ``settings`` (the stages'), ``model.config`` (the tokenizer's)
and ``retrieval.config`` (the benchmark's). ``build_settings`` turns nested dicts (YAML, or
``section.field`` overrides) into validated dataclasses; every bad value is a one-line ``SidsError``
naming the setting.

May import: settings, model.config, retrieval.config, errors (all torch-free, pandas-free).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import SidsError
from .model.config import RQVAEConfig
from .retrieval.config import RetrievalConfig
from .settings import (
    AssignConfig,
    CollabConfig,
    DataConfig,
    EmbedConfig,
    EvaluateConfig,
    ExportConfig,
    JointConfig,
    TrainConfig,
    VisualizeConfig,
)


@dataclass
class Config:
    """Every setting of a run; a YAML config file has one mapping per section."""

    experiment: str = "default"
    """Name of the run; the default run folder is ``runs/<experiment>``."""
    data: DataConfig = field(default_factory=DataConfig)
    """Which MovieLens files become the catalog."""
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    """Documents and the sentence-transformers model."""
    model: RQVAEConfig = field(default_factory=RQVAEConfig)
    """The RQ-VAE's shape (levels, codebook size, latent, encoder)."""
    collab: CollabConfig = field(default_factory=CollabConfig)
    """Collaborative item vectors from the ratings (content only unless ``collab.method`` says otherwise)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation and the Lightning Trainer."""
    joint: JointConfig = field(default_factory=JointConfig)
    """Joint training of the tokenizer with a generative recommender (off unless ``joint.cycles`` > 0)."""
    assign: AssignConfig = field(default_factory=AssignConfig)
    """How codes become unique Semantic IDs."""
    export: ExportConfig = field(default_factory=ExportConfig)
    """The enriched dataset, the cards and the Hub."""
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    """The report."""
    visualize: VisualizeConfig = field(default_factory=VisualizeConfig)
    """The UMAP map."""
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    """The generative-retrieval benchmark (`movielens-sids retrieval`; not a stage of `run`)."""

    def __post_init__(self) -> None:
        if not self.experiment or "/" in self.experiment:
            raise ValueError(f"experiment: must be a non-empty name without '/', got {self.experiment!r}")

    def default_run_dir(self) -> Path:
        return Path("runs") / self.experiment

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = [f.name for f in dataclasses.fields(Config) if dataclasses.is_dataclass(f.default_factory)]


def preset_names() -> list[str]:
    """Names of the presets shipped in the package (``configs/*.yaml``)."""
    return sorted(p.name[: -len(".yaml")] for p in resources.files("movielens_sids").joinpath("configs").iterdir()
                  if p.name.endswith(".yaml"))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one YAML or flag value to the field's declared type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in typing.get_args(tp):
                return None
        last: Exception | None = None
        for a in args:
            try:
                return _coerce(value, a, key)
            except (SidsError, ValueError, TypeError) as e:
                last = e
        raise SidsError(f"setting {key}: cannot use {value!r} ({last})")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(map(str, typing.get_args(tp)))
            raise SidsError(f"setting {key}: {value!r} is not one of {choices}")
        return value
    if origin in (list, tuple):
        (inner,) = typing.get_args(tp)[:1] or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise SidsError(f"setting {key}: expected a list, got {value!r}")
        return [_coerce(v, inner, key) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise SidsError(f"setting {key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise SidsError(f"setting {key}: expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise SidsError(f"setting {key}: expected an integer, got {value!r}") from None
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise SidsError(f"setting {key}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise SidsError(f"setting {key}: expected a string, got {value!r}")
        return str(value)
    return value


def build_settings(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """A validated settings dataclass ``cls`` from nested dicts; ``prefix`` (``"retrieval."``) names the
    section in error messages. Unknown keys and bad values are a ``SidsError`` naming the setting.

    Example:
        >>> build_settings(RetrievalConfig, {"seeds": "0,1"}, "retrieval.").seeds
        [0, 1]
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if k not in names:
            raise SidsError(f"unknown setting {key!r}; known: {', '.join(sorted(prefix + n for n in names))}")
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            if not isinstance(v, dict):
                raise SidsError(f"setting {key}: expected a mapping, got {v!r}")
            kwargs[k] = build_settings(tp, v, f"{key}.")
        else:
            kwargs[k] = _coerce(v, tp, key)
    try:
        return cls(**kwargs)
    except ValueError as e:  # __post_init__ checks name the setting
        raise SidsError(f"invalid setting in {prefix.rstrip('.') or 'config'}: {e}") from e


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build a validated ``Config`` from nested dicts (as read from YAML)."""
    return build_settings(Config, values or {}, "")


def read_config_file(name_or_path: str | Path) -> dict[str, Any]:
    """Read a preset by name (``demo``) or a YAML file by path, as nested dicts."""
    text: str
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():  # a folder called "demo" does not hide the preset
        if not p.is_file():
            raise SidsError(f"config file {p} not found")
        text = p.read_text(encoding="utf-8")
    else:
        ref = resources.files("movielens_sids").joinpath("configs", f"{name_or_path}.yaml")
        if not ref.is_file():
            raise SidsError(f"unknown preset {str(name_or_path)!r}; presets: {', '.join(preset_names())} "
                            "(or give a path to a .yaml file)")
        text = ref.read_text(encoding="utf-8")
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise SidsError(f"config {name_or_path} is not valid YAML: {' '.join(str(e).split())}") from e
    if not isinstance(values, dict):
        raise SidsError(f"config {name_or_path} must be a mapping of sections")
    base = values.pop("base", None)  # a config may extend a preset: `base: tiger`
    if base:
        merged = read_config_file(base)
        _deep_update(merged, values)
        values = merged
    return values


def _deep_update(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


def set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    d = values
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise SidsError(f"cannot set {key!r}: {p!r} is not a section")
    d[parts[-1]] = value


def load_config(name_or_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load a preset or YAML file and apply ``{"section.field": value}`` overrides.

    Example:
        >>> cfg = load_config("demo", {"model.levels": 4})
    """
    values = read_config_file(name_or_path) if name_or_path else {}
    for k, v in (overrides or {}).items():
        set_dotted(values, k, v)
    return config_from_dict(values)


RUNS_ROOT = Path("runs")
"""Where run folders go by default (``runs/<experiment>``)."""
RUN_SETTINGS = "config.yaml"
"""A run folder's own settings: the defaults of every later command on that folder."""
ONE_SHOT = ("export.push_to_hub", "export.dry_run")
"""Settings that ask for an action: read from a run folder's settings, they are reset (asked for each time)."""
RETIRED = ("train.num_workers",)
"""Settings that no longer exist: an older run folder's settings may hold them, and they are dropped."""


def run_folders(root: Path = RUNS_ROOT) -> list[Path]:
    """The run folders under ``root`` (sub-folders holding settings, a catalog or stage records), sorted."""
    if not root.is_dir():
        return []
    marks = (RUN_SETTINGS, "catalog.parquet", "sids.parquet", ".stages")
    return sorted(d for d in root.iterdir() if d.is_dir() and any((d / m).exists() for m in marks))


def find_run_dir(root: Path = RUNS_ROOT, default: str = "default") -> Path:
    """The run folder a command uses when given neither ``--run-dir`` nor ``--config``.

    ``root/default`` when it exists, else the only run folder under ``root``.

    Raises:
        SidsError: none or several run folders (the message lists them).
    """
    if (root / default).is_dir():
        return root / default
    found = run_folders(root)
    if len(found) == 1:
        return found[0]
    if not found:
        raise SidsError(f"no run folder under {root}/: run `movielens-sids run --config demo` first, "
                        "or pass --run-dir DIR")
    raise SidsError(f"{len(found)} run folders under {root}/: {', '.join(map(str, found))}; pass --run-dir DIR")


def load_run_config(run_dir: Path, overrides: dict[str, Any] | None = None) -> Config:
    """A run folder's own settings (``config.yaml``) with ``overrides`` applied; the defaults when it has none.

    The one-shot settings (``ONE_SHOT``: pushing to the Hub) are not taken from the file, nor the settings
    that no longer exist (``RETIRED``), which a folder made by an earlier version may still hold.
    """
    path = Path(run_dir) / RUN_SETTINGS
    if not path.is_file():
        return load_config(None, overrides)
    values = read_config_file(path)
    for key in (*ONE_SHOT, *RETIRED):
        section, name = key.split(".")
        if isinstance(values.get(section), dict):
            values[section].pop(name, None)
    for k, v in (overrides or {}).items():
        set_dotted(values, k, v)
    return config_from_dict(values)
