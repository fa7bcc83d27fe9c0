"""The adversarial training loop, as the tutorials tell it.

One training step:

1. Train the discriminator: show it a batch of real MNIST digits labelled "real" and a batch
   of the generator's digits labelled "fake" (as two updates, or one on the mixed batch).
2. Train the generator through the frozen discriminator: feed noise, label the generated
   digits "real", and update only the generator's weights.

Everything a preset can vary (architectures, noise, loss, batch split, label smoothing, D
steps per G step, pre-training) comes from the config; this file knows no preset by name.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from .augment import augment
from .average import ema_with_warmup, standing_statistics
from .checkpoint import (
    checkpoint_step,
    list_checkpoints,
    load_state,
    match_layouts,
    read_checkpoint,
    save_checkpoint,
    save_weights,
)
from .config import PRECISIONS, Config, config_from_json
from .data import ImageBank, local_data_dir, to_uint8
from .distributed import World, any_rank, gather, join, lr_scale, mean_over_ranks, own, wrap
from .errors import Interrupted, UserError
from .generate import SAMPLE_CHUNK
from .health import Finding, HealthMonitor, diversity
from .losses import build_loss, mode_seeking, paired, top_k
from .memory import keep_freed_memory
from .models import build_discriminator, build_generator
from .noise import label_classes, sample_labels, sample_noise
from .run import RunFolder, SilentFolder, default_run_path
from .schedules import lr_factor
from .step_graph import StepGraph, unsupported

# Columns of the per-step statistics tensor, summed on the device between log rows so that
# the loop never waits on the host.
STATS = ("d_loss", "g_loss", "d_real", "d_fake", "d_acc_real", "d_acc_fake")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but PyTorch sees no CUDA GPU: use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps asked for, but this PyTorch has no MPS: use --device cpu")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic (AVX512-BF16 or AMX). Without it, bfloat16
    autocast is emulated, and on the AVX2 host far slower than float32 (BENCHMARKS.md)."""
    checks = [getattr(torch.cpu, name, None)
              for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(checks):
        return any(check() for check in checks)
    # Older PyTorch (the project allows >= 2.4) lacks those two: oneDNN's own test asks for
    # AVX-512 alone, which lets the note pass over AVX-512 CPUs without BF16.
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def total_steps(config: Config, n_images: int, processes: int = 1) -> int:
    """`steps` if set, else `epochs` passes over the images (one step = one batch on each
    of the training processes)."""
    t = config.train
    if t.steps > 0:
        return t.steps
    if t.epochs > 0:
        return max(1, math.ceil(t.epochs * n_images / (t.batch_size * processes)))
    raise UserError("no training length: give --steps N or --epochs N")


class GAN:
    """A generator, a discriminator, their optimisers and one loss, with the two updates."""

    def __init__(self, config: Config, data: ImageBank, device: torch.device,
                 world: World | None = None, total_steps: int = 0) -> None:
        self.config = config
        self.total_steps = total_steps  # the run's length: train.lr_schedule's 100 %
        self.device = device
        self.world = world = world or World()
        self.data = data.to(device)
        t = config.train
        torch.manual_seed(t.seed)  # weights (the same on every rank)
        memory = torch.channels_last if t.channels_last else torch.contiguous_format
        self.G = build_generator(config).to(device, memory_format=memory)
        self.D = build_discriminator(config).to(device, memory_format=memory)
        # The networks as the updates call them: under DDP with several processes, so that
        # their gradients are averaged over the ranks. G and D stay the plain modules.
        self.G_train = wrap(self.G, world, device)
        self.D_train = wrap(self.D, world, device)
        if world.distributed:
            torch.manual_seed(t.seed + 7919 * world.rank)  # dropout and augmentation: per rank
        self.lr_scale = lr_scale(t.lr_scaling, world.size)
        # Fused Adam: one kernel for all parameters (+16 % steps/s on seed-002, BENCHMARKS.md).
        fused = device.type in ("cpu", "cuda")
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=t.g_lr, betas=tuple(t.g_betas),
                                      eps=t.adam_eps, fused=fused)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=t.d_lr, betas=tuple(t.d_betas),
                                      eps=t.adam_eps, fused=fused)
        self.loss = build_loss(t.loss)
        self.conditional = config.data.conditional
        # Conditional fakes ask for the digits the run trains on, uniformly.
        self.classes = label_classes(config.data.digits, device)
        self.background = -1.0 if config.data.value_range == "tanh" else 0.0
        self.G_ema = None
        if t.ema:
            self.G_ema = AveragedModel(self.G, multi_avg_fn=ema_with_warmup(t.ema),
                                       use_buffers=True)
        # Separate streams, so that changing one choice (e.g. the batch split) leaves the
        # other draws as they were.
        self.data_rng = torch.Generator(device).manual_seed(t.seed + 1)
        self.noise_rng = torch.Generator(device).manual_seed(t.seed + 2)
        self.step = 0
        self.d_updates = 0
        self.g_updates = 0
        self.epoch_order = torch.empty(0, dtype=torch.long, device=device)
        # Where the GAN's notes go: the console (rank 0) at once, and the run's log once a Loop
        # drives the GAN (it writes these early ones there and takes `say` over). A GAN no Loop
        # drives keeps every note here.
        self.early_notes: list[str] = []
        self.say: Callable[[str], None] = self._say_early
        self.step_graph = None
        if t.compile_step:
            reason = unsupported(config, device, world.size)
            if reason is None:
                self.step_graph = StepGraph(self)
            else:
                self.say(f"train.compile_step {reason}: the step runs op by op")
        if PRECISIONS[t.precision] and device.type == "cpu" and not cpu_has_bf16():
            self.say(f"train.precision={t.precision}: this CPU has no bfloat16 arithmetic (no "
                     "AVX512-BF16 or AMX), so bfloat16 is emulated and slower than float32 here: use "
                     "--precision fp32")

    def _say_early(self, text: str) -> None:
        self.early_notes.append(text)
        if self.world.main:
            print(f"mnistgan: {text}", file=sys.stderr)

    # -- inputs ------------------------------------------------------------------------

    # Every rank draws the whole global batch (n per rank) from the same seeded stream and
    # keeps its own slice: the ranks' shares are disjoint and together are exactly what one
    # process would draw for the global batch.

    def noise(self, n: int) -> torch.Tensor:
        world = self.world
        return sample_noise(self.config.noise, n * world.size, self.noise_rng, self.device)[world.share(n)]

    def labels(self, n: int) -> torch.Tensor | None:
        """Digits for n fakes of a conditional model (None for an unconditional one)."""
        if not self.conditional:
            return None
        return sample_labels(self.classes, n * self.world.size, self.noise_rng)[self.world.share(n)]

    def real_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """n training images and, for a conditional model, their digit labels."""
        n_all = n * self.world.size
        if self.config.data.sampling == "random":
            index = self.data.random_index(n_all, self.data_rng)
        else:
            if len(self.epoch_order) < n_all:
                self.epoch_order = self.data.epoch_index(self.data_rng)
            index, self.epoch_order = self.epoch_order[:n_all], self.epoch_order[n_all:]
        index = index[self.world.share(n)]
        return self.data.batch(index), self.data.labels[index] if self.conditional else None

    def generate_for_d(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Fakes for the discriminator step: no gradient flows back into G. With
        fakes = "predict" G runs in inference mode, exactly as Keras's generator.predict()."""
        predict = self.config.train.fakes == "predict"
        self.G.train(not predict)
        with torch.no_grad(), self.autocast("G"):
            fake = self.G(z, y).float()
        self.G.train()
        return fake

    # -- learning rates ----------------------------------------------------------------

    def learning_rate(self, base: float, updates: int) -> float:
        """The learning rate of an optimiser whose base rate is `base`, at its update number
        `updates` of this step: scaling, milestones, Keras decay and the schedule."""
        t = self.config.train
        drops = sum(self.step >= m for m in t.lr_milestones)
        lr = base * self.lr_scale * t.lr_gamma**drops / (1.0 + t.decay * updates)
        return lr * lr_factor(t.lr_schedule, self.step, self.total_steps)

    def _set_lr(self, opt: torch.optim.Optimizer, base: float, updates: int) -> None:
        for group in opt.param_groups:
            group["lr"] = self.learning_rate(base, updates)

    # -- the two updates -----------------------------------------------------------------

    def autocast(self, net: Literal["G", "D"]) -> torch.autocast:
        """bfloat16 autocast around a forward of G or D, as train.precision asks."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=net in PRECISIONS[self.config.train.precision])

    def judge(self, images: torch.Tensor, y: torch.Tensor | None,
              net: torch.nn.Module | None = None) -> torch.Tensor:
        """D's logits (float32) for images (of digits y), augmented and with instance noise on
        its input when configured: what D sees, in both steps. `net`: D as called (the
        DDP-wrapped D in D's own update)."""
        t = self.config.train
        if t.augment:
            images = augment(images, t.augment, self.background)
        if t.instance_noise:
            images = images + t.instance_noise * torch.randn_like(images)
        with self.autocast("D"):
            logits = (self.D if net is None else net)(images, y)
        return logits.float()

    def r1_penalty(self, real: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """R1 (Mescheder et al. 2018): gamma/2 * E |grad_x D(x)|^2 on real images."""
        real = real.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.judge(real, y).sum(), real, create_graph=True)
        return self.config.train.r1 / 2 * grad.square().sum(dim=(1, 2, 3)).mean()

    def update_discriminator(self, images: torch.Tensor, y: torch.Tensor | None,
                             target: float | torch.Tensor,
                             penalties: list[Callable[[], torch.Tensor]] = ()
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step of D on a batch (Keras: discriminator.train_on_batch)."""
        self.D.train()
        logits = self.judge(images, y, self.D_train)
        loss = self.loss.discriminator(logits, target)
        for penalty in penalties:
            loss = loss + penalty()
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self._set_lr(self.opt_d, self.config.train.d_lr, self.d_updates)
        self.opt_d.step()
        self.d_updates += 1
        return loss.detach(), logits.detach()

    def discriminator_step(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                                          torch.Tensor | None]:
        """Train D on real images (target 1, or 1 - smoothing) and fakes (target 0).
        Returns (statistics, the noise and labels the fakes came from, and with share_fakes
        the fakes still attached to G's graph, for the G step to reuse)."""
        t = self.config.train
        n = t.batch_size // 2 if t.d_batch == "half" else t.batch_size
        real_target = 1.0 - t.label_smoothing
        real, y_real = self.real_batch(n)
        z, y = self.noise(n), self.labels(n)
        shared = None
        if t.share_fakes:
            self.G.train()
            with self.autocast("G"):
                shared = self.G_train(z, y).float()
            fake = shared.detach()
        else:
            fake = self.generate_for_d(z, y)
        real_penalties, fake_penalties = [], []
        if t.r1:
            real_penalties.append(lambda: self.r1_penalty(real, y_real))
        if hasattr(self.loss, "penalty"):  # WGAN-GP: needs real and fake in one update
            fake_penalties.append(lambda: self.loss.penalty(
                lambda x: self.judge(x, y_real), real, fake, self.noise_rng))
        if t.d_update == "separate":
            loss_real, logits_real = self.update_discriminator(real, y_real, real_target,
                                                               real_penalties)
            loss_fake, logits_fake = self.update_discriminator(fake, y, 0.0, fake_penalties)
            d_loss = (loss_real + loss_fake) / 2
        else:
            targets = torch.cat([torch.full((n,), real_target, device=self.device),
                                 torch.zeros(n, device=self.device)])
            d_loss, logits = self.update_discriminator(
                torch.cat([real, fake]), None if y is None else torch.cat([y_real, y]), targets,
                real_penalties + fake_penalties)
            logits_real, logits_fake = logits[:n], logits[n:]
        p_real, p_fake = torch.sigmoid(logits_real), torch.sigmoid(logits_fake)
        stats = torch.stack([d_loss, p_real.mean(), p_fake.mean(),
                             (p_real > 0.5).float().mean(), (p_fake < 0.5).float().mean()])
        return stats, z, y, shared

    def generator_step(self, z: torch.Tensor, y: torch.Tensor | None,
                       fake: torch.Tensor | None = None) -> torch.Tensor:
        """Train G through the stacked model with "real" labels while D stays frozen: D gets
        no gradient and no optimiser step. D stays in training mode, as the Keras models of
        the tutorials' time did (its dropout and batch statistics stay on). `fake`: G(z, y)
        already computed (with its graph) by the D step."""
        self.G.train()
        self.D.train()
        self.D.requires_grad_(False)
        if fake is None:
            with self.autocast("G"):
                fake = self.G_train(z, y).float()
        t = self.config.train
        logits = self.judge(fake, y)
        if t.top_k < 1:  # the share kept falls as a linear learning rate does, from 1 to top_k
            remaining = lr_factor("linear", self.step, self.total_steps)
            logits = top_k(logits, t.top_k + (1.0 - t.top_k) * remaining)
        loss = self.loss.generator(logits)
        if t.mode_seeking:
            loss = loss + mode_seeking(fake, z, t.mode_seeking)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self._set_lr(self.opt_g, t.g_lr, self.g_updates)
        self.opt_g.step()
        if self.G_ema is not None:
            self.G_ema.update_parameters(self.G)
        self.D.requires_grad_(True)
        self.g_updates += 1
        return loss.detach()

    def train_step(self) -> torch.Tensor:
        """One iteration: D step(s), then one G step. Returns the STATS row (on the device)."""
        if self.step_graph is not None:
            return self.step_graph()
        t = self.config.train
        for _ in range(t.d_steps):
            d_stats, z, y, fake = self.discriminator_step()
        if t.g_noise != "reuse":
            z, y, fake = self.noise(t.batch_size), self.labels(t.batch_size), None
            if t.mode_seeking and y is not None:
                y = paired(y)
        g_loss = self.generator_step(z, y, fake)
        self.step += 1
        return torch.cat([d_stats[:1], g_loss.view(1), d_stats[1:]])

    def pretrain_discriminator(self) -> float:
        """Text 004: fit D for one epoch on N real and N generated images, shuffled, before
        the GAN loop. Returns D's accuracy on that set afterwards."""
        t = self.config.train
        n = t.pretrain_images
        real, y_real = self.real_batch(n)
        y_fake = self.labels(n)
        fake = torch.cat([self.generate_for_d(self.noise(len(c)), None if y_fake is None else y_fake[c])
                          for c in torch.arange(n, device=self.device).split(t.pretrain_batch)])
        images = torch.cat([real, fake])
        labels = None if y_real is None else torch.cat([y_real, y_fake])
        targets = torch.cat([torch.full((n,), 1.0 - t.label_smoothing), torch.zeros(n)])
        targets = targets.to(self.device)
        order = torch.randperm(2 * n, generator=self.data_rng, device=self.device)
        def pick(index: torch.Tensor) -> torch.Tensor | None:
            return None if labels is None else labels[index]

        for batch in order.split(t.pretrain_batch):
            self.update_discriminator(images[batch], pick(batch), targets[batch])
        self.D.eval()  # measure without dropout, as Keras's evaluate() does
        with torch.no_grad():
            logits = torch.cat([self.D(images[b], pick(b)) for b in order.split(SAMPLE_CHUNK)])
            correct = (logits > 0) == (targets[order] > 0.5)
        self.D.train()
        return correct.float().mean().item()

    # -- the training state ---------------------------------------------------------------

    def networks(self) -> dict[str, torch.nn.Module]:
        """The networks by the names their states are saved under."""
        return {"G": self.G, "D": self.D} | ({"G_ema": self.G_ema} if self.G_ema is not None else {})

    def state_dict(self) -> dict[str, Any]:
        """Everything training changes: both networks (and G's average), both optimisers, the
        update counters, the epoch's remaining order and every random stream, including each
        rank's own global torch stream (dropout and augmentation masks differ per rank). A
        collective under torchrun: every rank calls it at the same step."""
        rng: dict[str, Any] = {"data": self.data_rng.get_state(), "noise": self.noise_rng.get_state(),
                               "torch": gather(self.world, torch.get_rng_state())}
        if self.device.type == "cuda":
            rng["cuda"] = gather(self.world, torch.cuda.get_rng_state(self.device))
        state = {name: net.state_dict() for name, net in self.networks().items()}
        state |= {"opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                  "counters": {"step": self.step, "d_updates": self.d_updates,
                               "g_updates": self.g_updates},
                  "epoch_order": self.epoch_order, "rng": rng}
        if self.world.distributed:
            # Buffers drift apart between ranks (batch-norm statistics of the fakes' forward
            # passes, spectral-norm vectors): each rank's own, beside rank 0's above.
            state["rank_buffers"] = {name: {key: gather(self.world, buffer)
                                            for key, buffer in net.named_buffers()}
                                     for name, net in self.networks().items()}
        return state

    def load_state_dict(self, state: dict[str, Any], source: str) -> None:
        """Put back a `state_dict()` of a GAN built from the same config, on as many ranks."""
        try:
            for name, net in self.networks().items():
                load_state(net, state[name], source)
                with torch.no_grad():
                    for key, buffer in net.named_buffers():
                        if name in state.get("rank_buffers", {}):
                            buffer.copy_(own(self.world, state["rank_buffers"][name][key]))
            for opt, name in ((self.opt_g, "opt_g"), (self.opt_d, "opt_d")):
                opt.load_state_dict(state[name])
                match_layouts(opt)
            counters = state["counters"]
            self.step, self.d_updates, self.g_updates = (
                counters["step"], counters["d_updates"], counters["g_updates"])
            self.epoch_order = state["epoch_order"].to(self.device)
            rng = state["rng"]
            self.data_rng.set_state(rng["data"])
            self.noise_rng.set_state(rng["noise"])
            torch.set_rng_state(own(self.world, rng["torch"]))
            if self.device.type == "cuda" and "cuda" in rng:
                torch.cuda.set_rng_state(own(self.world, rng["cuda"]), self.device)
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise UserError(f"checkpoint {source} does not fit this run ({exc}): "
                            "resume with the run folder it was written in") from None

    def sampler(self) -> torch.nn.Module:
        """The generator that makes every image a user sees: G's moving average if kept, with
        its standing batch-norm statistics where the config asks for them (then a copy, made
        anew on each call: a few forward passes)."""
        return standing_statistics(self.G if self.G_ema is None else self.G_ema.module,
                                   self.config)

    def sample(self, z: torch.Tensor, y: torch.Tensor | None = None,
               net: torch.nn.Module | None = None) -> torch.Tensor:
        """Images for looking at: G in inference mode, as Keras's predict(). `net`: the
        sampler already made, where the caller also saves it (making one costs forward passes)."""
        net = self.sampler() if net is None else net
        net.eval()
        with torch.inference_mode():
            images = torch.cat([net(z[i:i + SAMPLE_CHUNK], None if y is None else y[i:i + SAMPLE_CHUNK])
                                for i in range(0, len(z), SAMPLE_CHUNK)])
        net.train()
        return images


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    seconds: float
    images_per_second: float
    last: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)


def train(
    config: Config,
    out: str | Path | None = None,
    data_dir: str | Path | None = None,
    progress: bool = True,
    tensorboard: bool = False,
) -> TrainResult:
    """Train `config` and write a run folder (default: runs/NAME-TIMESTAMP). The Python
    equivalent of `mnistgan train`."""
    if out is not None:
        RunFolder.check_new(out)
    world, device = _join(config)
    data, steps = _load_data(config, data_dir, world)
    config.train.world_size = world.size
    run = on_rank0(world, lambda: RunFolder.create(out or default_run_path(config), config, tensorboard))
    with _released_on_error(run):
        t = config.train
        if run is not None:
            batch = f"batch {t.batch_size}" + (f" x {world.size} processes" if world.distributed else "")
            run.note(f"preset {config.name}: {steps} steps at {batch} on {len(data)} images, device "
                     f"{device}, {torch.get_num_threads()} threads, seed {t.seed}")
        gan = GAN(config, data, device, world, steps)
        loop = Loop(gan, run, steps, progress)
    return loop.run()


def on_rank0(world: World, make: Callable[[], RunFolder]) -> RunFolder | None:
    """`make()` on rank 0 only (the rank that writes files); its failure stops every rank, so
    that no rank waits for the others at the first collective."""
    made, failed = None, None
    if world.main:
        try:
            made = make()
        except Exception as exc:  # raised below, once the other ranks know
            failed = exc
    if any_rank(world, failed is not None)[0]:
        raise failed or UserError("rank 0 could not open the run folder (its error is above)")
    return made


@contextmanager
def _released_on_error(run: RunFolder | None) -> Iterator[None]:
    """Give the run folder's lock back if setting up the run fails (Loop.run gives it back
    when the run ends), so that the same process can try again."""
    try:
        yield
    except BaseException:
        if run is not None:
            run.release()
        raise


def _set_up_process(config: Config) -> None:
    """Threads and memory reuse: process-wide, so set once, here, for whatever steps the GAN."""
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    if config.train.reuse_memory:
        keep_freed_memory()


def _join(config: Config) -> tuple[World, torch.device]:
    """The process set up, the device and, under torchrun, the process group."""
    _set_up_process(config)
    return join(resolve_device(config.train.device))


def bare_gan(config: Config, data_dir: str | Path | None = None) -> GAN:
    """The GAN that `mnistgan train` steps, on the CPU, without its run folder and loop: the
    process set up as train sets it up (a step timed without the freed-memory setting pays
    page faults that the command line does not), and the training images loaded. What the
    benchmarks time."""
    _set_up_process(config)
    return GAN(config, _training_images(config, data_dir), torch.device("cpu"))


def _training_images(config: Config, data_dir: str | Path | None) -> ImageBank:
    """The training images, recording in the config the folder they came from."""
    folder = local_data_dir(data_dir, config.data.dir)
    data = ImageBank.load(config.data.dataset, "train", folder, config.data.digits,
                          config.data.value_range)
    config.data.dir = folder or ""
    if config.data.conditional and not config.data.digit_frequencies:
        config.data.digit_frequencies = data.shares(label_classes(config.data.digits).tolist())
    return data


def _load_data(config: Config, data_dir: str | Path | None, world: World) -> tuple[ImageBank, int]:
    """The training images and the run's length in steps."""
    data = _training_images(config, data_dir)
    return data, total_steps(config, len(data), world.size)


def resume(
    run_dir: str | Path,
    steps: int | None = None,
    epochs: float | None = None,
    data_dir: str | Path | None = None,
    progress: bool = True,
    tensorboard: bool = False,
) -> TrainResult:
    """Continue a run from its newest checkpoint. `steps`/`epochs` give the run's new total
    (not a number of extra steps), so a resumed run stops where an uninterrupted one would.
    The Python equivalent of `mnistgan train --resume RUN`."""
    folder = RunFolder.open(run_dir, tensorboard)
    config = config_from_json(folder.config.read_text(encoding="utf-8"), str(folder.config))
    if steps is not None or epochs is not None:
        config.train.steps = steps or 0
        config.train.epochs = epochs or 0.0
    world, device = _join(config)
    if world.size != config.train.world_size:
        n = config.train.world_size
        raise UserError(f"{folder.path} was trained by {n} process{'es' if n > 1 else ''}, this is "
                        f"{world.size}: resume with the same number (torchrun --nproc_per_node={n}"
                        f" ...{' or no torchrun' if n == 1 else ''}) so the batches stay the same")

    def claimed() -> RunFolder:
        folder.lock()
        return folder

    # Claimed before the checkpoints are read: another writer would be deleting old ones.
    run = on_rank0(world, claimed)
    with _released_on_error(run):
        checkpoints = list_checkpoints(folder.checkpoints)
        if not checkpoints:
            raise UserError(f"{folder.path} has no checkpoint to resume from (it stopped before its "
                            "first one): start it again with mnistgan train")
        step = checkpoint_step(checkpoints[-1])
        state = read_checkpoint(checkpoints[-1])
        data, total = _load_data(config, data_dir, world)
        if step >= total:
            raise UserError(f"{folder.path} is already at step {step} of {total}: "
                            f"give a larger total, e.g. --steps {2 * step}")
        gan = GAN(config, data, device, world, total)
        gan.load_state_dict(state["gan"], str(checkpoints[-1]))
        if run is not None:
            run.rewind(gan.step, config)
            run.note(f"resumed from {checkpoints[-1].name}: step {gan.step} of {total}")
        loop = Loop(gan, run, total, progress, state["loop"])
    return loop.run()


class Loop:
    """Drives a GAN for a number of steps and keeps the run folder up to date: metric rows,
    sample grids, health findings, and the weights at the end (or the last good ones)."""

    def __init__(self, gan: GAN, run: RunFolder | None, steps: int, progress: bool,
                 resumed: dict[str, Any] | None = None) -> None:
        # Ranks other than 0 of a distributed run train in step with rank 0 but write nothing.
        self.main = run is not None
        self.gan, self.folder, self.steps = gan, run or SilentFolder(), steps
        gan.say = self.say
        for text in gan.early_notes:  # already on the console
            self.folder.note(text)
        # The loop's own state, carried across a resume: the sums of the metric rows not yet
        # logged, the best FID so far and the wall time of earlier sessions.
        resumed = resumed or {}
        sums = resumed.get("metric_sums", [torch.zeros(len(STATS))])
        self.metric_sums = (own(gan.world, sums) if isinstance(sums, list) else sums).to(gan.device)
        self.since_log = int(resumed.get("since_log", 0))
        self.best_fid: float | None = resumed.get("best_fid")
        self.wall_before = float(resumed.get("wall_s", 0.0))
        self.signal: int | None = None
        config = gan.config
        t = config.train
        self.value_range = config.data.value_range
        grid_rng = torch.Generator(gan.device).manual_seed(t.seed + 3)
        self.grid_z = sample_noise(config.noise, t.grid_size, grid_rng, gan.device)
        self.nrow = math.ceil(math.sqrt(t.grid_size))
        # A conditional model's grid shows one digit per row.
        self.grid_y = class_rows(gan.classes, t.grid_size, self.nrow) if gan.conditional else None
        order = torch.randperm(len(gan.data), generator=torch.Generator().manual_seed(t.seed))
        self.real_grid = gan.data.batch(order[: min(t.grid_size, len(gan.data))].to(gan.device))
        self.health = HealthMonitor()
        self.findings: list[Finding] = []
        self.good_state = self.weights()
        # Step, rate, ETA and the two losses fit 80 columns; the full row is in metrics.jsonl.
        self.bar = tqdm(total=steps, initial=gan.step, disable=not (progress and self.main), unit="it",
                        dynamic_ncols=True, desc=config.name[:12],
                        bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                   "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")

    def sample_grid(self, net: torch.nn.Module | None = None) -> tuple[np.ndarray, float]:
        """Save the fixed-noise grid (drawn by `net`, else the GAN's sampler); returns it and
        the samples' diversity."""
        if not self.main:
            return np.zeros((0, 28, 28), np.uint8), math.nan
        fake = self.gan.sample(self.grid_z, self.grid_y, net)
        images = to_uint8(fake.cpu(), self.value_range).squeeze(1).numpy()
        self.folder.save_grid(self.gan.step, images, self.nrow)
        return images, diversity(fake, self.real_grid)

    def weights(self) -> dict[str, dict[str, torch.Tensor]]:
        return {name: _copy(net) for name, net in self.gan.networks().items()}

    def say(self, text: str) -> None:
        self.folder.note(text)
        if self.main:  # rank 0 speaks for the run: it writes the log and has the diversity and FID
            self.bar.write(f"mnistgan: {text}")

    def run(self) -> TrainResult:
        try:
            with self.signals():
                return self._run()
        finally:
            self.folder.release()

    def _run(self) -> TrainResult:
        gan, t = self.gan, self.gan.config.train
        t0 = time.perf_counter() - self.wall_before  # the time budget counts D pre-training too
        if gan.step == 0:
            self.sample_grid()
            if t.pretrain_images:
                acc = gan.pretrain_discriminator()
                self.folder.note(f"pre-trained D on {t.pretrain_images} real + "
                                 f"{t.pretrain_images} generated images: accuracy {acc:.3f}")
        sums, since_log = self.metric_sums, self.since_log
        t_log = time.perf_counter()
        start_step = gan.step
        row: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        while gan.step < self.steps:
            sums += gan.train_step()
            since_log += 1
            # Stop decisions are shared: all ranks must take the same number of steps.
            out_of_time, signalled = any_rank(
                gan.world, bool(t.max_minutes) and time.perf_counter() - t0 >= 60 * t.max_minutes,
                self.signal is not None)
            if out_of_time:
                self.folder.note(f"time budget of {t.max_minutes:g} min reached at step {gan.step}")
                self.steps = gan.step  # this step is the last: log, checkpoint, finish
            if gan.step % t.sample_every == 0 and gan.step != self.steps and self.main:
                extra["diversity"] = round(self.sample_grid()[1], 4)
            if t.eval_every and (gan.step % t.eval_every == 0 or gan.step == self.steps) and self.main:
                extra |= self.evaluate()
            if gan.step % t.log_every == 0 or gan.step == self.steps:
                now = time.perf_counter()
                row = self.log_row(sums / since_log, since_log, now - t_log, now - t0, extra)
                if "diverged" in self.check_health(row):
                    return self.stop_diverged()
                if _finite(gan.G) and _finite(gan.D):
                    self.good_state = self.weights()
                self.bar.update(since_log)
                sums.zero_()
                extra = {}
                since_log, t_log = 0, now
            if gan.step % t.checkpoint_every == 0 or gan.step == self.steps:
                self.checkpoint(sums, since_log, time.perf_counter() - t0)
            if signalled:
                return self.stop_interrupted(sums, since_log, time.perf_counter() - t0)
        self.bar.close()
        seconds = time.perf_counter() - t0 - self.wall_before
        self.finish()
        ips = (self.steps - start_step) * t.batch_size * gan.world.size / max(seconds, 1e-9)
        self.folder.note(f"finished {self.steps} steps; this session {seconds:.1f} s "
                         f"({ips:.0f} images/s)")
        return TrainResult(self.folder.path, self.steps, seconds, ips, row, self.findings)

    def checkpoint(self, sums: torch.Tensor, since_log: int, wall: float) -> None:
        """Every rank takes part (the state gathers each rank's random stream); rank 0 writes."""
        gan = self.gan
        state = {"gan": gan.state_dict(),
                 "loop": {"metric_sums": gather(gan.world, sums), "since_log": since_log,
                          "best_fid": self.best_fid,
                          "wall_s": wall},
                 "config": gan.config.to_dict()}
        if self.main:
            save_checkpoint(state, self.folder.checkpoints, gan.step, gan.config.train.keep_checkpoints)

    def evaluate(self) -> dict[str, Any]:
        """Sample-quality metrics of `eval_samples` images from one fixed noise batch; keeps
        the generator with the best FID so far."""
        from .metrics import evaluate_images

        gan, config = self.gan, self.gan.config
        t = config.train
        draw = torch.Generator(gan.device).manual_seed(t.seed + 4)
        z = sample_noise(config.noise, t.eval_samples, draw, gan.device)
        # Digits drawn at random, as a user's samples are (not in turn).
        y = (sample_labels(gan.classes, t.eval_samples, draw, config.data.digit_frequencies)
             if gan.conditional else None)
        sampler = gan.sampler()
        images = gan.sample(z, y, sampler)
        u8 = to_uint8(images.cpu(), config.data.value_range).squeeze(1)
        scores = evaluate_images(u8, digits=config.data.digits, data_dir=config.data.dir or None,
                                 labels=None if y is None else y.cpu(), dataset=config.data.dataset)
        fid = scores["fid"]
        if self.best_fid is None or fid < self.best_fid:
            self.best_fid = fid
            save_weights(sampler, self.folder.generator_best, config, "generator", gan.step)
            self.folder.note(f"best FID so far at step {gan.step}: {fid:.3f}")
        return {k: round(v, 5) for k, v in scores.items()}

    @contextmanager
    def signals(self) -> Iterator[None]:
        """First Ctrl-C or SIGTERM: finish the step, checkpoint, exit. A second: stop at once
        (checkpoint writes are atomic, so the last one stays whole)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        first_at = 0.0

        def handle(signum: int, frame: Any) -> None:
            nonlocal first_at
            # Under torchrun one Ctrl-C arrives twice (from the terminal and from torchrun,
            # a moment apart): only a second press a second later means "quit now".
            if self.signal is not None:
                if time.monotonic() - first_at > 1.0:
                    raise KeyboardInterrupt
                return
            self.signal, first_at = signum, time.monotonic()
            if self.main:
                self.bar.write("mnistgan: stopping after this step (press Ctrl-C again to quit now)")

        previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def stop_interrupted(self, sums: torch.Tensor, since_log: int, wall: float) -> TrainResult:
        self.bar.close()
        if self.gan.step % self.gan.config.train.checkpoint_every:
            self.checkpoint(sums, since_log, wall)
        self.finish()
        signum = self.signal or signal.SIGTERM  # another rank was signalled
        name = signal.Signals(signum).name
        self.folder.note(f"stopped by {name} at step {self.gan.step}")
        raise Interrupted(f"stopped by {name} at step {self.gan.step} of {self.steps}; "
                          f"continue with: mnistgan train --resume {self.folder.path}",
                          128 + signum)

    def log_row(self, means: torch.Tensor, steps: int, interval: float, wall: float,
                extra: dict[str, Any]) -> dict[str, Any]:
        gan, t = self.gan, self.gan.config.train
        values = mean_over_ranks(gan.world, means).tolist()  # the one host sync per log interval
        images = t.batch_size * gan.world.size  # per step, over all processes
        row = {"step": gan.step, "epoch": round(gan.step * images / len(gan.data), 4),
               **{k: round(v, 6) if math.isfinite(v) else v
                  for k, v in zip(STATS, values, strict=True)},
               "d_lr": gan.opt_d.param_groups[0]["lr"], "g_lr": gan.opt_g.param_groups[0]["lr"],
               "images_per_s": round(steps * images / interval, 1),
               "wall_s": round(wall, 3), **extra}
        self.folder.log_metrics(row)
        self.bar.set_postfix_str(f"D {row['d_loss']:.3f} G {row['g_loss']:.3f}", refresh=False)
        return row

    def check_health(self, row: dict[str, Any]) -> set[str]:
        found = self.health.update(row)
        for finding in found:
            self.findings.append(finding)
            self.say(str(finding))
        return {f.code for f in found}

    def stop_diverged(self) -> TrainResult:
        """Put back the last finite weights, save them and stop with a clear message."""
        gan = self.gan
        self.bar.close()
        gan.G.load_state_dict(self.good_state["G"])
        gan.D.load_state_dict(self.good_state["D"])
        if gan.G_ema is not None:
            gan.G_ema.load_state_dict(self.good_state["G_ema"])
        self.finish()
        raise UserError(
            f"training diverged at step {gan.step} (loss is NaN or Inf); the last good weights "
            f"are in {self.folder.path}: lower the learning rates or add label smoothing")

    def finish(self) -> None:
        if not self.main:
            return
        gan, config = self.gan, self.gan.config
        sampler = gan.sampler()
        fake, _ = self.sample_grid(sampler)
        save_weights(sampler, self.folder.generator, config, "generator", gan.step)
        save_weights(gan.D, self.folder.discriminator, config, "discriminator", gan.step)
        real = to_uint8(self.real_grid.cpu(), self.value_range).squeeze(1).numpy()
        self.folder.finish(real, fake, title=config.name)


def class_rows(classes: torch.Tensor, n: int, per_row: int) -> torch.Tensor:
    """Labels for n images laid out `per_row` to a row, cycling through `classes` row by row."""
    return classes[(torch.arange(n, device=classes.device) // per_row) % len(classes)]


def _copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _finite(module: torch.nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in module.parameters())
