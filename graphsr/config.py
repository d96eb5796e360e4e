"""Run configuration: nested dataclasses read from YAML (``configs/*.yaml``).

Unknown keys are errors (a typo must not silently fall back to a default), and so are values of the wrong type;
errors name the key. Every field has a default, so a config file names only what differs. YAML 1.1 (PyYAML) reads
``1e-3`` as a string: a number field accepts such a string when it is a number.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

import yaml

# what a resumed training may change (where it runs, how long this call may take)
RESUMABLE = ("train.device", "train.time_limit", "train.compile")


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=lambda: ["data/single_electron_2x.root"])  # ROOT files
    cache: str = "data/cache"                 # processed-graph cache directory
    max_events: int | None = None             # events read per file (None: all)
    val_fraction: float = 0.1                 # held out for the validation loss
    test_fraction: float = 0.1                # held out for evaluation (never trained on)
    split_seed: int = 0                       # seed of the train / val / test split
    layers: list[int] = field(default_factory=lambda: [0, 1, 2])  # calorimeter layers super-resolved
    edges: str = "grid"                       # graph edges: "grid" (neighbouring cells), "knn" or "radius"
    reach: int = 1                            # grid: in-layer neighbours within this many cells
    k: int = 8                                # kNN neighbours within a layer
    k_between: int = 4                        # kNN neighbours in each adjacent layer (0: no links between layers)


@dataclass
class ModelConfig:
    width: int = 128                          # hidden features per node
    depth: int = 4                            # fine-graph transformer blocks
    coarse_depth: int = 2                     # coarse-graph encoder blocks
    heads: int = 4                            # attention heads
    context_tokens: int = 4                   # pooled event-context tokens per graph
    dropout: float = 0.0
    generator: str = "dense"                  # "dense" (every child of every coarse cell), "pyramid" (hits only)
    #                                           or "boosted" (gradient-boosted trees, flow matching; section boosted)


@dataclass
class DiffusionConfig:
    parameterisation: str = "edm"             # "edm", "eps", "v", "cfm" (flow matching) or "regression" (MSE)
    schedule: str = "cosine"                  # VP schedule for eps / v: "cosine" or "linear"
    sigma_data: float = 1.0                   # EDM: std of the (standardised) target
    p_mean: float = -1.2                      # EDM: lognormal training sigma, mean of ln(sigma)
    p_std: float = 1.2                        # EDM: ... and its std
    sigma_min: float = 0.002                  # sampling range
    # 20, not EDM's 80: training draws sigma above 20 once in 4,000 (ln sigma 3.5 sd above p_mean), so the network
    # is untrained higher up, and a few-step grid starting at 80 spends its first steps there, which biases the
    # event energy (docs/energy_model.md, "The sampling grid"). 20 sigma_data is still pure noise.
    sigma_max: float = 20.0
    min_snr_gamma: float | None = None        # min-SNR loss weighting (None: off)
    learned_schedule: bool = False            # draw training sigma from a learned monotone schedule over [sigma_min,
    #                                           sigma_max] that minimises the loss's variance (VDM; graphsr.diffusion.
    #                                           schedule); eps / v then train VDM's objective, uniform in ln sigma^2
    coarse_weight: float = 1.0                # loss weight of the coarse totals against the fine shares, per event


@dataclass
class TrainConfig:
    steps: int = 2000                         # optimiser steps
    batch_size: int = 32                      # events per batch
    lr: float = 3e-4                          # peak learning rate (AdamW)
    weight_decay: float = 0.01
    warmup: int = 100                         # linear warm-up steps, then cosine decay to 0
    grad_clip: float = 1.0                    # max gradient norm
    ema_decay: float = 0.999                  # EMA of the weights (used for sampling)
    val_every: int = 200                      # steps between validation losses and checkpoints
    seed: int = 0
    device: str = "auto"                      # "auto" (CUDA if present), "cpu", "cuda", "cuda:1", ...
    amp: bool = True                          # bf16 autocast on CUDA (ignored on CPU)
    time_limit: float | None = None           # stop (and checkpoint) after this many seconds
    compile: bool = False                     # torch.compile the network (graphsr.nn.use_compile)


@dataclass
class SampleConfig:
    sampler: str = "heun"                     # "ddpm", "ddim", "heun", "dpmpp_2m", "rk45"
    steps: int = 8                            # sampling steps
    grid: str = "karras"                      # noise levels of the steps: "karras" (EDM's) or "learned" (evenly in
    #                                           t of the model's learned schedule: diffusion.learned_schedule)
    eta: float = 0.0                          # ddim: stochasticity (0: deterministic DDIM, 1: ancestral DDPM)
    ensemble: int = 10                        # samples per event (mean and spread are reported)
    mode: str = "posterior"                   # "posterior" or "conserving" (graphsr.models.sr3.MODES)
    calibration_events: int = 200             # validation events for the post-hoc spread calibration (0: none)


@dataclass
class PyramidConfig:
    """The sparse two-stage generator (``model.generator: pyramid``, :mod:`graphsr.models.pyramid`)."""

    levels: list[int] = field(default_factory=lambda: [2])  # factor of each level, coarsest first (product: data's)
    threshold: float = 0.0                    # GeV: a child is hit (carries energy) when its truth is above this
    occupancy: str = "analog_bits"            # stage 1: "analog_bits" (diffusion) or "bernoulli" (classifier head)
    self_condition: float = 0.5               # analog bits: fraction of training events fed their own estimate
    occupancy_steps: int | None = None        # analog bits: stage 1's sampling steps (None: sample.steps)
    noise_cells: float = 0.0                  # training events get up to this many noise-only coarse cells per
    #                                           coarse cell (graphsr.graphs.noise_cells), so that stage 1 sees empty
    #                                           candidates; validation and test events are left as they are


@dataclass
class BoostedConfig:
    """The boosted-tree flow-matching baseline (``model.generator: boosted``, :mod:`graphsr.models.boosted`); it
    needs ``diffusion.parameterisation: cfm``. ``train.time_limit`` stops boosting early; ``train.seed`` seeds it."""

    rounds: int = 300                         # boosting rounds of each ensemble (fine cells, coarse totals)
    leaves: int = 63                          # leaves per tree
    learning_rate: float = 0.1
    min_child_samples: int = 100              # training rows per leaf at least
    draws: int = 8                            # noisy copies (t, noise) of each training event


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    pyramid: PyramidConfig = field(default_factory=PyramidConfig)
    boosted: BoostedConfig = field(default_factory=BoostedConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def _number(value, kind: type, where: str):
    """``value`` as an int or float, accepting numbers written as strings (YAML 1.1 reads ``1e-3`` as one)."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise ValueError(f"{where}: expected {kind.__name__}, got {value!r} ({type(value).__name__})")
    if kind is int:
        if not math.isfinite(number) or number != int(number):
            raise ValueError(f"{where}: expected int, got {value!r}")
        return int(number)
    return float(number)


