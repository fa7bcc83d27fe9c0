"""The sampling generator's standing batch-norm statistics (`train.standing_stats`)."""

import pytest
import torch
from safetensors.torch import load_file

from mnistgan import UserError, load_config, load_generator, train
from mnistgan.average import standing_statistics
from mnistgan.checkpoint import list_checkpoints, read_checkpoint
from mnistgan.models import build_generator
from mnistgan.noise import sample_noise

RUN = ["train.batch_size=8", "train.steps=4", "train.log_every=2", "train.sample_every=2",
       "train.grid_size=20", "train.checkpoint_every=4", "train.ema=0.5"]


def norms(net: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def test_statistics_are_the_mean_and_variance_of_the_generators_own_activations():
    config = load_config("best", ["train.standing_stats=3", "train.batch_size=16"])
    torch.manual_seed(0)
    generator = build_generator(config).train()
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    standing = standing_statistics(generator, config)
    assert standing is not generator and not standing.training
    assert all(torch.equal(v, generator.state_dict()[k]) for k, v in before.items())  # untouched

    # The same three batches again, drawn as the function documents, the inputs of the first
    # batch norm (the stem's, after the dense layer) recorded by a hook on a plain copy.
    seen: list[torch.Tensor] = []
    first = norms(generator)[0]
    hook = first.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
    draw = torch.Generator().manual_seed(config.train.seed + 5)
    with torch.no_grad():
        for _ in range(3):
            z = sample_noise(config.noise, 16, draw)
            labels = torch.randint(0, 10, (16,), generator=draw)
            generator(z, labels)
    hook.remove()
    mean = torch.stack([x.mean(0) for x in seen]).mean(0)
    variance = torch.stack([x.var(0) for x in seen]).mean(0)  # unbiased, as batch norm keeps it
    got = norms(standing)[0]
    assert torch.allclose(got.running_mean, mean, atol=1e-6)
    assert torch.allclose(got.running_var, variance, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(got.running_mean, first.running_mean)
    # Deterministic, and other weights are the generator's own.
    again = standing_statistics(generator, config)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in standing.state_dict().items())
    assert torch.equal(standing.dense.weight, generator.dense.weight)


def test_off_or_without_batch_norm_the_generator_is_itself():
    off = load_config("best", ["train.standing_stats=0"])
    net = build_generator(off)
    assert standing_statistics(net, off) is net
    plain = load_config("best", ["train.standing_stats=5", "generator.batch_norm=false"])
    plain_net = build_generator(plain)
    assert standing_statistics(plain_net, plain) is plain_net


def test_dropout_and_the_training_streams_are_left_alone():
    # seed-000's G has dropout: the passes run it in inference mode, so the global random
    # stream that training's dropout draws from does not move.
    config = load_config("seed-000", ["train.standing_stats=2"])
    net = build_generator(config)
    state = torch.get_rng_state()
    standing_statistics(net, config)
    assert torch.equal(torch.get_rng_state(), state)


def test_training_is_untouched_and_every_sampling_path_agrees(tmp_path, mnist_dir):
    on = train(load_config("best", [*RUN, "train.standing_stats=4"]), out=tmp_path / "on",
               progress=False).run_dir
    off = train(load_config("best", [*RUN, "train.standing_stats=0"]), out=tmp_path / "off",
                progress=False).run_dir
    state_on = read_checkpoint(list_checkpoints(on / "checkpoints")[-1])["gan"]
    state_off = read_checkpoint(list_checkpoints(off / "checkpoints")[-1])["gan"]
    for net in ("G", "D", "G_ema"):  # the same training, to the bit
        assert all(torch.equal(v, state_off[net][k]) for k, v in state_on[net].items())

    file_on = load_file(on / "generator.safetensors")
    file_off = load_file(off / "generator.safetensors")
    buffers = [k for k in file_on if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert buffers
    assert all(torch.equal(v, file_off[k]) for k, v in file_on.items() if k not in buffers)
    assert not all(torch.equal(file_on[k], file_off[k]) for k in buffers)
    # The run's checkpoint, read as an unfinished run would be, samples as the generator file.
    from_checkpoint = load_generator(list_checkpoints(on / "checkpoints")[-1]).net.state_dict()
    # (To float rounding: training ran G channels-last, the loaded copy runs it contiguous.)
    assert all(torch.allclose(v.float(), from_checkpoint[k].float(), rtol=1e-5, atol=1e-6)
               for k, v in file_on.items())
    assert not all(torch.allclose(v.float(), from_checkpoint[k].float(), rtol=1e-5, atol=1e-6)
                   for k, v in file_off.items())
    assert (load_generator(on).sample(16) != load_generator(off).sample(16)).any()


def test_a_negative_count_is_refused_in_one_line():
    with pytest.raises(UserError, match="train.standing_stats = -1 must be 0"):
        load_config("best", ["train.standing_stats=-1"])
