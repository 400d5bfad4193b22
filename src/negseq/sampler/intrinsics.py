"""CPU operations numba does not expose: a 64-bit multiply-high, a prefetch, and a byte copy."""

from __future__ import annotations

from typing import Any

from llvmlite import ir
from numba import extending, types
from numba.core import cgutils

# numba types an intrinsic as its typing function (`typingctx` first), but jitted code calls it
# with the operands only: to a type checker the decorated names are untyped.
intrinsic: Any = extending.intrinsic


@intrinsic
def mulhi(typingctx, a, b):
    """High 64 bits of the 128-bit product a * b (one `mul` on x86-64)."""
    sig = types.uint64(types.uint64, types.uint64)

    def codegen(context, builder, signature, args):
        wide = ir.IntType(128)
        product = builder.mul(builder.zext(args[0], wide), builder.zext(args[1], wide))
        return builder.trunc(builder.lshr(product, ir.Constant(wide, 64)), ir.IntType(64))

    return sig, codegen


@intrinsic
def prefetch(typingctx, array, index):
    """Start loading array[index] into cache without waiting for it (a hint: no fault, no result).

    A plain load that misses would hold up the loop until it arrives; a prefetch lets the
    loop go on working on data it already has.
    """
    sig = types.void(array, types.int64)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        address = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        signature_ir = ir.FunctionType(ir.VoidType(), [address.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, signature_ir, "llvm.prefetch.p0")
        builder.call(fn, [address, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def copy_bytes(typingctx, dst, dst_start, src, src_start, count):
    """dst[dst_start:dst_start + count] = src[src_start:src_start + count] as one memcpy (uint8 arrays).

    A byte loop over short values runs a few cycles a byte; memcpy moves them in words.
    """
    sig = types.void(dst, types.int64, src, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        dst_array, dst_start, src_array, src_start, count = args
        dst_data = context.make_array(signature.args[0])(context, builder, dst_array).data
        src_data = context.make_array(signature.args[2])(context, builder, src_array).data
        cgutils.raw_memcpy(
            builder, builder.gep(dst_data, [dst_start]), builder.gep(src_data, [src_start]), count, 1
        )
        return context.get_dummy_value()

    return sig, codegen
