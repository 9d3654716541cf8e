"""The configurations `moelight bench ep` compares, as recipe overrides.

Apart from moelight.bench.ep so that the CLI can list and check them without importing the
training stack (Lightning takes seconds to import).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "recipes" / "profiles" / "quickstart-topk"
BASELINE = "topk / per-expert"

CONFIG_KEYS = ("per-expert", "grouplocal", "c2r-profile", "c2r-placement", "overlap")


def configurations(
    procs: int, num_experts: int, top_t: int, keys: tuple[str, ...] = CONFIG_KEYS
) -> dict[str, list[str]]:
    """Label -> recipe overrides (on top of the recipe and `dispatcher.name=grouplocal`)."""
    per_device = num_experts // procs
    placement = ["router.name=c2r", "router.collaborators=placement", f"router.top_t={per_device - 1}"]
    profile = [
        "router.name=c2r",
        "router.collaborators=profile",
        f"router.top_t={top_t}",
        f"profile.path={PROFILE}",
        f"parallel.placement={PROFILE / f'placement-{procs}.json'}",
    ]
    blocking = ["dispatcher.overlap=false"]
    table = {
        "per-expert": (BASELINE, ["dispatcher.rows=per_expert", *blocking]),
        "grouplocal": ("topk / grouplocal", ["dispatcher.rows=per_device", *blocking]),
        "c2r-profile": (
            "c2r profile+placement / grouplocal",
            [*profile, "dispatcher.rows=per_device", *blocking],
        ),
        "c2r-placement": (
            "c2r placement / grouplocal",
            [*placement, "dispatcher.rows=per_device", *blocking],
        ),
        "overlap": ("c2r placement / grouplocal+overlap", [*placement, "dispatcher.rows=per_device"]),
    }
    return dict(table[k] for k in CONFIG_KEYS if k in keys or k == "per-expert")
