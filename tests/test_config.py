import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mnistgan.config import (
    ConvGeneratorConfig,
    config_from_dict,
    config_from_json,
    load_config,
    parse_override,
    preset_names,
)
from mnistgan.errors import UserError


def test_every_tutorial_has_a_preset():
    assert {"seed-000", "seed-001", "seed-002", "seed-004"} <= set(preset_names())


@pytest.mark.parametrize("name", ["seed-000", "seed-001", "seed-002", "seed-004"])
def test_preset_round_trips_through_json(name):
    config = load_config(name)
    assert config.name == name
    again = config_from_json(config.to_json())
    assert again == config


def test_tutorial_values_reach_the_config():
    c0 = load_config("seed-000")
    assert (c0.noise.dim, c0.noise.dist, c0.data.digits) == (64, "uniform", [5])
    assert isinstance(c0.generator, ConvGeneratorConfig) and c0.generator.channels == [64, 32]
    assert (c0.train.d_lr, c0.train.g_lr, c0.train.decay) == (2e-4, 1e-4, 1e-6)
    c1 = load_config("seed-001")
    assert c1.generator.hidden == [256, 512, 1024] and c1.generator.bn_momentum == 0.8
    assert c1.discriminator.hidden == [512, 256] and c1.train.d_betas == [0.5, 0.999]
    c2 = load_config("seed-002")
    assert c2.generator.hidden == [128] and c2.generator.slope == 0.01
    assert c2.train.label_smoothing == 0.1 and c2.train.g_noise == "reuse"
    c4 = load_config("seed-004")
    assert c4.generator.start_channels == 200 and c4.generator.start_size == 14
    assert c4.discriminator.head == "softmax2" and c4.train.pretrain_images == 10000
    assert c4.data.value_range == "sigmoid" and c4.generator.output == "sigmoid"


def test_overrides_are_typed():
    c = load_config("seed-001", ["train.batch_size=64", "data.digits=3,5,8",
                                 "noise.dist=semicircle", "train.d_lr=1e-3",
                                 "generator.hidden=[128, 256]", "train.d_betas=[0.5, 0.9]"])
    assert c.train.batch_size == 64 and c.data.digits == [3, 5, 8]
    assert c.noise.dist == "semicircle" and c.train.d_lr == 1e-3
    assert c.generator.hidden == [128, 256] and c.train.d_betas == [0.5, 0.9]
    assert load_config("seed-001", ["data.digits=5"]).data.digits == [5]
    assert isinstance(load_config("seed-001", ["train.d_lr=1"]).train.d_lr, float)


def test_a_length_in_epochs_replaces_the_presets_length_in_steps():
    """seed-001 sets train.steps, which wins over epochs: an override asking for epochs alone
    must not be silently ignored (the command line's --epochs goes through the same rule)."""
    c = load_config("seed-001", ["train.epochs=5"])
    assert (c.train.steps, c.train.epochs) == (0, 5.0)
    assert load_config("seed-001", ["train.epochs=5", "train.steps=7"]).train.steps == 7
    assert load_config("seed-001", ["train.steps=7", "train.epochs=5"]).train.steps == 7
    assert load_config("best", ["train.steps=7"]).train.steps == 7
    assert load_config("seed-001").train.steps == 100000


def test_switching_architecture_by_override():
    c = load_config("seed-001", ["generator.arch=conv", "generator.start_channels=32"])
    assert isinstance(c.generator, ConvGeneratorConfig) and c.generator.start_channels == 32


@pytest.mark.parametrize("override, words", [
    ("train.batchsize=3", "did you mean 'batch_size'"),
    ("trian.steps=3", "unknown config key 'trian'"),
    ("train.batch_size=abc", "must be a whole number"),
    ("train.batch_size=2.5", "must be a whole number"),
    ("train.batch_size=true", "must be a whole number"),
    ("train.batch_size=0", "must be at least 1"),
    ("train.steps=-4", "must be positive"),
    ("train.d_lr=-1", "greater than 0"),
    ("train.d_lr=0", "greater than 0"),
    ("noise.dist=cauchy", "choose one of"),
    ("data.digits=12", "not in 0-9"),
    ("data.digits=3,x", "must be a whole number"),
    ("generator.batch_norm=1", "true or false"),
    ("generator.arch=transformer", "unknown"),
    ("train=3", "must be a section"),
    ("train.seed.x=1", "is a value, not a section"),
    ("noval", "not key=value"),
    ("generator.output=sigmoid", "does not match data.value_range"),
    ("generator.output=relu", "must be tanh, sigmoid, clamp"),
    ("train.label_smoothing=0.7", "[0, 0.5)"),
    ("train.g_noise=reuse", "needs train.d_batch = 'full'"),
    ("train.mode_seeking=-1", "0 (off) or more"),
    ("train.top_k=0", "must be in (0, 1]"),
    ("train.top_k=1.5", "must be in (0, 1]"),
    ("data.digit_frequencies=[0.5,0.5]", "needs 10 shares"),
    ("data.digit_frequencies=[-1,1,1,1,1,1,1,1,1,1]", "none negative"),
    ("data.digit_frequencies=[0,0,0,0,0,0,0,0,0,0]", "not all 0"),
])
def test_bad_overrides_are_clear_errors(override, words):
    with pytest.raises(UserError) as err:
        load_config("seed-001", [override])
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_a_linear_output_fits_either_range_and_a_clamp_only_tanh_data():
    for preset in ("seed-001", "seed-004"):  # tanh and sigmoid data
        assert load_config(preset, ["generator.output=none"]).generator.output == "none"
    assert load_config("seed-001", ["generator.output=clamp"]).generator.output == "clamp"
    assert load_config("seed-001", ["generator.output=clamp_black"]).generator.output == "clamp_black"
    for output in ("clamp", "clamp_black"):
        with pytest.raises(UserError, match="does not match data.value_range = 'sigmoid'"):
            load_config("seed-004", [f"generator.output={output}"])


