"""Files that users copy around and share: damaged or hostile ones are refused clearly."""

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from mnistgan import UserError, load_config, load_generator
from mnistgan.checkpoint import save_weights
from mnistgan.models import build_discriminator, build_generator


@pytest.fixture
def weights(tmp_path):
    config = load_config("seed-002")
    path = save_weights(build_generator(config), tmp_path / "generator.safetensors", config,
                        "generator")
    return path, config


def test_good_file_loads(weights):
    path, _ = weights
    assert load_generator(path).sample(3).shape == (3, 28, 28)


def test_pickle_payload_renamed_to_safetensors_is_refused(tmp_path):
    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "generator.safetensors"
    path.write_bytes(pickle.dumps({"w": Boom()}))
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_generator(path)


@pytest.mark.parametrize("cut", [0, 7, 100, -50])
def test_truncated_weights_are_refused(weights, cut):
    path, _ = weights
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(UserError, match=str(path.name)):
        load_generator(path)


def test_bit_flipped_header_is_refused(weights):
    path, _ = weights
    data = bytearray(path.read_bytes())
    data[3] ^= 0xFF  # the header length: now points past the end of the file
    path.write_bytes(bytes(data))
    with pytest.raises(UserError):
        load_generator(path)


def test_config_with_unknown_keys_is_refused(weights, tmp_path):
    path, config = weights
    raw = config.to_dict()
    raw["train"]["warp_speed"] = 9
    tensors = {k: v.contiguous() for k, v in build_generator(config).state_dict().items()}
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, bad, metadata={"format": "mnistgan-weights-1", "role": "generator",
                                      "config": json.dumps(raw)})
    with pytest.raises(UserError, match="unknown config key 'train.warp_speed'"):
        load_generator(bad)


def test_weights_that_do_not_fit_their_config_are_refused(tmp_path):
    """seed-001's config with seed-002's tensors: e.g. a file edited by hand."""
    config_001 = load_config("seed-001")
    net_002 = build_generator(load_config("seed-002"))
    path = save_weights(net_002, tmp_path / "g.safetensors", config_001, "generator")
    with pytest.raises(UserError, match="do not fit the network"):
        load_generator(path)


def test_discriminator_weights_are_not_a_generator(tmp_path):
    config = load_config("seed-002")
    path = save_weights(build_discriminator(config), tmp_path / "d.safetensors", config,
                        "discriminator")
    with pytest.raises(UserError, match="not a generator"):
        load_generator(path)


def test_foreign_safetensors_without_our_config(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, path)
    with pytest.raises(UserError, match="holds no mnistgan config"):
        load_generator(path)
