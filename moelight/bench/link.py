"""Calibrated link presets: make this CPU's compute-to-communication ratio that of a real system.

A real system is named by three figures: achieved bf16 GEMM throughput per GPU, achieved all2all
bandwidth per GPU (one direction), and latency per all2all call. This CPU is s = GPU FLOP/s /
CPU FLOP/s times slower at the expert GEMMs (measured per rank, with the run's threads, while
every rank measures at once), so the emulated link runs s times slower too:

- bandwidth per rank = GPU all2all bandwidth / s. Then FLOPs per byte on the wire match, and
  a recipe whose expert FLOPs per row-byte match the real model (6 x ffn / bytes per element:
  LLaMA-MoE bf16 6 x 1376 / 2 = 4128; the same with ffn 2752 in fp32) has the real layer's
  ratio of expert compute to all2all time.
- latency per call = GPU latency x s x (this run's expert FLOPs per layer / the real layer's).
  Latency does not shrink with a small hidden size or few tokens per rank the way FLOPs and
  bytes do, so it is matched per FLOP of the layer: latency / layer expert time is the real
  model's at its real tokens per GPU. (Scaling by s alone would make each call cost
  `literal_latency_s`, seconds on this CPU: the latency of a real layer with this run's tiny
  FLOPs, which no real system runs.)

Sourced figures (all per GPU):
- H100 SXM dense bf16 peak: 989 TFLOP/s (NVIDIA H100 datasheet). Achieved on MoE expert GEMMs:
  600 TFLOP/s assumed (~60% of peak; large cuBLAS bf16 GEMMs reach ~70%, grouped expert GEMMs
  of a few thousand rows less).
- NVLink 4: 450 GB/s per direction (18 links x 25 GB/s). Achieved all2all: 360 GB/s (80%, the
  efficiency DeepEP reports for its NVLink all2all: 726 of 900 GB/s on B200 NVLink 5; 153 of
  ~160 GB/s on H800). Latency 10 us per call (`moelight bench comm`'s figure).
- InfiniBand NDR 400 Gb/s: 50 GB/s per direction; achieved all2all 43 GB/s (DeepEP V1,
  internode EP16 dispatch/combine on H800 + ConnectX-7 400 Gb/s: 43 GB/s RDMA bottleneck
  bandwidth). Latency 20 us per call (`moelight bench comm`'s figure).
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass

import torch

from moelight.errors import MoelightError
from moelight.moe.experts import ExpertWeights


@dataclass(frozen=True)
class LinkPreset:
    name: str
    gpu_tflops: float  # achieved bf16 expert-GEMM TFLOP/s per GPU
    bandwidth_gbs: float  # achieved all2all GB/s per GPU, one direction
    latency_us: float  # per all2all call
    note: str


PRESETS: dict[str, LinkPreset] = {
    "nvlink": LinkPreset(
        "nvlink",
        600.0,
        360.0,
        10.0,
        "H100 + NVLink 4 within a node: 600 TFLOP/s bf16 achieved (989 peak), all2all 360 GB/s "
        "per direction achieved (450 peak), 10 us per call",
    ),
    "infiniband": LinkPreset(
        "infiniband",
        600.0,
        43.0,
        20.0,
        "H100 + 400 Gb/s InfiniBand across nodes: 600 TFLOP/s bf16 achieved, all2all 43 GB/s "
        "per direction achieved (DeepEP, CX7 NDR), 20 us per call",
    ),
}


@dataclass(frozen=True)
class ReferenceModel:
    """The real model whose expert FLOPs per row-byte a benchmark recipe matches."""

    name: str
    hidden: int
    ffn: int
    top_k: int
    dtype_bytes: int
    tokens_per_gpu: int

    def layer_flops(self) -> float:
        """Forward expert FLOPs of one MoE layer on one GPU (k rows per token, 3 GEMMs)."""
        return self.tokens_per_gpu * self.top_k * 6.0 * self.hidden * self.ffn

    def flops_per_row_byte(self) -> float:
        return 6.0 * self.ffn / self.dtype_bytes


REFERENCES = {
    "llama-moe": ReferenceModel(
        "LLaMA-MoE-3.5B (hidden 4096, expert FFN 1376, top-2, bf16)", 4096, 1376, 2, 2, 16384
    ),
    "qwen1.5-moe": ReferenceModel(
        "Qwen1.5-MoE-A2.7B (hidden 2048, expert FFN 1408, top-4, bf16)", 2048, 1408, 4, 2, 16384
    ),
}

# Published all2all shares of MoE training time, printed beside the measured baseline share.
PUBLISHED_SHARES = (
    "Megatron-Core MoE: all2all 30-40% of training time; Occult (2025): over 40% in expert-parallel training"
)


@dataclass
class EmulatedLink:
    """What a preset becomes on this CPU; `rate_per_rank` in bytes/s, `latency_s` per call."""

    name: str
    cpu_gflops: float
    scale: float  # GPU FLOP/s / CPU FLOP/s
    rate_per_rank: float
    latency_s: float
    literal_latency_s: float
    note: str

    def describe(self, procs: int) -> str:
        if self.scale == 0:
            return f"{self.name}: {self.note}"
        return (
            f"{self.name}: CPU {self.cpu_gflops:.1f} GFLOP/s per rank on the expert GEMMs -> this CPU is "
            f"{self.scale:,.0f}x slower than the GPU; link {self.rate_per_rank * 8 / 1e6:.2f} Mbit/s per rank "
            f"({self.rate_per_rank * procs * 8 / 1e6:.2f} Mbit/s shared by {procs} ranks), "
            f"latency {self.latency_s * 1e3:.3f} ms per call (per-FLOP of the layer; "
            f"{self.literal_latency_s * 1e3:,.0f} ms if scaled by FLOP/s alone) [{self.note}]"
        )

    def as_dict(self) -> dict:
        return asdict(self)


def calibrate(
    preset: LinkPreset,
    cpu_flops: float,
    run_layer_flops: float,
    reference: ReferenceModel,
    run_flops_per_row_byte: float | None = None,
) -> EmulatedLink:
    """The preset on this CPU. With `run_flops_per_row_byte` (a recipe whose experts are narrower
    than the reference's, e.g. the frontier model's FFN 64), the rate is also multiplied by
    reference / run expert FLOPs per row-byte: the all2all time over the expert compute is then
    the reference model's although each row carries fewer FLOPs (without it a narrow model's
    step is nearly all all2all, as it would be on the real link)."""
    scale = preset.gpu_tflops * 1e12 / cpu_flops
    literal = preset.latency_us * 1e-6 * scale
    widen = reference.flops_per_row_byte() / run_flops_per_row_byte if run_flops_per_row_byte else 1.0
    return EmulatedLink(
        preset.name,
        cpu_flops / 1e9,
        scale,
        preset.bandwidth_gbs * 1e9 / scale * widen,
        literal * run_layer_flops / reference.layer_flops(),
        literal,
        preset.note,
    )


_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}


def parse_rate(text: str) -> float:
    """'40mbit' / '5MB' (per second) -> bytes per second, per rank."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmg]?)(bit|b|bps)?\s*", text.lower())
    if not m:
        raise MoelightError(f"--link {text!r}: a preset ({', '.join(PRESETS)}, none) or a rate like 40mbit")
    value = float(m.group(1)) * _UNITS[m.group(2)]
    unit = m.group(3) or "bit"
    return value / 8 if unit in ("bit", "bps") else value


