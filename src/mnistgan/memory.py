"""Where freed memory goes: kept for the next step or batch instead of handed back to the system.

By default glibc maps large blocks (a batch's activations and gradients) freshly from the system
and unmaps them when freed, so every training step or Inception batch faults their pages in
again, the kernel zero-filling each: `best` took ~10,000 page faults a step and 9 % of its CPU
time in the kernel, the first `evaluate --inception` 22 %. Where the memory lies changes no
arithmetic. Elsewhere (macOS, musl, Windows) there is nothing to tune.
"""

from __future__ import annotations

import ctypes

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4


def keep_freed_memory(any_size: bool = False) -> None:
    """Have glibc keep the memory this process frees for its next use (`train.reuse_memory`).

    Blocks below 32 MB (glibc's largest mmap threshold) then come from the heap; with `any_size`
    every block does, for work whose blocks are larger (Inception-v3's activations at 299x299
    reach hundreds of MB a batch). The heap is not shrunk between uses either way."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return
    if any_size:
        mallopt(_M_MMAP_MAX, 0)
    else:
        mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    mallopt(_M_TRIM_THRESHOLD, 1 << 30)
