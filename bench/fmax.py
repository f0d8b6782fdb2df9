"""Out-of-context Fmax of the core on the ULX3S's ECP5-85F (speed 6), beside the target clock.

    python bench/fmax.py [--config ulx3s] [--target 100] [--no-route] [--workdir DIR]

Prints nextpnr's maximum frequency for the core clock next to the target and the preset's
``clock_mhz``, and the critical path. Synthesis takes minutes and routing ~10 minutes.
"""

from __future__ import annotations

import argparse
import tempfile

from tessera.config import Config
from tessera.hw.fmax import core_fmax


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="ulx3s")
    ap.add_argument("--target", type=float, default=100.0, help="MHz nextpnr aims at")
    ap.add_argument("--no-route", action="store_true", help="placement estimate only")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    cfg = Config.resolve(args.config)
    work = args.workdir or tempfile.mkdtemp(prefix="tessera-fmax-")
    rep = core_fmax(cfg, work, target_mhz=args.target, route=not args.no_route)
    kind = "routed" if rep.routed else "placed (estimate)"
    print(f"{cfg.summary()}: Fmax {rep.mhz:.2f} MHz {kind}; target {args.target:.0f} MHz "
          f"({rep.mhz / args.target:.2f}x); preset clock_mhz {cfg.clock_mhz}; "
          f"{rep.seconds:.0f} s; files in {work}")
    print(rep.critical_path)


if __name__ == "__main__":
    main()