def parse_latency(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9.]+)\s*(us|ms|s)?\s*", text.lower())
    if not m:
        raise MoelightError(f"--latency {text!r}: a time like 2ms or 500us")
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[m.group(2) or "ms"]


def custom_link(rate_per_rank: float, latency_s: float) -> EmulatedLink:
    return EmulatedLink("custom", 0.0, 0.0, rate_per_rank, latency_s, latency_s, "given on the command line")


def expert_gemm_flops(
    hidden: int, ffn: int, rows: int, num_local: int, seconds: float = 1.0, dtype=torch.float32
) -> float:
    """Achieved FLOP/s of the expert SwiGLU (forward + backward), `rows` rows over `num_local`
    experts, on this process's torch threads: 18 x rows x hidden x ffn FLOPs per repeat."""
    experts = ExpertWeights(list(range(num_local)), hidden, ffn).to(dtype)
    x = torch.randn(rows, hidden, dtype=dtype, requires_grad=True)
    counts = torch.full((num_local,), rows // num_local, dtype=torch.long)
    counts[: rows - int(counts.sum())] += 1
    flops = 18.0 * rows * hidden * ffn

    def once() -> float:
        t0 = time.perf_counter()
        experts.grouped(x, counts).sum().backward()
        return time.perf_counter() - t0

    once()  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < seconds:
        times.append(once())
    times.sort()
    return flops / times[len(times) // 2]