def _check(value, annotation, where: str):
    """``value`` checked against a field's type (int, float, bool, str, list[...], ``X | None``)."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if value is None:
        if type(None) in options:
            return None
        raise ValueError(f"{where}: must be given (null is not allowed)")
    kind = next(o for o in options if o is not type(None))
    if typing.get_origin(kind) is list:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {value!r} ({type(value).__name__})")
        (item,) = typing.get_args(kind)
        return [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if kind in (int, float):
        return _number(value, kind, where)
    if not isinstance(value, kind):
        raise ValueError(f"{where}: expected {kind.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {values!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    types_ = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        default = known[name].default_factory() if callable(known[name].default_factory) else known[name].default
        if is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}")
        else:
            kwargs[name] = _check(value, types_[name], f"{where}.{name}")
    return cls(**kwargs)


def config_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys (``train.lr``) whose values differ between two config dicts."""
    keys = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            keys += config_differences(x, y, f"{prefix}{key}.")
        elif x != y:
            keys.append(prefix + key)
    return keys


def config_from_dict(values: dict, cls=Config):
    """A config of dataclass ``cls`` (default :class:`Config`) from nested dicts."""
    return _build(cls, values or {}, "config")


def _merged(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` on top, section by section (a list or a value is replaced whole)."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_config_file(path: str | Path, _seen: tuple = ()) -> dict:
    """The settings of a YAML config as nested dicts, with ``extends: other.yaml`` (a path relative to the file)
    resolved: the other file's settings, with this file's on top. So a variant names only what differs from its
    base."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}" + (f" (extended by {_seen[-1]})" if _seen else ""))
    if path.resolve() in _seen:
        raise ValueError(f"{path}: extends itself through {' -> '.join(map(str, _seen))}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of sections, got {type(values).__name__}")
    base = values.pop("extends", None)
    if base is None:
        return values
    return _merged(read_config_file(path.parent / base, (*_seen, path.resolve())), values)


def load_config(path: str | Path, cls=Config):
    """Read a YAML config (:func:`read_config_file`, ``extends:`` included) into dataclass ``cls`` (default
    :class:`Config`, the super-resolution run's; e.g. :class:`graphsr.reco.RecoConfig`); errors name the file and
    the offending key."""
    values = read_config_file(path)
    try:
        return config_from_dict(values, cls)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
