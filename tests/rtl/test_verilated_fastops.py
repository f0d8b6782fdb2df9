"""sim/native/verilated_fastops.h (issue 9 part 5): the sign extensions and signed products
that replace Verilator's in the Verilated core give the same 64 (or 32) bits as Verilator's own
functions for every clean input, for EVERY (obits, lbits) pair from 1 to 64 bits.

One C++ program includes verilated.h, wraps Verilator's functions, then includes the header and
wraps the replacements (the same call syntax the generated code uses), and compares them on edge
values (0, 1, the sign bit, all ones below it, all ones, ...) and seeded random clean values;
products on random pairs plus every pair of edge values.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tessera.sim.verilator_build import FASTOPS_SOURCE
from tessera.tools import verilator_env, verilator_root

_PROGRAM = r"""
#include "verilated.h"
#include <cstdio>

static QData o_eqi(int o, int l, QData x) { return VL_EXTENDS_QI(o, l, x); }
static QData o_eqq(int o, int l, QData x) { return VL_EXTENDS_QQ(o, l, x); }
static IData o_eii(int o, int l, IData x) { return VL_EXTENDS_II(o, l, x); }
static QData o_mq(int l, QData a, QData b) { return VL_MULS_QQQ(l, a, b); }
static IData o_mi(int l, IData a, IData b) { return VL_MULS_III(l, a, b); }

#include "verilated_fastops.h"

static QData f_eqi(int o, int l, QData x) { return VL_EXTENDS_QI(o, l, x); }
static QData f_eqq(int o, int l, QData x) { return VL_EXTENDS_QQ(o, l, x); }
static IData f_eii(int o, int l, IData x) { return VL_EXTENDS_II(o, l, x); }
static QData f_mq(int l, QData a, QData b) { return VL_MULS_QQQ(l, a, b); }
static IData f_mi(int l, IData a, IData b) { return VL_MULS_III(l, a, b); }

static uint64_t state = 0x5eed5eed12345678ULL;
static uint64_t next() {  // splitmix64
    uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static long checks = 0, bad = 0;
static void expect(const char* what, int o, int l, uint64_t a, uint64_t b, uint64_t want,
                   uint64_t got) {
    ++checks;
    if (want != got && bad++ < 10)
        std::printf("MISMATCH %s obits=%d lbits=%d a=%#llx b=%#llx verilator=%#llx fast=%#llx\n",
                    what, o, l, (unsigned long long)a, (unsigned long long)b,
                    (unsigned long long)want, (unsigned long long)got);
}

static int values(int l, uint64_t* out) {  // clean edge values and random ones, lbits wide
    const uint64_t mask = l == 64 ? ~0ULL : (1ULL << l) - 1, sign = 1ULL << (l - 1);
    int n = 0;
    const uint64_t edge[] = {0, 1, 2, sign, sign - 1, sign + 1, mask, mask - 1, mask >> 1};
    for (uint64_t e : edge) out[n++] = e & mask;
    while (n < 64) out[n++] = next() & mask;
    return n;
}

int main() {
    uint64_t v[64], w[64];
    for (int l = 1; l <= 64; ++l) {
        int n = values(l, v);
        for (int o = l; o <= 64; ++o)
            for (int i = 0; i < n; ++i) {
                expect("VL_EXTENDS_QQ", o, l, v[i], 0, o_eqq(o, l, v[i]), f_eqq(o, l, v[i]));
                if (l <= 32)
                    expect("VL_EXTENDS_QI", o, l, v[i], 0, o_eqi(o, l, v[i]), f_eqi(o, l, v[i]));
                if (o <= 32)
                    expect("VL_EXTENDS_II", o, l, v[i], 0, o_eii(o, l, IData(v[i])),
                           f_eii(o, l, IData(v[i])));
            }
        values(l, w);
        for (int i = 0; i < n; ++i)
            for (int j = 0; j < n; ++j) {
                expect("VL_MULS_QQQ", l, l, v[i], w[j], o_mq(l, v[i], w[j]), f_mq(l, v[i], w[j]));
                if (l <= 32)
                    expect("VL_MULS_III", l, l, v[i], w[j], o_mi(l, IData(v[i]), IData(w[j])),
                           f_mi(l, IData(v[i]), IData(w[j])));
            }
    }
    std::printf("%ld checks, %ld mismatches\n", checks, bad);
    return bad != 0;
}
"""


def test_fast_primitives_equal_verilators_for_every_width(tmp_path: Path) -> None:
    inc = verilator_root() / "include"
    src = tmp_path / "check.cpp"
    src.write_text(_PROGRAM)
    exe = tmp_path / "check"
    # -O2 so that gcc's folding of the shift pairs (the form the model is built with) is tested
    subprocess.run(["c++", "-std=c++17", "-O2", f"-I{inc}", f"-I{inc / 'vltstd'}",
                    f"-I{FASTOPS_SOURCE.parent}", str(src), "-o", str(exe)],
                   check=True, env=verilator_env(), capture_output=True, text=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    # 64 lbits x (65 - lbits) obits x 64 values x up to 3 extensions, plus 64 x 64 x 64 products
    assert "0 mismatches" in out.stdout and int(out.stdout.split()[0]) > 300_000, out.stdout
