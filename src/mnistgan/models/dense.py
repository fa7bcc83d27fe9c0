"""Dense layers whose CPU float32 matrix products run on oneDNN instead of MKL.

PyTorch sends a float32 `nn.Linear` on the CPU to MKL's sgemm, and MKL takes its AVX2 code path
on AMD processors: on this project's AMD EPYC (AVX-512) it gives about 90 GFLOP/s a core where
oneDNN, which PyTorch already ships for its convolutions, gives about 200 (BENCHMARKS.md,
"The dense layers on oneDNN"). `Dense` computes the same products, forward and backward, with
oneDNN's matmul; the results differ from MKL's in rounding only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

# The registry of dense kernels (config key train.dense_kernel): "onednn" where it applies
# (a float32 CPU tensor outside autocast and outside tracing), else PyTorch's own matmul;
# "blas": always PyTorch's own (MKL on the CPU).
DENSE_KERNELS = ("onednn", "blas")

_LINEAR = (getattr(torch.ops.mkldnn, "_linear_pointwise", None)
           if torch.backends.mkldnn.is_available() else None)


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T + bias by oneDNN (it takes transposed views without copying them)."""
    if _capturing:
        return torch.ops.mnistgan.onednn_linear(x, weight, bias)
    return _product(x, weight, bias)


def _product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return _LINEAR(x, weight, bias, "none", [], "")


# While a step is captured as a graph (step_graph.py), the products go through an operator of
# our own: inductor lowers mkldnn's linear only for frozen (constant) weights, so the traced
# graph names ours, and step_graph lowers it to a plain call of mkldnn's kernel. A library
# operator costs a few microseconds a call where a `torch.library.custom_op` costs tens.
_capturing = False
if _LINEAR is not None:
    _library = torch.library.Library("mnistgan", "DEF")
    _library.define("onednn_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor")
    _library.impl("onednn_linear", _product, "CPU")
    torch.library.register_fake("mnistgan::onednn_linear", lib=_library)(
        lambda x, weight, bias: x.new_empty(x.shape[0], weight.shape[0]))


@contextmanager
def capturing() -> Iterator[None]:
    """Dense layers on oneDNN in a form a graph compiler can call (see `_capturing`)."""
    global _capturing
    _capturing = True
    try:
        yield
    finally:
        _capturing = False


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        # A gradient of a gradient (R1, WGAN-GP) needs differentiable products: PyTorch's own.
        product = torch.mm if torch.is_grad_enabled() else (lambda a, b: onednn_linear(a, b.t()))
        grad_x = product(grad, weight) if ctx.needs_input_grad[0] else None
        grad_w = product(grad.t(), x) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


class Dense(nn.Linear):
    """`nn.Linear` (same parameters, same state dict) whose CPU float32 products use the
    kernel `self.kernel` names (DENSE_KERNELS); set it with `use_dense_kernel`."""

    kernel: str = "onednn"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A one- or two-unit head (D's logit): oneDNN's ~30 us a call costs more than it saves.
        if self.kernel == "onednn" and self.out_features > 2 and _onednn_applies(x):
            return _OneDNNLinear.apply(x, self.weight, self.bias)
        return nn.functional.linear(x, self.weight, self.bias)


def _onednn_applies(x: torch.Tensor) -> bool:
    return _LINEAR is not None and x.dim() == 2 and eager_cpu_float32(x)


def eager_cpu(x: torch.Tensor) -> bool:
    """Whether `x` is a CPU tensor outside compiling and tracing: where this package's own CPU
    kernels may replace PyTorch's (elsewhere PyTorch's own ops run)."""
    return (x.device.type == "cpu" and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing() and not torch.jit.is_scripting())


def eager_cpu_float32(x: torch.Tensor) -> bool:
    """eager_cpu, for a float32 tensor outside autocast."""
    return x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu") and eager_cpu(x)


def use_dense_kernel(net: nn.Module, kernel: str) -> nn.Module:
    """Set the kernel of every `Dense` layer in `net`; returns `net`."""
    for layer in net.modules():
        if isinstance(layer, Dense):
            layer.kernel = kernel
    return net
