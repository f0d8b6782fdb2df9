"""Fuzzing the trust boundary (seeded: hypothesis with ``derandomize=True``, bounded examples).

Random mutations of a valid compiled model (bytes flipped, the file truncated, JSON fields
replaced, sections swapped or replaced by random code, all re-checksummed), random bad feeds,
random configs and random instruction streams may only raise project errors
(:class:`~tessera.errors.TesseraError` subclasses), never hang (a watchdog fails the example),
and never change a later good run: after every example, a good model runs on the same device and
must give exactly its expected outputs.
"""

from __future__ import annotations

import json
import signal
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tessera
from tessera.compiler import zoo
from tessera.compiler.api import compile as tcompile
from tessera.config import Config
from tessera.driver import open_device
from tessera.errors import ArtifactError, ConfigError, InputError, TesseraError
from tessera.isa import INSN_BYTES, disassemble, layout
from tessera.runtime.artifact import read_container, write_container

FUZZ = settings(derandomize=True, max_examples=80, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
IR = "define void @f() { call void @system() ret void }"
TIMEOUT = 10**6  # cycles a fuzzed run may take on fsim


@contextmanager
def watchdog(seconds: int = 30):
    def boom(*_):
        raise TimeoutError(f"the example did not finish in {seconds} s")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


class World:
    """One device shared by bad and good runs, a good model and its expected outputs."""

    def __init__(self, tmp):
        proto = zoo.mlp()
        inp = proto.graph.input[0]
        shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        rng = np.random.default_rng(70)
        cal = [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(2)]
        model = tcompile(proto, config="tiny", calibration=cal)
        self.path = tmp / "good.tsr"
        model.save(self.path)
        self.raw = self.path.read_bytes()
        self.sections, self.head = read_container(self.path)
        self.x = {inp.name: rng.standard_normal(shape).astype(np.float32)}
        self.dev = open_device("fsim", model.config)
        self.good = tessera.load(self.path)
        self.want = self.good.run(self.x, device=self.dev)
        self.tmp = tmp
        self.n = 0

    def check_good_run(self) -> None:
        got = self.good.run(self.x, device=self.dev)
        assert all(np.array_equal(a, b) for a, b in zip(got, self.want))

    def file(self, data: bytes):
        self.n += 1
        p = self.tmp / f"fuzz{self.n}.tsr"
        p.write_bytes(data)
        return p

    def try_file(self, path) -> None:
        """Load and (if it loads) run a candidate file: only project errors may come out."""
        if path is None:
            return
        with watchdog():
            try:
                bad = tessera.load(path)
                try:
                    bad.run(self.x, device=self.dev, timeout_cycles=TIMEOUT)
                finally:
                    bad.close()
            except TesseraError:
                pass
        self.check_good_run()

    def rewrite(self, fn):
        """A re-checksummed copy of the good file with ``fn`` applied (None when the container
        writer itself refuses the result, e.g. a header that is not JSON data)."""
        sections = dict(self.sections)
        head = json.loads(json.dumps(self.head))
        graph = json.loads(sections["graph.json"])
        fn(sections, head, graph)
        sections["graph.json"] = json.dumps(graph).encode()  # NaN/Infinity tokens allowed here
        self.n += 1
        p = self.tmp / f"fuzz{self.n}.tsr"
        try:
            write_container(p, sections, head)
        except ArtifactError:
            return None
        return p


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("fuzz"))
    yield w
    w.good.close()
    w.dev.close()


def _paths(v, prefix=()):
    """Every JSON path of ``v`` (to a dict value or list item)."""
    out = [prefix] if prefix else []
    if isinstance(v, dict):
        for k, x in v.items():
            out += _paths(x, prefix + (k,))
    elif isinstance(v, list):
        for k, x in enumerate(v):
            out += _paths(x, prefix + (k,))
    return out


def _set(root, path, value):
    for k in path[:-1]:
        root = root[k]
    root[path[-1]] = value


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=12) | st.sampled_from([IR, "../../etc/passwd", "/dev/zero", -1, 2**63]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                               max_size=4),
    max_leaves=8)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), min_size=1,
                      max_size=6))
def test_flipped_bytes(world, flips):
    data = bytearray(world.raw)
    for pos, mask in flips:
        data[pos % len(data)] ^= mask
    world.try_file(world.file(bytes(data)))


@FUZZ
@given(cut=st.integers(0, 10**9))
def test_truncated_files(world, cut):
    world.try_file(world.file(world.raw[:cut % len(world.raw)]))


@FUZZ
@given(where=st.integers(0, 10**9), value=JSON, in_header=st.booleans())
def test_json_fields_replaced_and_rechecksummed(world, where, value, in_header):
    def mutate(sections, head, graph):
        root = head if in_header else graph
        paths = _paths(root)
        _set(root, paths[where % len(paths)], value)
    world.try_file(world.rewrite(mutate))


@FUZZ
@given(a=st.integers(0, 10**6), b=st.integers(0, 10**6))
def test_sections_swapped(world, a, b):
    def swap(sections, head, graph):
        names = sorted(n for n in sections if n != "graph.json")
        x, y = names[a % len(names)], names[b % len(names)]
        sections[x], sections[y] = sections[y], sections[x]
    world.try_file(world.rewrite(swap))


@FUZZ
@given(step=st.integers(0, 10**6), code=st.binary(min_size=0, max_size=40 * INSN_BYTES),
       keep=st.integers(0, 40))
