"""CPU kernel time beside onnxruntime's single-op session and numpy, measured in one run;
then the executor's per-call overhead on a CPU step.

    python bench/cpu_kernels.py [--quick] [--cold]

For each case: compile time (first get(), cold in-memory cache), the kernel's time through its
bound call (:meth:`~tessera.runtime.cpu.op.CpuOp.bind`, the executor's path: fixed buffers,
no checks), onnxruntime's time for the same operator as a one-node model (one thread, inputs
and a preallocated output bound once with IOBinding; PackNCHW is ONNX Reshape + Transpose,
UnpackNCHW Transpose + Reshape), the
ratio onnxruntime / kernel (> 1: the LLVM kernel is faster), and numpy's time. Results are
checked against numpy before timing.

The overhead section runs plans of 1 and 201 chained one-element CPU steps through
:class:`~tessera.runtime.executor.Executor` on fsim and reports the executor's cost per step
beyond the raw ctypes call of the same kernel.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from tessera.config import Config
from tessera.runtime.cpu import kernels as cpu_kernels
from tessera.runtime.cpu.jit import Engine, default_engine
from tessera.runtime.cpu.op import CpuOp, KernelCall

try:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
except ImportError:  # onnxruntime is a dev dependency: without it the column says "-"
    ort = None


def best_time(fn: Callable[[], object], budget: float) -> float:
    fn()
    best, spent = float("inf"), 0.0
    reps = 0
    while spent < budget or reps < 3:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent, reps = min(best, dt), spent + dt, reps + 1
    return best


def np_pool(x, k, s, pad, kind):
    fill = -np.inf if kind == "max" else 0.0
    if x.dtype == np.int8 and kind == "max":
        fill = -128
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=fill)
    win = sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    return win.max(axis=(4, 5)) if kind == "max" else win.mean(axis=(4, 5), dtype=np.float32)


def np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_dwconv(x, w):
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    y = np.zeros((n, c, h, wd), np.float32)
    for i in range(3):
        for j in range(3):
            y += xp[:, :, i:i + h, j:j + wd] * w[None, :, 0, i, j, None, None]
    return y


def np_pack(x, bl):
    n, c, h, w = x.shape
    return x.reshape(n, c // bl, bl, h, w).transpose(0, 1, 3, 4, 2)[:, :, :, :, None, :].copy()


def _np_type(a: np.ndarray) -> int:
    return {np.dtype("float32"): TensorProto.FLOAT, np.dtype("int8"): TensorProto.INT8,
            np.dtype("int32"): TensorProto.INT32}[a.dtype]


def ort_model(op: str, attrs: dict, inputs: list[np.ndarray]) -> onnx.ModelProto:
    """``op`` as a one-node ONNX model (its first input a graph input, the others constants);
    PackNCHW as Reshape + Transpose (the layout it produces), UnpackNCHW as Transpose +
    Reshape."""
    x = inputs[0]
    inits = [numpy_helper.from_array(a, f"c{k}") for k, a in enumerate(inputs[1:], 1)]
    names = ["x"] + [f"c{k}" for k in range(1, len(inputs))]
    onnx_attrs = dict(attrs)
    if op == "QuantizeLinear":
        inits.append(numpy_helper.from_array(np.array(0, np.int8), "zp"))
        names.append("zp")
    if op == "DequantizeLinear":
        inits.append(numpy_helper.from_array(np.array(0, np.int8), "zp"))
        names.append("zp")
    if op == "PackNCHW":
        n, c, h, w = x.shape
        bl = attrs["block"]
        inits.append(numpy_helper.from_array(np.array([n, c // bl, bl, h, w], np.int64), "shp"))
        nodes = [helper.make_node("Reshape", ["x", "shp"], ["r"]),
                 helper.make_node("Transpose", ["r"], ["y"], perm=[0, 1, 3, 4, 2])]
    elif op == "UnpackNCHW":
        inits.append(numpy_helper.from_array(np.array(attrs["shape"], np.int64), "shp"))
        nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 4, 1, 5, 2, 3]),
                 helper.make_node("Reshape", ["t", "shp"], ["y"])]
    else:
        if op == "Conv":
            onnx_attrs["kernel_shape"] = list(inputs[1].shape[2:])
        nodes = [helper.make_node(op, names, ["y"], **onnx_attrs)]
    out_type = TensorProto.INT8 if op == "QuantizeLinear" else (
        TensorProto.FLOAT if op == "DequantizeLinear" else _np_type(x))
    graph = helper.make_graph(nodes, op, [helper.make_tensor_value_info("x", _np_type(x),
                                                                        x.shape)],
                              [helper.make_tensor_value_info("y", out_type, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def ort_time(op: str, attrs: dict, inputs: list[np.ndarray], want: np.ndarray,
             budget: float) -> float | None:
    """onnxruntime's best time for the one-node model, after checking its result."""
    if ort is None:
        return None
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(ort_model(op, attrs, inputs).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    y = np.empty(sess.run(None, {"x": inputs[0]})[0].shape, want.dtype)
    binding = sess.io_binding()
    binding.bind_cpu_input("x", inputs[0])
    binding.bind_output("y", "cpu", 0, y.dtype, y.shape, y.ctypes.data)
    sess.run_with_iobinding(binding)
    if y.dtype == np.float32:
        np.testing.assert_allclose(y.reshape(want.shape), want, rtol=1e-4, atol=1e-5,
                                   err_msg=f"onnxruntime {op}")
    else:
        np.testing.assert_array_equal(y.reshape(want.shape), want, err_msg=f"onnxruntime {op}")
    return best_time(lambda: sess.run_with_iobinding(binding), budget)


def cases(rng: np.random.Generator, quick: bool):
    hw = 56 if quick else 112
    xf = rng.standard_normal((1, 64, hw, hw)).astype(np.float32)
    xi = rng.integers(-128, 128, (1, 64, hw, hw), dtype=np.int8)
    pool = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    g = rng.standard_normal((1, 1024, 7, 7)).astype(np.float32)
    logits = rng.standard_normal((64, 1000)).astype(np.float32)
    big = rng.standard_normal(1 << 20).astype(np.float32)
    bias = rng.standard_normal((64, 1, 1)).astype(np.float32)
    dw = rng.standard_normal((64, 1, 3, 3)).astype(np.float32)
    scale = np.array(0.05, np.float32)
    conv = {"group": 64, "pads": [1, 1, 1, 1]}
    xb = np_pack(xi, 16)
    return [
        ("MaxPool 3x3/2 f32", "MaxPool", pool, [xf], lambda: np_pool(xf, 3, 2, 1, "max")),
        ("MaxPool 3x3/2 int8", "MaxPool", pool, [xi], lambda: np_pool(xi, 3, 2, 1, "max")),
        ("AvgPool 3x3/2 f32 incl-pad", "AveragePool", {**pool, "count_include_pad": 1}, [xf],
         lambda: np_pool(xf, 3, 2, 1, "avg")),
        ("GlobalAvgPool f32", "GlobalAveragePool", {}, [g],
         lambda: g.mean(axis=(2, 3), keepdims=True)),
        ("Softmax 64x1000", "Softmax", {"axis": -1}, [logits], lambda: np_softmax(logits)),
        ("Depthwise conv 3x3 f32", "Conv", conv, [xf, dw], lambda: np_dwconv(xf, dw)),
        ("Add broadcast NCHW+C11", "Add", {}, [xf, bias], lambda: xf + bias),
        ("Exp 1M", "Exp", {}, [big], lambda: np.exp(big)),
        ("Sigmoid 1M", "Sigmoid", {}, [big], lambda: 1 / (1 + np.exp(-big))),
        ("Tanh 1M", "Tanh", {}, [big], lambda: np.tanh(big)),
        ("QuantizeLinear f32->int8", "QuantizeLinear", {}, [xf, scale],
         lambda: np.clip(np.rint(xf / scale), -128, 127).astype(np.int8)),
        ("DequantizeLinear int8->f32", "DequantizeLinear", {}, [xi, scale],
         lambda: xi.astype(np.float32) * scale),
        ("Transpose NCHW->NHWC f32", "Transpose", {"perm": [0, 2, 3, 1]}, [xf],
         lambda: np.ascontiguousarray(xf.transpose(0, 2, 3, 1))),
        ("PackNCHW int8 block 16", "PackNCHW", {"batch": 1, "block": 16}, [xi],
         lambda: np_pack(xi, 16)),
        ("UnpackNCHW int8 block 16", "UnpackNCHW",
         {"batch": 1, "block": 16, "shape": list(xi.shape)}, [xb], lambda: xi.copy()),
    ]


def _relu_chain(cfg: Config, steps: int):
    """A plan of ``steps`` chained one-element float Relu CPU steps."""
    from tessera.runtime.plan import ALIGN, CpuStep, Plan, Slot

    f32 = np.dtype("float32")
    relu = cpu_kernels.get("Relu", {}, [((1,), "float32")])
    names = [f"t{k}" for k in range(steps + 1)]
    slots = {n: Slot(n, "arena", k * ALIGN, 4, (1,), "float32") for k, n in enumerate(names)}
    plan_steps = [CpuStep(f"relu{k}", CpuOp("Relu", f"relu{k}", [((1,), f32)], [((1,), f32)],
                                            [KernelCall(relu, (0,), (1,))], [1]),
                          [names[k]], [names[k + 1]], {"op": "Relu"}) for k in range(steps)]
    return Plan(cfg, slots, plan_steps, {"x": names[0]}, {"y": names[-1]},
                len(names) * ALIGN, {}, 0), relu


def overhead(budget: float) -> None:
    """Per-step cost of a CPU step inside Executor.run beyond the raw kernel call."""
    from tessera.driver.fsim import FsimDevice
    from tessera.runtime.executor import Executor

    cfg = Config.resolve("tiny")
    dev = FsimDevice(cfg)
    x = {"x": np.array([-1.0], np.float32)}
    times = {}
    try:
        for steps in (1, 201):
            plan, relu = _relu_chain(cfg, steps)
            ex = Executor(plan, dev)
            times[steps] = best_time(lambda e=ex: e.run(x), budget)
            ex.close()
    finally:
        dev.close()
    a, b = np.zeros(1, np.float32), np.zeros(1, np.float32)
    fn = relu.compile()
    pa, pb = a.ctypes.data, b.ctypes.data
    n = 1000

    def direct():
        for _ in range(n):
            fn.call_pointers(pa, pb)
    t_direct = best_time(direct, budget) / n
    per_step = (times[201] - times[1]) / 200
    print(f"\nexecutor CPU step (one-element Relu, fsim arena views): {per_step * 1e6:.2f} us per "
          f"step; direct ctypes call {t_direct * 1e6:.2f} us; overhead "
          f"{(per_step - t_direct) * 1e6:.2f} us per call (target <= 2 us)")
    old = best_time(lambda: relu(a, out=[b]), budget)
    print(f"checked CpuKernel.__call__(..., out=) for comparison: {old * 1e6:.2f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes, shorter timing")
    parser.add_argument("--cold", action="store_true",
                        help="use an empty disk cache so compile times include LLVM codegen")
    args = parser.parse_args()
    budget = 0.1 if args.quick else 0.3
    engine = Engine(cache_dir=tempfile.mkdtemp()) if args.cold else default_engine()
    rng = np.random.default_rng(0)
    print(f"host CPU: {engine.cpu}; cache: {'cold (temp dir)' if args.cold else engine.cache_dir}")
    header = (f"{'case':30s} {'compile ms':>10s} {'kernel us':>10s} {'ort us':>9s} "
              f"{'vs ort':>7s} {'numpy us':>10s} {'vs numpy':>8s}")
    print(header)
    print("-" * len(header))
    ratios: list[float] = []
    ort_ratios: list[float] = []
    for label, op, attrs, inputs, ref in cases(rng, args.quick):
        t0 = time.perf_counter()
        kernel = cpu_kernels.get(op, attrs, [(a.shape, a.dtype) for a in inputs], engine=engine)
        compile_ms = (time.perf_counter() - t0) * 1e3
        outs = [np.empty(s, d) for s, d in kernel.out_specs]
        kernel(*inputs, out=outs)
        want = ref()
        if outs[0].dtype == np.float32:
            np.testing.assert_allclose(outs[0], want.reshape(outs[0].shape), rtol=1e-4,
                                       atol=1e-5, err_msg=label)
        else:
            np.testing.assert_array_equal(outs[0], want.reshape(outs[0].shape), err_msg=label)
        op_ = CpuOp(op, label, [(a.shape, a.dtype) for a in inputs], kernel.out_specs,
                    [KernelCall(kernel, tuple(range(len(inputs))),
                                tuple(range(len(inputs), len(inputs) + len(outs))))],
                    list(range(len(inputs), len(inputs) + len(outs))))
        t_kernel = best_time(op_.bind(inputs, outs), budget)
        t_numpy = best_time(ref, budget)
        t_ort = ort_time(op, attrs, inputs, want.reshape(outs[0].shape), budget)
        ratios.append(t_numpy / t_kernel)
        if t_ort is not None:
            ort_ratios.append(t_ort / t_kernel)
        ort_cols = ("        -       -" if t_ort is None else
                    f"{t_ort * 1e6:9.1f} {t_ort / t_kernel:6.2f}x")
        print(f"{label:30s} {compile_ms:10.1f} {t_kernel * 1e6:10.1f} {ort_cols} "
              f"{t_numpy * 1e6:10.1f} {t_numpy / t_kernel:7.2f}x")
    geo = float(np.exp(np.mean(np.log(ratios))))
    print(f"geometric mean speedup over numpy: {geo:.2f}x  "
          f"(engine: {engine.stats.compiles} compiled, {engine.stats.disk_hits} from disk cache)")
    if ort_ratios:
        wins = sum(r >= 1 for r in ort_ratios)
        print(f"vs onnxruntime: geometric mean {np.exp(np.mean(np.log(ort_ratios))):.2f}x, "
              f"at least as fast on {wins} of {len(ort_ratios)} ops")
    overhead(budget)

if __name__ == "__main__":
    main()
