"""A hash of everything each compile produces, to prove a compiler speed-up changes nothing.

    python bench/artifact_hash.py [models...] > before.txt   # on the old tree
    python bench/artifact_hash.py [models...] > after.txt    # on the new tree; diff them

The hash covers the plan: every slot (name, region, offset, shape, dtype, layout), every
parameter array's bytes, every accelerator step's instructions, micro-ops and micro-op load
PCs, and every CPU step's kernel descriptions and wiring. Models are zoo builder names (compiled
for ``tiny`` and ``default``) or the onnx wheel's ``light_*`` models (``default``), each with
the default seeded calibration.
"""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np

from tessera.compiler import zoo
from tessera.compiler.api import compile as tcompile

DEFAULT = ["resnet_tiny", "mobilenet_tiny", "small_cnn", "mlp", "resnet18", "light_resnet50",
           "light_squeezenet"]


def plan_hash(model) -> str:
    h = hashlib.sha256()
    plan = model.plan
    for _, slot in sorted(plan.slots.items()):
        h.update(json.dumps(slot.to_json(), sort_keys=True).encode())
    for name, arr in sorted(plan.params.items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    for step in plan.steps:
        h.update(step.name.encode())
        if step.kind == "accel":
            h.update(step.code + step.uop_words + str(step.uop_load_pcs).encode())
        else:
            h.update(json.dumps(step.op.to_json(), sort_keys=True).encode())
    return h.hexdigest()[:16]


def main() -> None:
    for name in sys.argv[1:] or DEFAULT:
        light = {p.stem: p for p in zoo.light_models()}
        if name in light:
            source, configs = str(light[name]), ["default"]
        else:
            source, configs = getattr(zoo, name)(), ["tiny", "default"]
        for cfg in configs:
            print(name, cfg, plan_hash(tcompile(source, config=cfg)), flush=True)


if __name__ == "__main__":
    main()