def test_random_code_sections(world, step, code, keep):
    def replace(sections, head, graph):
        names = sorted(n for n in sections if n.startswith("code/"))
        name = names[step % len(names)]
        old = sections[name]
        # random words spliced into the real stream (so the FINISH and tokens may survive)
        k = min(keep, len(old) // INSN_BYTES) * INSN_BYTES
        sections[name] = old[:k] + code[: len(code) // INSN_BYTES * INSN_BYTES] + old[k:][
            len(code) // INSN_BYTES * INSN_BYTES:]
    world.try_file(world.rewrite(replace))


@FUZZ
@given(step=st.integers(0, 10**6), pc=st.integers(0, 10**6), field=st.integers(0, 10**6),
       value=st.integers(0, 2**64))
def test_instruction_fields_mutated(world, step, pc, field, value):
    """One field of one real instruction set to another value of its width: such code often
    passes load validation (GEMM/ALU fields) and must fail on the device, not the host."""
    cfg = world.dev.config

    def mutate(sections, head, graph):
        names = sorted(n for n in sections if n.startswith("code/"))
        name = names[step % len(names)]
        code = bytearray(sections[name])
        k = pc % (len(code) // INSN_BYTES)
        word = int.from_bytes(code[k * INSN_BYTES:(k + 1) * INSN_BYTES], "little")
        f = layout(cfg).format(word & 7)[field % len(layout(cfg).format(word & 7))]
        word = (word & ~(f.mask << f.lo)) | ((value & f.mask) << f.lo)
        code[k * INSN_BYTES:(k + 1) * INSN_BYTES] = word.to_bytes(INSN_BYTES, "little")
        sections[name] = bytes(code)
    world.try_file(world.rewrite(mutate))


FEED_DTYPES = st.sampled_from(["float32", "float64", "float16", "int8", "int32", "int64", "bool",
                               "uint8", "complex64"])


@FUZZ
@given(data=st.data())
def test_bad_feeds(world, data):
    name = next(iter(world.x))
    shape = world.x[name].shape
    kind = data.draw(st.sampled_from(["dtype", "shape", "values", "names", "object"]))
    feeds: object
    if kind == "dtype":
        feeds = {name: world.x[name].astype(data.draw(FEED_DTYPES))}
    elif kind == "shape":
        dims = data.draw(st.lists(st.integers(0, 5), max_size=4))
        feeds = {name: np.zeros(dims, np.float32)}
    elif kind == "values":
        v = world.x[name].copy()
        v.flat[data.draw(st.integers(0, v.size - 1))] = data.draw(
            st.sampled_from([np.nan, np.inf, -np.inf]))
        feeds = {name: v}
    elif kind == "names":
        feeds = {data.draw(st.text(max_size=5)): world.x[name]}
    else:
        feeds = data.draw(st.sampled_from([None, [world.x[name]], "x", 3, {name: "text"},
                                           {name: None}]))
    with watchdog():
        try:
            world.good.run(feeds, device=world.dev)
            assert kind == "dtype" and feeds[name].dtype == np.float32 or kind == "names"
        except InputError:
            pass
    world.check_good_run()
    assert world.good.check_feeds(world.x)[name].shape == shape


CONFIG_VALUE = st.one_of(st.integers(-5, 40), st.none(), st.booleans(), st.floats(), st.text(),
                         st.lists(st.integers(), max_size=2))


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(list(Config().to_dict()) + ["bogus", ""]),
                               CONFIG_VALUE, max_size=4),
       drop=st.lists(st.sampled_from(list(Config().to_dict())), max_size=2))
def test_random_configs(world, changes, drop):
    values = {**Config.preset("tiny").to_dict(), **changes}
    for k in drop:
        values.pop(k, None)
    try:
        cfg = Config.from_dict(values)
    except ConfigError:
        return
    assert isinstance(cfg, Config)


@FUZZ
@given(words=st.binary(min_size=0, max_size=64 * INSN_BYTES))
def test_random_instruction_streams(world, words):
    words = words[: len(words) // INSN_BYTES * INSN_BYTES]
    text = disassemble(words, world.dev.config)  # every word has a line, bad ones shown raw
    assert len(text.splitlines()) == len(words) // INSN_BYTES
    if words:
        buf = world.dev.alloc(len(words))
        try:
            world.dev.write(buf.addr, words)
            with watchdog():
                try:
                    world.dev.run(buf.addr, len(words) // INSN_BYTES, timeout_cycles=TIMEOUT)
                except TesseraError:
                    pass
        finally:
            world.dev.free(buf)
    world.check_good_run()


def test_regression_a_load_that_writes_nothing(world):
    """Found by test_instruction_fields_mutated: a LOAD with y_size 0 and no padding writes no
    SRAM element; fsim used to crash (a race check on an empty range) instead of running it."""
    from tessera.isa import FinishInsn, MemInsn, MemType, Opcode, to_bytes

    cfg = world.dev.config
    code = to_bytes([MemInsn(opcode=Opcode.LOAD, memory_type=MemType.INP, y_size=0, x_size=3,
                             x_stride=3), FinishInsn()], cfg)
    buf = world.dev.alloc(len(code))
    try:
        world.dev.write(buf.addr, code)
        assert world.dev.run(buf.addr, 2).counters["dram_read_bytes"] == 0
    finally:
        world.dev.free(buf)
    world.check_good_run()
