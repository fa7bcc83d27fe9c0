"""The whole training step as one compiled graph (`train.compile_step`).

`GAN.train_step` runs the step op by op: a few hundred small PyTorch calls, each with its
dispatch cost, and three optimiser steps that each read and write every weight. For the MLP
presets that overhead is most of the step (BENCHMARKS.md, "Where seed-001's step goes"). Here
the same step is written as a function of tensors (the weights, buffers and Adam moments are
its inputs and are updated in place; gradients come from `torch.autograd.grad`; Adam is tensor
arithmetic), traced once with `make_fx` (autograd included) and compiled by inductor into one
graph whose elementwise work is fused into a few loops around oneDNN's products.

When the step cannot be captured (a config it does not cover, a GPU, several processes, no C++
compiler for inductor), the run says why in one line and takes the eager step: the option is a
speed-up, never a reason for a run to fail.

What stays on the host: the random draws (the same seeded streams in the same order as the
eager step, so a run's batches and noise do not depend on this choice), the learning rates and
Adam's bias corrections (numbers, passed in as one small tensor), the update counters and G's
moving average. The optimisers' own state tensors are the ones updated, so checkpoints, resuming
and switching this option between runs work as with the eager step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch.func import functional_call
from torch.fx.experimental.proxy_tensor import make_fx

from .models.dense import capturing

if TYPE_CHECKING:
    from .config import Config
    from .train import GAN


def unsupported(config: Config, device: torch.device, processes: int) -> str | None:
    """Why `train.compile_step` cannot capture this run's step (None when it can)."""
    t = config.train
    if device.type != "cpu" or processes > 1:
        return f"runs on the CPU in one process only (here: {device.type}, {processes} processes)"
    if config.generator.arch != "mlp" or config.discriminator.arch != "mlp":
        return "runs fully connected networks only (generator.arch, discriminator.arch = 'mlp')"
    if t.loss == "wgan-gp" or t.r1:
        return "has no gradient penalties (train.loss = 'wgan-gp', train.r1)"
    if t.mode_seeking:
        return "has no mode-seeking term (train.mode_seeking)"
    if t.top_k < 1:
        return "has no top-k G update (train.top_k)"
    if t.augment or t.instance_noise:
        return "draws no random numbers inside the step (train.augment, train.instance_noise)"
    if config.generator.dropout or config.discriminator.dropout:
        return "draws no random numbers inside the step (generator.dropout, discriminator.dropout)"
    return None


