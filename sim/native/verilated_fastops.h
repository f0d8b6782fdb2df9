// Faster forms of a few Verilator runtime primitives, for the Verilated core only.
//
// Passed to Verilator with --compiler-include, so it is included by the model's precompiled
// header AFTER verilated.h: the macros below replace the generated code's calls of the
// primitives of the same names (Verilator's own inline functions stay defined and are still
// used inside its runtime).
//
// Why: Verilator writes a sign extension as `lhs | -(lhs & (1 << (lbits - 1)))`, which gcc
// compiles to an and/neg/or chain (five or six instructions per operand); the GEMM's 256
// int8 x int8 products pay it twice each, plus 64-bit multiplies of the extended operands. The
// shift pair below, `(signed)(x << (W - lbits)) >> (W - lbits)`, is one movsx for 8-bit
// operands, and the products of sign-extended narrow operands narrow to 32-bit multiplies.
//
// Same values: Verilator passes these primitives CLEAN operands (no bit set at or above lbits;
// its own forms would be wrong otherwise). For every clean input both forms return the full
// sign extension to the output word (bits lbits-1 .. 63 or 31 all equal to bit lbits-1), so
// the results are identical in every bit, dirty bits above obits included. The products are
// computed in unsigned arithmetic (same bits as Verilator's signed product modulo 2**64 or
// 2**32, without signed-overflow undefined behaviour). tests/unit/test_verilated_fastops.py
// checks every (obits, lbits) pair against Verilator's functions on random and edge inputs.

#ifndef TESSERA_VERILATED_FASTOPS_H_
#define TESSERA_VERILATED_FASTOPS_H_

#include <cstdint>

static inline uint32_t tessera_sext_i(int lbits, uint32_t lhs) {
    const int shift = 32 - lbits;
    return static_cast<uint32_t>(static_cast<int32_t>(lhs << shift) >> shift);
}

static inline uint64_t tessera_sext_q(int lbits, uint64_t lhs) {
    const int shift = 64 - lbits;
    return static_cast<uint64_t>(static_cast<int64_t>(lhs << shift) >> shift);
}

#define VL_EXTENDS_II(obits, lbits, lhs) tessera_sext_i((lbits), (lhs))
#define VL_EXTENDS_QI(obits, lbits, lhs) tessera_sext_q((lbits), (lhs))
#define VL_EXTENDS_QQ(obits, lbits, lhs) tessera_sext_q((lbits), (lhs))
#define VL_MULS_III(lbits, lhs, rhs) \
    (tessera_sext_i((lbits), (lhs)) * tessera_sext_i((lbits), (rhs)))
#define VL_MULS_QQQ(lbits, lhs, rhs) \
    (tessera_sext_q((lbits), (lhs)) * tessera_sext_q((lbits), (rhs)))

#endif  // TESSERA_VERILATED_FASTOPS_H_
