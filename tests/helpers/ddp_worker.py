"""Run by torchrun in tests/test_distributed.py: train (or resume) like `mnistgan train`, then
save this rank's final weights as rank{N}.safetensors in DUMP, so the test can compare ranks."""

import sys
from pathlib import Path

from safetensors.torch import save_file

from mnistgan import load_config
from mnistgan.distributed import end_process, leave
from mnistgan.run import RunFolder
from mnistgan.train import GAN, Loop, _join, _load_data

out, dump, *overrides = sys.argv[1:]
config = load_config("seed-002", overrides)
world, device = _join(config)
data, steps = _load_data(config, None, world)
config.train.world_size = world.size
gan = GAN(config, data, device, world)
Loop(gan, RunFolder.create(out, config) if world.main else None, steps, False).run()
state = {f"G.{k}": v for k, v in gan.G.state_dict().items()}
state |= {f"D.{k}": v for k, v in gan.D.state_dict().items()}
save_file({k: v.contiguous() for k, v in state.items()}, Path(dump) / f"rank{world.rank}.safetensors")
leave()
end_process(0)
