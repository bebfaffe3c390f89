"""Bit casts between float32 and uint32 for Numba's nopython code (an LLVM ``bitcast``):
what the storage codecs (:mod:`fastopt.kernels._codecs`) need to read and write bfloat16 and
float16 bit patterns."""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["f32_bits", "f32_from_bits"]


@intrinsic
def f32_bits(typingctx, x):
    """The uint32 bit pattern of a float32."""
    if x != types.float32:
        return None
    sig = types.uint32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return sig, codegen


@intrinsic
def f32_from_bits(typingctx, u):
    """The float32 whose bit pattern is the uint32 ``u``."""
    if u != types.uint32:
        return None
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return sig, codegen
