"""Import triton when it is there (Linux), so the torch references work without it.

Kernels are written as usual (`@jit`, `tl.constexpr`); without triton `jit` leaves the function
undecorated and `HAS_TRITON` is False, so only the torch path can be selected.
"""

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
    jit = triton.jit
except ImportError:  # pragma: no cover - platforms without triton
    from types import SimpleNamespace

    triton = None
    tl = SimpleNamespace(constexpr=int)
    HAS_TRITON = False

    def jit(fn):
        return fn


def cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()
