"""``tessera demo``: the whole loop on a bundled model, checked at every stage.

Builds a model from the zoo (seeded weights), compiles it with seeded calibration batches, runs a
held-out input on the functional simulator and on the RTL (Verilator), and checks: fsim equals
the quantiser's bit-exact integer reference, the RTL equals fsim bit for bit, and the int8 output
is close to onnxruntime's float output. Prints a per-layer table.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from tessera.cli import EXIT_CHECK_FAILED, EXIT_OK
from tessera.compiler import reference, zoo
from tessera.compiler.api import compile as tcompile


def demo(model_name: str = "resnet_tiny", config: str = "default", rtl: bool = True,
         out: str | None = None, seed: int = 0) -> int:
    import onnxruntime as ort

    proto = getattr(zoo, model_name)()
    inp = proto.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    calibration = [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(8)]
    feeds = {inp.name: rng.standard_normal(shape).astype(np.float32)}

    t0 = time.perf_counter()
    model = tcompile(proto, config=config, calibration=calibration)
    t_compile = time.perf_counter() - t0
    print(f"[1/4] compiled {model_name} for '{config}' in {t_compile:.2f} s: {model.summary()}")
    if out:
        model.save(out)
        print(f"      saved {out}")

    want_q = reference.run(model.quantized.graph, feeds)
    want_q = want_q if isinstance(want_q, list) else [want_q[n] for n in model.output_names]
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    want_f = sess.run(None, feeds)

    t0 = time.perf_counter()
    got_f, prof_f = model.run(feeds, device="fsim", profile=True)
    t_fsim = time.perf_counter() - t0
    exact = all(np.array_equal(a, b) for a, b in zip(got_f, want_q))
    print(f"[2/4] fsim: {t_fsim:.2f} s; equals the integer reference bit for bit: {exact}")
    ok = exact

    prof = prof_f
    if rtl:
        t0 = time.perf_counter()
        got_r, prof_r = model.run(feeds, device="verilator", profile=True,
                                   progress=sys.stderr.isatty())
        t_rtl = time.perf_counter() - t0
        same = all(np.array_equal(a, b) for a, b in zip(got_r, got_f))
        print(f"[3/4] RTL (Verilator): {t_rtl:.2f} s (includes building or loading the "
              f"simulator); equals fsim bit for bit: {same}")
        ok &= same
        prof = prof_r
    else:
        print("[3/4] RTL run skipped (--no-rtl)")

    print("[4/4] against onnxruntime (float):")
    for name, q, f in zip(model.output_names, got_f, want_f):
        f = np.asarray(f, np.float32)
        rel = float(np.linalg.norm(q - f) / max(np.linalg.norm(f), 1e-12))
        line = f"      {name}: relative error {rel:.4f}, max |diff| {np.abs(q - f).max():.4f}"
        if f.ndim == 2 and f.shape[1] > 1:
            line += f", top-1 agrees: {bool((q.argmax(1) == f.argmax(1)).all())}"
        print(line)
    print()
    print(prof.table())
    model.close()
    print("\ndemo " + ("PASSED" if ok else "FAILED"))
    return EXIT_OK if ok else EXIT_CHECK_FAILED
