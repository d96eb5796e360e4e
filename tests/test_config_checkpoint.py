import argparse
from pathlib import Path

import pytest
import torch

from graphsr.config import Config, config_differences, config_from_dict, load_config
from graphsr.training.checkpoint import load_checkpoint, save_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_config_reads_nested_values_and_rejects_unknown_keys(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  width: 32\ntrain:\n  steps: 7\n")
    config = load_config(path)
    assert config.model.width == 32 and config.train.steps == 7
    assert config.model.depth == Config().model.depth  # untouched defaults
    path.write_text("model:\n  widht: 32\n")
    with pytest.raises(ValueError, match=r"run.yaml.*config.model.*widht"):
        load_config(path)
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        load_config(tmp_path / "nowhere.yaml")
    assert config_from_dict(config.to_dict()) == config


def test_config_values_are_type_checked_and_errors_name_the_key(tmp_path):
    path = tmp_path / "run.yaml"
    # PyYAML reads 1e-3 (no dot) as a string; number fields take numbers written as strings
    path.write_text("train:\n  lr: 1e-3\n  steps: 2e3\n  time_limit: null\ndata:\n  layers: [0, 1]\n")
    config = load_config(path)
    assert config.train.lr == 0.001 and isinstance(config.train.lr, float)
    assert config.train.steps == 2000 and isinstance(config.train.steps, int) and config.train.time_limit is None
    for text, match in [("train:\n  lr: fast\n", r"run.yaml: config.train.lr: expected float, got 'fast'"),
                        ("train:\n  steps: 10.5\n", r"config.train.steps: expected int, got 10.5"),
                        ("train:\n  amp: yes please\n", r"config.train.amp: expected bool"),
                        ("train:\n  steps: true\n", r"config.train.steps: expected int, got True"),
                        ("train:\n  seed: null\n", r"config.train.seed: must be given"),
                        ("data:\n  train: data/e.root\n", r"config.data.train: expected a list"),
                        ("data:\n  layers: [0, one]\n", r"config.data.layers\[1\]: expected int"),
                        ("sample:\n  sampler: 3\n", r"config.sample.sampler: expected str")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=match):
            load_config(path)


def test_config_differences_lists_dotted_keys():
    a = Config().to_dict()
    b = config_from_dict({"train": {"lr": 1.0, "device": "cpu"}, "model": {"width": 8}}).to_dict()
    assert config_differences(a, b) == ["model.width", "train.device", "train.lr"]
    assert config_differences(a, a) == []


def test_checkpoint_round_trip_is_weights_only_and_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    state = {"model": {"w": torch.arange(3.0)}, "step": 5, "config": Config().to_dict()}
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["step"] == 5

    # a crash while writing keeps the previous checkpoint and leaves no temporary file
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 6}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]

    # pickled objects are refused, truncated files give a clear error
    torch.save({"obj": argparse.Namespace()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt"):
        load_checkpoint(tmp_path / "evil.pt")
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match="cut.pt"):
        load_checkpoint(tmp_path / "cut.pt")


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    from graphsr.diffusion import PARAMETERISATIONS, SAMPLERS
    from graphsr.models.sr3 import MODES

    config = load_config(path)
    assert config.diffusion.parameterisation in PARAMETERISATIONS
    assert config.sample.sampler in SAMPLERS and config.sample.mode in MODES


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")) + sorted(CONFIGS.glob("reco/*.yaml")),
                         ids=lambda p: str(p.relative_to(CONFIGS)))
def test_a_shipped_config_is_what_its_name_says(path):
    """<setup>[_<budget>][_<generator>].yaml (docs/usage.md): the setup names the data it trains on, the generator
    part the generator it builds."""
    import re

    from graphsr.reco import load_reco_config

    if path.name == "tiny.yaml":
        return
    match = re.fullmatch(r"(single_electron_2x|multi_particle_4x)(?:_(30min|gpu|large|9k|wide))?"
                         r"(?:_(regression|pyramid|cfm|boosted|learned))?\.yaml", path.name)
    assert match, f"{path.name} does not follow <setup>[_<budget>][_<generator>].yaml"
    setup, _, generator = match.groups()
    config = load_reco_config(path) if path.parent.name == "reco" else load_config(path)
    assert all(Path(f).name.startswith(setup) for f in config.data.train)
    if path.parent.name != "reco":
        built = config.model.generator if config.model.generator in ("pyramid", "boosted") else \
            config.diffusion.parameterisation if config.diffusion.parameterisation in ("regression", "cfm") else \
            "learned" if config.diffusion.learned_schedule else None
        assert built == generator


def test_a_config_extends_another_with_only_what_differs(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {width: 32, depth: 2}\ntrain: {steps: 2000, lr: 2.0e-3}\n"
                                        "data: {layers: [0, 1, 2]}\n")
    (tmp_path / "variants").mkdir()
    (tmp_path / "variants" / "short.yaml").write_text("extends: ../base.yaml\ntrain: {steps: 600}\n"
                                                      "data: {layers: [1]}\n")
    config = load_config(tmp_path / "variants" / "short.yaml")
    # section by section: the variant's value wins, the rest of the section is the base's; lists are replaced whole
    assert (config.train.steps, config.train.lr, config.model.width, config.data.layers) == (600, 0.002, 32, [1])
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ValueError, match="extends itself"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(FileNotFoundError, match="missing.yaml.*extended by"):
        load_config(tmp_path / "orphan.yaml")


def test_the_regression_baseline_differs_from_the_demo_only_where_it_says():
    base, regression = (load_config(CONFIGS / name) for name in ("single_electron_2x.yaml",
                                                                    "single_electron_2x_regression.yaml"))
    assert config_differences(base.to_dict(), regression.to_dict()) == \
        ["diffusion.parameterisation", "train.steps", "train.time_limit"]
