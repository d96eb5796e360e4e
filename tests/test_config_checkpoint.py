import argparse
from pathlib import Path

import pytest
import torch

from graphsr.config import Config, config_from_dict, load_config
from graphsr.training.checkpoint import load_checkpoint, save_checkpoint


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
