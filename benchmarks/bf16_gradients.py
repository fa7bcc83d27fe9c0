"""How far bfloat16 autocast moves one training step: at each checkpoint of a float32 run, the
gradients of G's and D's losses on one fixed batch, computed with bf16 in G, in D or in both,
against the same in float32. As a yardstick, the same float32 gradients with other dropout
masks, and on another batch (the noise every step already carries).

    python benchmarks/bf16_gradients.py runs/seed-004-fp32-seed0 --batch 32
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mnistgan.checkpoint import list_checkpoints, read_checkpoint
from mnistgan.config import config_from_json
from mnistgan.data import ImageBank
from mnistgan.train import GAN

# (label, bf16 in G, bf16 in D, other dropout masks, other batch)
VARIANTS = [
    ("bf16 in G and D (--precision bf16)", True, True, False, False),
    ("bf16 in G only", True, False, False, False),
    ("bf16 in D only", False, True, False, False),
    ("float32, other dropout masks", False, False, True, False),
    ("float32, another batch", False, False, False, True),
]


def flat_gradients(gan: GAN, batch: tuple, g_bf16: bool, d_bf16: bool, mask_seed: int
                   ) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """G's loss gradient (through D, as in G's update) and D's (real and fake in one batch),
    and the two losses."""
    z, y, real, y_real = batch
    def cast(on: bool) -> torch.autocast:
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=on)
    torch.manual_seed(mask_seed)
    with cast(g_bf16):
        fake = gan.G(z, y).float()
    with cast(d_bf16):
        logits = gan.D(fake, y).float()
    g_loss = gan.loss.generator(logits)
    g_grads = torch.autograd.grad(g_loss, list(gan.G.parameters()))
    images = torch.cat([real, fake.detach()])
    labels = None if y is None else torch.cat([y_real, y])
    targets = torch.cat([torch.ones(len(real)), torch.zeros(len(fake))])
    with cast(d_bf16):
        logits = gan.D(images, labels).float()
    d_loss = gan.loss.discriminator(logits, targets)
    d_grads = torch.autograd.grad(d_loss, list(gan.D.parameters()))
    return (torch.cat([g.flatten() for g in g_grads]), torch.cat([g.flatten() for g in d_grads]),
            g_loss.detach().item(), d_loss.detach().item())


def draw(gan: GAN, n: int) -> tuple:
    """Noise, digits, real images and their digits for one step, from the run's streams."""
    z, y = gan.noise(n), gan.labels(n)
    return (z, y, *gan.real_batch(n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder with checkpoints")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = config_from_json((args.run / "config.json").read_text(), str(args.run))
    data = ImageBank.load(config.data.dataset, "train", args.data_dir, config.data.digits,
                          config.data.value_range)
    print("| step | variant | G loss | D loss | G gradient: relative error | cosine | "
          "D gradient: relative error | cosine |")
    print("|---|---|---|---|---|---|---|---|")
    for checkpoint in list_checkpoints(args.run / "checkpoints"):
        gan = GAN(config, data, torch.device("cpu"))
        gan.load_state_dict(read_checkpoint(checkpoint)["gan"], str(checkpoint))
        gan.G.train()
        gan.D.train()
        batch, other = draw(gan, args.batch), draw(gan, args.batch)
        ref_g, ref_d, g_loss, d_loss = flat_gradients(gan, batch, False, False, 0)
        print(f"| {gan.step} | float32 (reference) | {g_loss:.3f} | {d_loss:.4f} | | | | |")
        for label, g_bf16, d_bf16, masks, another in VARIANTS:
            g, d, g_loss, d_loss = flat_gradients(gan, other if another else batch, g_bf16, d_bf16,
                                                  int(masks))
            errors = [f"{float((a - b).norm() / b.norm()):.3f} | "
                      f"{float(torch.nn.functional.cosine_similarity(a, b, 0)):.3f}"
                      for a, b in ((g, ref_g), (d, ref_d))]
            print(f"| {gan.step} | {label} | {g_loss:.3f} | {d_loss:.4f} | {errors[0]} | {errors[1]} |")
    print(f"\nbatch {args.batch} real + {args.batch} fake; run {args.run}; torch {torch.__version__}")


if __name__ == "__main__":
    main()
