"""Experiment tracking (compute.tracker) and terminal-only progress bars. TensorBoard itself is not
needed: a recording Accelerator stands in for accelerate's tracker and its presence is faked."""

import io
import tomllib

import accelerate
import pytest
import torch
import yaml

from train_fixtures import stage1_settings, tiny_dataset, tiny_model  # noqa: F401
from genpromp import tracking
from genpromp.config import load_config
from genpromp.errors import ConfigError
from genpromp.training import tokens as token_stage, unet as unet_stage
from genpromp.training.checkpoints import save_tokens
from genpromp.models.loading import load_components

from workflow_utils import REPO


def test_unknown_or_missing_tracker_is_a_config_error(monkeypatch):
    with pytest.raises(ConfigError, match="compute.tracker: 'wandb' is not one of"):
        tracking.check_tracker("wandb")
    monkeypatch.setattr(tracking, "_installed", lambda module: False)
    with pytest.raises(ConfigError, match=r"compute.tracker is 'tensorboard' but the tensorboard package is not "
                                          r"installed; install it with `pip install 'genpromp\[tracking\]'`"):
        tracking.tracking_spec({"compute": {"tracker": "tensorboard"}}, "cub", "train_unet")
    tracking.check_tracker(None)  # off: nothing to check


def test_spec_and_accelerator_arguments(monkeypatch):
    config = load_config(REPO / "config" / "config.yaml")
    assert config["compute"]["tracker"] is None and config["compute"]["tracking_dir"] == "logs/tracking"
    off = tracking.tracking_spec(config, "cub_demo", "train_unet")
    assert off.kind is None and tracking.accelerator_kwargs(off) == {} and tracking.accelerator_kwargs(None) == {}
    monkeypatch.setattr(tracking, "_installed", lambda module: module == "tensorboard")
    config["compute"]["tracker"] = "tensorboard"
    on = tracking.tracking_spec(config, "cub_demo", "train_token", "shard-1")
    assert on.run_name == "cub_demo/train_token/shard-1"
    assert tracking.accelerator_kwargs(on) == {"log_with": "tensorboard",
                                               "project_dir": "logs/tracking/cub_demo/train_token/shard-1"}


def test_schema_refuses_an_unknown_tracker():
    with pytest.raises(ConfigError, match="compute.tracker"):
        load_config(REPO / "config" / "config.yaml", {"compute": {"tracker": "mlflow_x"}})


def test_progress_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert tracking.show_progress(io.StringIO()) is False
    assert tracking.show_progress(Tty()) is True
    assert tracking.show_progress(object()) is False


def test_tracking_extra_is_pinned_and_in_the_environment_file():
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["tracking"]
    assert extra == ["tensorboard==2.21.0"]
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "tensorboard==2.21.0" in pip


@pytest.fixture
def recording(monkeypatch):
    """Replace accelerate.Accelerator by one that records its tracker arguments, init_trackers and log calls
    (and builds no real tracker); pretend tensorboard is installed."""
    seen = {"kwargs": [], "init": [], "logs": []}

    class Recording(accelerate.Accelerator):
        def __init__(self, *args, log_with=None, project_dir=None, **kwargs):
            seen["kwargs"].append({"log_with": log_with, "project_dir": project_dir})
            super().__init__(*args, **kwargs)

        def init_trackers(self, project_name, config=None, init_kwargs=None):
            seen["init"].append((project_name, config))

        def log(self, values, step=None, log_kwargs=None):
            seen["logs"].append((step, dict(values)))

    monkeypatch.setattr(accelerate, "Accelerator", Recording)
    monkeypatch.setattr(tracking, "_installed", lambda module: True)
    return seen


def _spec(tmp_path, *parts):
    return tracking.TrackingSpec("tensorboard", tmp_path.joinpath(*parts), "/".join(parts))