def test_mode_seeking_needs_the_g_steps_own_noise():
    with pytest.raises(UserError, match="needs train.g_noise = 'fresh'"):
        load_config("seed-002", ["train.mode_seeking=0.1"])  # text 002's G step reuses D's noise


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown preset 'nope'.*seed-001"):
        load_config("nope")


def test_config_file_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\n[train]\nsteps = 7\n')
    c = load_config(str(path))
    assert c.name == "mine" and c.train.steps == 7
    path.write_text("name = \n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_config(str(path))


def test_conv_generator_must_reach_28_pixels():
    with pytest.raises(UserError, match="not 28x28"):
        load_config("seed-000", ["generator.start_size=8"])


def test_bad_json_config():
    with pytest.raises(UserError, match="not valid JSON"):
        config_from_json("{nope")
    with pytest.raises(UserError, match="config object"):
        config_from_json("[1, 2]")


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
sections = st.sampled_from(["data", "noise", "generator", "discriminator", "train", "name"])
keys = st.sampled_from(["batch_size", "steps", "dim", "dist", "digits", "hidden", "arch",
                        "channels", "head", "d_lr", "x", "seed", "upsample"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(sections, st.dictionaries(keys, values, max_size=4) | values, max_size=4))
def test_config_loader_never_crashes_on_junk(raw):
    """Any JSON-like junk either loads or is refused with a UserError; never a traceback."""
    try:
        config = config_from_dict(raw)
    except UserError as exc:
        assert "\n" not in str(exc)
    else:
        assert config_from_json(json.dumps(config.to_dict())) == config


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_override_parser_never_crashes(text):
    try:
        key, _ = parse_override(text)
    except UserError:
        return
    assert key and "=" in text


def test_a_run_config_json_loads_as_a_preset(tmp_path):
    config = load_config("seed-000", ["train.seed=9"])
    path = tmp_path / "config.json"
    path.write_text(config.to_json())
    again = load_config(str(path), ["train.steps=11"])
    assert again.train.seed == 9 and again.train.steps == 11 and again.name == "seed-000"


def test_each_choice_has_one_registry_that_config_cli_and_server_read():
    import typing

    from mnistgan.augment import TRANSFORMS
    from mnistgan.cli import build_parser
    from mnistgan.config import PRECISIONS, ConvGeneratorConfig, TrainConfig, choices
    from mnistgan.data import DATASETS
    from mnistgan.losses import LOSSES
    from mnistgan.models.common import ACTIVATIONS, INITS
    from mnistgan.noise import DISTRIBUTIONS

    assert choices("noise.dist") == tuple(DISTRIBUTIONS)
    assert choices("train.loss") == tuple(LOSSES)
    assert choices("train.precision") == tuple(PRECISIONS)
    assert choices("data.dataset") == tuple(DATASETS)
    (augmentation,) = typing.get_args(typing.get_type_hints(TrainConfig)["augment"])
    assert typing.get_args(augmentation) == tuple(TRANSFORMS)
    hints = typing.get_type_hints(ConvGeneratorConfig)
    assert typing.get_args(hints["activation"]) == tuple(ACTIVATIONS)
    assert typing.get_args(hints["init"]) == tuple(INITS)
    assert choices("train.steps") is None  # a free value

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    options = {a.dest: a.choices for a in commands["train"]._actions}
    assert list(options["noise"]) == list(DISTRIBUTIONS)
    assert list(options["precision"]) == list(PRECISIONS)
    assert list(options["dataset"]) == list(DATASETS)
    sample = {a.dest: a.choices for a in commands["sample"]._actions}
    assert list(sample["noise"]) == list(DISTRIBUTIONS)


def test_the_server_takes_its_noise_names_from_the_registry(tmp_path):
    pytest.importorskip("fastapi")
    from mnistgan.checkpoint import save_weights
    from mnistgan.models import build_generator
    from mnistgan.noise import DISTRIBUTIONS
    from mnistgan.serve import create_app

    config = load_config("seed-002")
    path = save_weights(build_generator(config), tmp_path / "g.safetensors", config, "generator")
    schema = create_app(path).openapi()
    noise = next(p for p in schema["paths"]["/api/samples"]["get"]["parameters"] if p["name"] == "noise")
    assert list(DISTRIBUTIONS) in [s.get("enum") for s in noise["schema"].get("anyOf", [noise["schema"]])]
