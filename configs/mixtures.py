"""Named dataset mixtures (weights are relative, sampled at frame level).

Usage (trainer / script layer):
    from configs.mixtures import get_mixture
    from data.loader import make_iterator
    from data.mixture import PipelineConfig
    from data.windows import vipra_window
    it = make_iterator(get_mixture("demo"), PipelineConfig(data_root="runs/demo/data", window=vipra_window()))
Benchmark: `python scripts/benchmark.py data --data-root DIR --mixture demo --window vipra`.
"""

from __future__ import annotations

from core.lookup import lookup
from data.mixture import Mixture, MixtureEntry

# Octo "magic soup" weights (before size balancing) restricted to the datasets registered in data/oxe.py.
_OCTO_WEIGHTS = {"fractal20220817_data": 0.54087, "kuka": 0.8341, "bridge_dataset": 1.0, "taco_play": 2.0,
                 "jaco_play": 1.0, "language_table": 0.1}

MIXTURES: dict[str, Mixture] = {
    "demo": Mixture("demo", (MixtureEntry("demo_robot", 1.0), MixtureEntry("demo_human", 1.0))),
    "demo_robot": Mixture("demo_robot", (MixtureEntry("demo_robot", 1.0),)),
    "demo_human": Mixture("demo_human", (MixtureEntry("demo_human", 1.0),)),
    "oxe_magic_soup": Mixture("oxe_magic_soup", tuple(MixtureEntry(n, w) for n, w in _OCTO_WEIGHTS.items()),
                              balance_by_size=True),
    # ViPRA-style co-training: robot data with actions plus action-free human video, one clip = one weight
    "vipra_cotrain": Mixture("vipra_cotrain", tuple(MixtureEntry(n, 1.0) for n in (
        "fractal20220817_data", "bridge_dataset", "kuka", "ssv2"))),
}


def get_mixture(name: str) -> Mixture:
    """Mixture by name; unknown names suggest the closest one."""
    return lookup(MIXTURES, name, "mixture")  # UnknownName is a KeyError