def test_unet_logs_loss_and_lr(recording, tiny_model, tiny_dataset, tmp_path):  # noqa: F811
    dim = load_components(tiny_model).text_encoder.get_input_embeddings().weight.shape[1]
    tokens = save_tokens(tmp_path / "tokens.safetensors", [0, 1, 2], [f"<cub-{i}>" for i in range(3)],
                         torch.randn(3, dim, generator=torch.Generator().manual_seed(0)) * 0.02, ["bird"] * 3)
    s = unet_stage.Stage2Settings(resolution=64, batch_size=2, gradient_accumulation_steps=2, max_train_steps=2,
                              learning_rate=1e-3, save_steps=2, seed=1)
    log_csv = tmp_path / "unet.log.csv"
    unet_stage.train_unet(tiny_model, *tiny_dataset, tokens, tmp_path / "unet", s, log_csv, progress=False,
                      tracking=_spec(tmp_path, "cub", "train_unet"))
    assert recording["kwargs"] == [{"log_with": "tensorboard", "project_dir": str(tmp_path / "cub/train_unet")}]
    name, hparams = recording["init"][0]
    assert name == "cub/train_unet" and hparams["learning_rate"] == 1e-3 and hparams["max_train_steps"] == 2
    rows = log_csv.read_text().splitlines()[1:]
    assert len(recording["logs"]) == len(rows) == 4  # 2 updates x 2 accumulated micro-steps
    for (step, values), row in zip(recording["logs"], rows):
        micro, _, _, loss, lr = row.split(",")
        assert step == int(micro) and set(values) == {"loss", "lr"}
        assert values["loss"] == pytest.approx(float(loss), abs=1e-6) and values["lr"] == float(lr) == 1e-3


def test_unet_without_tracker_logs_nothing(recording, tiny_model, tiny_dataset, tmp_path):  # noqa: F811
    dim = load_components(tiny_model).text_encoder.get_input_embeddings().weight.shape[1]
    tokens = save_tokens(tmp_path / "tokens.safetensors", [0, 1, 2], [f"<cub-{i}>" for i in range(3)],
                         torch.zeros(3, dim), ["bird"] * 3)
    s = unet_stage.Stage2Settings(resolution=64, batch_size=2, gradient_accumulation_steps=1, max_train_steps=1,
                              learning_rate=1e-3, save_steps=1, seed=1)
    unet_stage.train_unet(tiny_model, *tiny_dataset, tokens, tmp_path / "unet", s, progress=False)
    assert recording["kwargs"] == [{"log_with": None, "project_dir": None}]
    assert recording["init"] == [] and recording["logs"] == []


def test_tokens_logs_each_class_loss_and_lr(recording, tiny_model, tiny_dataset, tmp_path):  # noqa: F811
    settings = stage1_settings(num_train_epochs=1, max_train_steps=2, learning_rate=2e-3)
    out = token_stage.train_token_shard(tiny_model, *tiny_dataset, tmp_path / "shard-0.safetensors", shard=0, n_shards=1,
                                   settings=settings, log_csv=tmp_path / "log.csv", progress=False,
                                   tracking=_spec(tmp_path, "cub", "train_token", "shard-0"))
    assert out.is_file()
    assert recording["kwargs"][0]["log_with"] == "tensorboard"
    assert recording["init"][0][0] == "cub/train_token/shard-0" and recording["init"][0][1]["shard"] == 0
    rows = [r.split(",") for r in (tmp_path / "log.csv").read_text().splitlines()[1:]]
    # the CSV has one row per (iteration, class); the tracker one entry per iteration with every class's loss
    per_iteration = {}
    for iteration, class_id, _, _, _, loss, lr in rows:
        per_iteration.setdefault(int(iteration), {})[f"loss/class_{class_id}"] = float(loss)
    assert [step for step, _ in recording["logs"]] == sorted(per_iteration)
    for step, values in recording["logs"]:
        assert values.pop("lr") == pytest.approx(settings.effective_lr())
        assert values == pytest.approx(per_iteration[step], abs=1e-6)
