"""mnistgan: train, evaluate and serve GANs on MNIST-style 28x28 images.

The Python API mirrors the command line:

    import mnistgan
    config = mnistgan.load_config("seed-001", ["train.steps=5000"])   # mnistgan train --preset
    result = mnistgan.train(config)                                   #   ... writes a run folder
    images = mnistgan.load_generator(result.run_dir).sample(64)       # mnistgan sample
    mnistgan.sweep(mnistgan.read_study("study.toml"), jobs=2)         # mnistgan sweep
"""

from .config import Config, load_config, preset_names
from .errors import UserError
from .generate import TrainedGenerator, load_generator
from .study import read_study, sweep
from .train import TrainResult, resume, train

__all__ = [
    "Config",
    "TrainResult",
    "TrainedGenerator",
    "UserError",
    "load_config",
    "load_generator",
    "preset_names",
    "read_study",
    "resume",
    "sweep",
    "train",
]
__version__ = "0.1.0"