class StepGraph:
    """`GAN.train_step` for one GAN, captured and compiled on the first call."""

    def __init__(self, gan: GAN) -> None:
        self.gan = gan
        t = gan.config.train
        self.d_updates_per_step = t.d_steps * (2 if t.d_update == "separate" else 1)
        self.compiled: Callable[..., torch.Tensor] | None = None
        # The graph's state inputs, kept between steps: weights and buffers are updated in place
        # (a checkpoint load copies into them too), only the optimisers' state dicts get replaced.
        self._inputs_of: tuple[object, object] | None = None
        self._state_inputs: list[torch.Tensor] = []

    # -- the state the graph updates in place ------------------------------------------------

    def _adam_state(self, opt: torch.optim.Adam) -> list[torch.Tensor]:
        """Each parameter's step count and moments, created as torch's (fused) Adam does."""
        state = []
        for p in opt.param_groups[0]["params"]:
            s = opt.state[p]
            if not s:
                s["step"] = torch.tensor(0.0)
                s["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                s["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state += [s["step"], s["exp_avg"], s["exp_avg_sq"]]
        return state

    def _state(self) -> list[torch.Tensor]:
        gan = self.gan
        owners = (gan.opt_g.state, gan.opt_d.state)
        if self._inputs_of is None or any(a is not b for a, b in zip(owners, self._inputs_of, strict=True)):
            weights = [p.detach() for p in (*gan.G.parameters(), *gan.D.parameters())]
            self._state_inputs = (weights + list(gan.G.buffers()) + list(gan.D.buffers())
                                  + self._adam_state(gan.opt_g) + self._adam_state(gan.opt_d))
            self._inputs_of = owners
        return self._state_inputs

    def _scales(self) -> torch.Tensor:
        """Per update of this step, D's first: [lr / (1 - beta1^n), sqrt(1 - beta2^n)]."""
        gan, t = self.gan, self.gan.config.train
        rows = []
        for j in range(self.d_updates_per_step):
            n = gan.d_updates + j + 1
            rows.append(_adam_scales(gan.learning_rate(t.d_lr, gan.d_updates + j), t.d_betas, n))
        rows.append(_adam_scales(gan.learning_rate(t.g_lr, gan.g_updates), t.g_betas, gan.g_updates + 1))
        return torch.tensor(rows, dtype=torch.float32)

    # -- the step --------------------------------------------------------------------------------

    def _inputs(self) -> list[torch.Tensor | None]:
        """The step's random draws, in the eager step's order: per D step a real batch, its
        labels, noise and digits; then the G step's noise and digits unless it reuses them."""
        gan, t = self.gan, self.gan.config.train
        n = t.batch_size // 2 if t.d_batch == "half" else t.batch_size
        draws: list[torch.Tensor | None] = []
        for _ in range(t.d_steps):
            real, y_real = gan.real_batch(n)
            draws += [real, y_real, gan.noise(n), gan.labels(n)]
        if t.g_noise != "reuse":
            draws += [gan.noise(t.batch_size), gan.labels(t.batch_size)]
        return draws

    def __call__(self) -> torch.Tensor:
        """One iteration, as `GAN.train_step`: returns the STATS row."""
        if self.compiled is None:
            return self._compile_and_run()
        state, scales, draws = self._state(), self._scales(), self._inputs()
        return self._counted(self.compiled(*state, scales, *_tensors(draws)))

    def _counted(self, row: torch.Tensor) -> torch.Tensor:
        """The host's share of a step: the update counters and G's moving average."""
        gan = self.gan
        gan.d_updates += self.d_updates_per_step
        gan.g_updates += 1
        if gan.G_ema is not None:
            gan.G_ema.update_parameters(gan.G)
        gan.step += 1
        return row

    def _compile_and_run(self) -> torch.Tensor:
        """The first step: trace, compile and run it; if compiling fails (it happens before the
        graph first runs, so the state is as it was), say so and let the eager step take over,
        from the same draws."""
        gan = self.gan
        streams = (gan.data_rng.get_state(), gan.noise_rng.get_state(), gan.epoch_order)
        state, scales, draws = self._state(), self._scales(), self._inputs()
        try:
            self.compiled = self._compile(state, scales, draws)
            row = self.compiled(*state, scales, *_tensors(draws))
        except Exception as exc:  # noqa: BLE001 - whatever the compiler's failure, the eager step is exact
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            gan.say(f"train.compile_step could not compile the step ({reason[:200]}); it runs op by op")
            gan.step_graph = None
            gan.data_rng.set_state(streams[0])
            gan.noise_rng.set_state(streams[1])
            gan.epoch_order = streams[2]
            return gan.train_step()
        return self._counted(row)

    def _compile(self, state: Sequence[torch.Tensor], scales: torch.Tensor,
                 draws: Sequence[torch.Tensor | None]) -> Callable[..., torch.Tensor]:
        slots = [d is not None for d in draws]
        n_state = len(state)

        def step(*args: torch.Tensor) -> torch.Tensor:
            values = iter(args[n_state + 1:])
            return self._math(list(args[:n_state]), args[n_state],
                              [next(values) if slot else None for slot in slots])

        inputs = [*state, scales, *_tensors(draws)]
        with capturing(), torch.no_grad():
            graph = make_fx(step, tracing_mode="fake")(*inputs)
        # Inductor straight on the traced graph, not torch.compile: Dynamo would trace it a
        # second time and check ~100 guards on every call, 4-12 % of the MLP presets' step
        # (BENCHMARKS.md). The graph's inputs keep their shapes and strides between steps, and
        # inductor's own size and stride checks on them stay on. With the products lowered to
        # oneDNN's kernel, nothing in the graph calls back into Python, so its wrapper can be
        # C++ too: another 1-7 % of the MLP presets' step (BENCHMARKS.md).
        import torch._inductor as inductor

        _lower_products_to_onednn()
        # Inductor's cache keys do not see a lowering registered from outside: the tag keeps a
        # graph compiled without ours (an older mnistgan) from being reused.
        tag = f"{torch.compiler.config.cache_key_tag}|mnistgan: products lowered to oneDNN"
        with inductor.config.patch(cpp_wrapper=True), torch.compiler.config.patch(cache_key_tag=tag):
            return inductor.compile(graph, inputs)

    def _math(self, state: list[torch.Tensor], scales: torch.Tensor,
              draws: list[torch.Tensor | None]) -> torch.Tensor:
        """The step's arithmetic on explicit tensors, traced once: GAN.discriminator_step and
        GAN.generator_step, update for update."""
        gan, t = self.gan, self.gan.config.train
        G, D = gan.G, gan.D
        g_keys = [k for k, _ in G.named_parameters()]
        d_keys = [k for k, _ in D.named_parameters()]
        g_buffers = dict(G.named_buffers())
        d_buffers = dict(D.named_buffers())
        sizes = [len(g_keys), len(d_keys), len(g_buffers), len(d_buffers)]
        g_params, d_params, g_bufs, d_bufs = _split(state, sizes)
        rest = state[sum(sizes):]
        g_moments, d_moments = rest[:3 * len(g_keys)], rest[3 * len(g_keys):]
        g_named = dict(zip(g_buffers, g_bufs, strict=True))
        d_named = dict(zip(d_buffers, d_bufs, strict=True))

        def run_g(params: list[torch.Tensor], z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
            with gan.autocast("G"):  # train.precision: traced as explicit casts
                return functional_call(G, dict(zip(g_keys, params, strict=True)) | g_named, (z, y)).float()

        def run_d(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
            with gan.autocast("D"):
                return functional_call(D, dict(zip(d_keys, params, strict=True)) | d_named, (x, y)).float()

        updates = iter(range(self.d_updates_per_step))

        def update_d(images: torch.Tensor, y: torch.Tensor | None,
                     target: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            D.train()
            live = [p.detach().requires_grad_() for p in d_params]
            with torch.enable_grad():
                logits = run_d(live, images, y)
                loss = gan.loss.discriminator(logits, target)
                grads = torch.autograd.grad(loss, live)
            _adam(d_params, grads, d_moments, scales[next(updates)], t.d_betas, t.adam_eps)
            return loss.detach(), logits.detach()

        g_live = [p.detach().requires_grad_() for p in g_params]
        n = t.batch_size // 2 if t.d_batch == "half" else t.batch_size
        real_target = 1.0 - t.label_smoothing
        for i in range(t.d_steps):
            real, y_real, z, y = draws[4 * i:4 * i + 4]
            shared = None
            if t.share_fakes:
                G.train()
                with torch.enable_grad():
                    shared = run_g(g_live, z, y)
                fake = shared.detach()
            else:
                G.train(t.fakes != "predict")
                fake = run_g(g_params, z, y)
                G.train()
            if t.d_update == "separate":
                loss_real, logits_real = update_d(real, y_real, real_target)
                loss_fake, logits_fake = update_d(fake, y, 0.0)
                d_loss = (loss_real + loss_fake) / 2
            else:
                targets = torch.cat([torch.full((n,), real_target), torch.zeros(n)])
                d_loss, logits = update_d(torch.cat([real, fake]),
                                          None if y is None else torch.cat([y_real, y]), targets)
                logits_real, logits_fake = logits[:n], logits[n:]
        if t.g_noise != "reuse":
            z, y = draws[4 * t.d_steps:]
            shared = None
        G.train()
        D.train()
        with torch.enable_grad():
            fake = run_g(g_live, z, y) if shared is None else shared
            g_loss = gan.loss.generator(run_d(d_params, fake, y))
            grads = torch.autograd.grad(g_loss, g_live)
        _adam(g_params, grads, g_moments, scales[-1], t.g_betas, t.adam_eps)
        p_real, p_fake = torch.sigmoid(logits_real), torch.sigmoid(logits_fake)
        return torch.stack([d_loss, g_loss.detach(), p_real.mean(), p_fake.mean(),
                            (p_real > 0.5).float().mean(), (p_fake < 0.5).float().mean()])


def _lower_products_to_onednn() -> None:
    """Have inductor call oneDNN's linear kernel where the graph has our product operator
    (models/dense.py), instead of our operator's Python body: inductor's own lowering of that
    kernel takes only frozen (constant) weights, ours are the graph's inputs. Once a process."""
    from torch._inductor import lowering

    if not hasattr(torch.ops.mnistgan, "onednn_linear"):  # no oneDNN: the graph has no such op
        return
    ours = torch.ops.mnistgan.onednn_linear.default
    if ours in lowering.lowerings:
        return
    onednn = lowering.fallback_handler(torch.ops.mkldnn._linear_pointwise.default, add_to_fallback_set=False)

    @lowering.register_lowering(ours, type_promotion_kind=None)
    def _(x: object, weight: object, bias: object = None) -> object:
        return onednn(x, weight, bias, "none", [], "")


def _tensors(draws: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
    """The draws a graph takes: labels are None for an unconditional model."""
    return [d for d in draws if d is not None]


def _split(values: list[torch.Tensor], sizes: list[int]) -> list[list[torch.Tensor]]:
    parts, start = [], 0
    for size in sizes:
        parts.append(values[start:start + size])
        start += size
    return parts


def _adam_scales(lr: float, betas: Sequence[float], n: int) -> list[float]:
    return [lr / (1 - betas[0] ** n), (1 - betas[1] ** n) ** 0.5]


def _adam(params: list[torch.Tensor], grads: Sequence[torch.Tensor], moments: list[torch.Tensor],
          scales: torch.Tensor, betas: Sequence[float], eps: float) -> None:
    """torch.optim.Adam's update as its fused CPU kernel computes it, in place, with the bias
    corrections in `scales` (computed on the host: no per-element powers of the step count).
    `moments`: per parameter its step count, first and second moment."""
    beta1, beta2 = betas
    for p, g, n, m, v in zip(params, grads, moments[0::3], moments[1::3], moments[2::3], strict=True):
        n.add_(1)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        p.sub_(scales[0] * m / (v.sqrt() / scales[1] + eps))
