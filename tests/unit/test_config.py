"""Config loading: defaults, overrides, and one-line errors that name the key."""

from __future__ import annotations

import pytest
import yaml

from seg_pet.cli import main
from seg_pet.config import Config, config_to_dict, dump_config, load_config
from seg_pet.runtime.errors import ConfigError
from tests.conftest import REPO


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_without_file():
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.loss.name == "ce" and cfg.data.border == "class" and cfg.model.arch == "unet"


@pytest.mark.parametrize("name", ["pet_unet.yaml", "smoke.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "configs" / name)
    assert cfg.data.image_size % 32 == 0


def test_pet_unet_is_the_real_job():
    cfg = load_config(REPO / "configs" / "pet_unet.yaml")
    assert (cfg.data.image_size, cfg.model.encoder, cfg.model.encoder_weights, cfg.data.source) == (256, "resnet34", "imagenet", "oxford")


def test_overrides_parse_values_as_yaml(tmp_path):
    cfg = load_config(
        write(tmp_path, "optim:\n  lr: 0.1\n"),
        ["optim.lr=1e-4", "model.encoder_weights=null", "loss.name=dice", "loss.classes=[pet, border]", "run.name=x"],
    )
    assert cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.model.encoder_weights is None
    assert cfg.loss.get("classes") == ["pet", "border"]
    assert cfg.run.name == "x"


def test_int_accepted_for_float():
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0


def test_yaml11_exponent_without_dot_is_a_float(tmp_path):
    # PyYAML reads `5e-4` as a string; the config accepts it as the number the user meant.
    assert load_config(write(tmp_path, "optim:\n  lr: 5e-4\n")).optim.lr == pytest.approx(5e-4)
    with pytest.raises(ConfigError, match="optim.lr: expected float"):
        load_config(None, ["optim.lr=5e-4x"])


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["optim.epochs=3", "data.border=ignore"])
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert config_to_dict(again) == config_to_dict(cfg)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["optim.lr=0"], "optim.lr: must be > 0"),
        (["optim.lr=-1"], "optim.lr: must be > 0"),
        (["data.image_size=100"], "data.image_size: must be a positive multiple of 32"),
        (["data.val_fraction=1.0"], "data.val_fraction"),
        (["data.val_fraction=-0.1"], "data.val_fraction: must be >= 0"),
        (["data.val_fraction=0"], "train.select: data.val_fraction: 0 leaves no validation split"),
        (["data.crop_scale=[0.9, 0.5]"], "data.crop_scale: must be [min, max]"),
        (["data.crop_scale=[0.5]"], "data.crop_scale: must be [min, max]"),
        (["data.crop_scale=[0, 1]"], "data.crop_scale[0]: must be > 0"),
        (["data.rotation=270"], "data.rotation: must be >= 0 and <= 180"),
        (["optim.epochs=2", "optim.warmup_epochs=2"], "optim.warmup_epochs: must be less than optim.epochs (2)"),
        (["train.ema=1"], "train.ema: must be > 0 and < 1"),
        (["train.select=best"], "train.select: must be one of best_val, last"),
        (["data.border=maybe"], "data.border: must be one of class, ignore, pet"),
        (["optim.scheduler=step"], "optim.scheduler"),
        (["train.device=tpu"], "train.device"),
        (["optim.epochs=0"], "optim.epochs"),
        (["data.num_workers=many"], "data.num_workers"),
        (["optim.lr=fast"], "optim.lr: expected float, got 'fast'"),
        (["data.download=3"], "data.download: expected bool"),
        (["optim.lrr=0.1"], "unknown key optim.lrr; did you mean 'lr'?"),
        (["optimiser.lr=0.1"], "unknown config section 'optimiser'; did you mean 'optim'?"),
        (["optim.lr"], "expected section.key=value"),
        (["loss.name=cee"], "loss.name"),
        (["loss.gamma=2"], "loss.gamma"),
    ],
)
def test_bad_values_name_the_key(overrides, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_training_on_all_of_trainval_is_accepted_with_a_fixed_schedule():
    cfg = load_config(None, ["data.val_fraction=0", "train.select=last"])
    assert (cfg.data.val_fraction, cfg.train.select) == (0.0, "last")


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"invalid YAML \(line \d+, column \d+\)"):
        load_config(write(tmp_path, "run:\n  name: [unclosed\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="run: must be a mapping"):
        load_config(write(tmp_path, "run: 3\n"))


def test_python_tags_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    text = f"run:\n  name: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(write(tmp_path, text))
    assert not marker.exists()


def test_cli_config_error_is_one_line_exit_2(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["train", "--config", str(REPO / "configs" / "smoke.yaml"), "--set", "optim.lr=-1", "--set", f"run.output_dir={out}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0 and "optim.lr" in err and "Traceback" not in err
    assert not out.exists(), "a refused run must write nothing"


def test_cli_bad_flag_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--bogus"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "--bogus" in err


def test_dump_is_safe_yaml():
    assert yaml.safe_load(dump_config(Config()))["optim"]["name"] == "adamw"
