"""bitsandbytes' dynamic quantization maps, as float32 bit patterns (generated, do not edit).

``bitsandbytes.functional.create_dynamic_map(signed=True)`` and ``(signed=False)`` (bitsandbytes
0.50.2, torch 2.13.0 on a CPU whose torch capability is AVX2 or AVX512: torch.linspace's last bits
depend on it, so the map is kept as data rather than recomputed).  tests/test_int8.py checks them
against bitsandbytes where it is installed and against the formula in float64 everywhere.
"""

SIGNED = (
    0xBF7E3333, 0xBF7A999A, 0xBF770000, 0xBF736666, 0xBF6FCCCD, 0xBF6C3333, 0xBF68999A,
    0xBF650000, 0xBF616666, 0xBF5DCCCD, 0xBF5A3333, 0xBF56999A, 0xBF530000, 0xBF4F6666,
    0xBF4BCCCD, 0xBF483333, 0xBF44999A, 0xBF410000, 0xBF3D6666, 0xBF39CCCD, 0xBF363334,
    0xBF32999A, 0xBF2F0000, 0xBF2B6666, 0xBF27CCCD, 0xBF243334, 0xBF20999A, 0xBF1D0000,
    0xBF196666, 0xBF15CCCD, 0xBF123334, 0xBF0E999A, 0xBF0B0000, 0xBF076666, 0xBF03CCCC,
    0xBF003333, 0xBEF93332, 0xBEF20000, 0xBEEACCCC, 0xBEE3999A, 0xBEDC6666, 0xBED53333,
    0xBECE0000, 0xBEC6CCCC, 0xBEBF999A, 0xBEB86666, 0xBEB13333, 0xBEAA0000, 0xBEA2CCCC,
    0xBE9B999A, 0xBE946666, 0xBE8D3334, 0xBE860000, 0xBE7D9999, 0xBE6F3333, 0xBE60CCCD,
    0xBE526666, 0xBE440000, 0xBE35999A, 0xBE273333, 0xBE18CCCD, 0xBE0A6666, 0xBDF80000,
    0xBDDB3334, 0xBDC9EB85, 0xBDC428F7, 0xBDBE6667, 0xBDB8A3D7, 0xBDB2E148, 0xBDAD1EB8,
    0xBDA75C2A, 0xBDA1999A, 0xBD9BD70A, 0xBD96147B, 0xBD9051EB, 0xBD8A8F5D, 0xBD84CCCD,
    0xBD7E147B, 0xBD728F5D, 0xBD670A3D, 0xBD5B851F, 0xBD500000, 0xBD447AE1, 0xBD38F5C3,
    0xBD2D70A3, 0xBD21EB85, 0xBD166667, 0xBD0AE148, 0xBCFEB852, 0xBCE7AE15, 0xBCD0A3D7,
    0xBCB9999A, 0xBCA28F5D, 0xBC8B851F, 0xBC68F5C3, 0xBC3AE148, 0xBC1F3B64, 0xBC160418,
    0xBC0CCCCD, 0xBC039581, 0xBBF4BC6A, 0xBBE24DD3, 0xBBCFDF3B, 0xBBBD70A4, 0xBBAB020D,
    0xBB989374, 0xBB8624DD, 0xBB676C8A, 0xBB428F5C, 0xBB1DB22D, 0xBAF1A9FC, 0xBAA7EF9D,
    0xBA7765FF, 0xBA59E83E, 0xBA3C6A80, 0xBA1EECC1, 0xBA016F01, 0xB9C7E283, 0xB98CE705,
    0xB923D70B, 0xB8BA1F4B, 0xB88AEFB3, 0xB8378034, 0xB7B24206, 0xB70205FF, 0xB65A1A94,
    0xB513A3B7, 0x00000000, 0x3513A3B7, 0x365A1A94, 0x370205FF, 0x37B24206, 0x38378034,
    0x388AEFB3, 0x38BA1F4B, 0x3923D70B, 0x398CE705, 0x39C7E283, 0x3A016F01, 0x3A1EECC1,
    0x3A3C6A80, 0x3A59E83E, 0x3A7765FF, 0x3AA7EF9D, 0x3AF1A9FC, 0x3B1DB22D, 0x3B428F5C,
    0x3B676C8A, 0x3B8624DD, 0x3B989374, 0x3BAB020D, 0x3BBD70A4, 0x3BCFDF3B, 0x3BE24DD3,
    0x3BF4BC6A, 0x3C039581, 0x3C0CCCCD, 0x3C160418, 0x3C1F3B64, 0x3C3AE148, 0x3C68F5C3,
    0x3C8B851F, 0x3CA28F5D, 0x3CB9999A, 0x3CD0A3D7, 0x3CE7AE15, 0x3CFEB852, 0x3D0AE148,
    0x3D166667, 0x3D21EB85, 0x3D2D70A3, 0x3D38F5C3, 0x3D447AE1, 0x3D500000, 0x3D5B851F,
    0x3D670A3D, 0x3D728F5D, 0x3D7E147B, 0x3D84CCCD, 0x3D8A8F5D, 0x3D9051EB, 0x3D96147B,
    0x3D9BD70A, 0x3DA1999A, 0x3DA75C2A, 0x3DAD1EB8, 0x3DB2E148, 0x3DB8A3D7, 0x3DBE6667,
    0x3DC428F7, 0x3DC9EB85, 0x3DDB3334, 0x3DF80000, 0x3E0A6666, 0x3E18CCCD, 0x3E273333,
    0x3E35999A, 0x3E440000, 0x3E526666, 0x3E60CCCD, 0x3E6F3333, 0x3E7D9999, 0x3E860000,
    0x3E8D3334, 0x3E946666, 0x3E9B999A, 0x3EA2CCCC, 0x3EAA0000, 0x3EB13333, 0x3EB86666,
    0x3EBF999A, 0x3EC6CCCC, 0x3ECE0000, 0x3ED53333, 0x3EDC6666, 0x3EE3999A, 0x3EEACCCC,
    0x3EF20000, 0x3EF93332, 0x3F003333, 0x3F03CCCC, 0x3F076666, 0x3F0B0000, 0x3F0E999A,
    0x3F123334, 0x3F15CCCD, 0x3F196666, 0x3F1D0000, 0x3F20999A, 0x3F243334, 0x3F27CCCD,
    0x3F2B6666, 0x3F2F0000, 0x3F32999A, 0x3F363334, 0x3F39CCCD, 0x3F3D6666, 0x3F410000,
    0x3F44999A, 0x3F483333, 0x3F4BCCCD, 0x3F4F6666, 0x3F530000, 0x3F56999A, 0x3F5A3333,
    0x3F5DCCCD, 0x3F616666, 0x3F650000, 0x3F68999A, 0x3F6C3333, 0x3F6FCCCD, 0x3F736666,
    0x3F770000, 0x3F7A999A, 0x3F7E3333, 0x3F800000
)

UNSIGNED = (
    0x00000000, 0x34AE7BAA, 0x35500998, 0x360E9B38, 0x3692CCF6, 0x36DE4C51, 0x3714E5D5,
    0x3783126E, 0x37E171A0, 0x381FE868, 0x384F1800, 0x387E479A, 0x3896BB99, 0x38AE5364,
    0x38C5EB31, 0x3906594B, 0x394154CA, 0x397C5049, 0x399BA5E4, 0x39B923A2, 0x39D6A163,
    0x39F41F22, 0x3A08CE71, 0x3A178D50, 0x3A264C30, 0x3A350B10, 0x3A43C9EF, 0x3A5288D0,
    0x3A6147AF, 0x3A70068E, 0x3A7EC56E, 0x3A958106, 0x3ABA5E35, 0x3ADF3B64, 0x3B020C4A,
    0x3B147AE1, 0x3B26E978, 0x3B395810, 0x3B4BC6A7, 0x3B5E3540, 0x3B70A3D7, 0x3B818937,
    0x3B8AC082, 0x3B93F7CF, 0x3B9D2F1A, 0x3BA66666, 0x3BAF9DB2, 0x3BB8D4FD, 0x3BC20C4A,
    0x3BCB4395, 0x3BD47AE1, 0x3BDDB22E, 0x3BE6E978, 0x3BF020C5, 0x3BF9580F, 0x3C0147AE,
    0x3C05E354, 0x3C0A7EF9, 0x3C0F1AA0, 0x3C13B645, 0x3C1851EB, 0x3C1CED92, 0x3C218937,
    0x3C2F5C2A, 0x3C466667, 0x3C5D70A3, 0x3C747AE2, 0x3C85C28F, 0x3C9147AF, 0x3C9CCCCD,
    0x3CA851EB, 0x3CB3D70B, 0x3CBF5C29, 0x3CCAE147, 0x3CD66667, 0x3CE1EB87, 0x3CED70A3,
    0x3CF8F5C3, 0x3D023D70, 0x3D080000, 0x3D0DC28F, 0x3D13851F, 0x3D1947AF, 0x3D1F0A3D,
    0x3D24CCCD, 0x3D2A8F5C, 0x3D3051EB, 0x3D36147B, 0x3D3BD70A, 0x3D41999A, 0x3D475C28,
    0x3D4D1EB8, 0x3D52E147, 0x3D58A3D7, 0x3D5E6667, 0x3D6428F7, 0x3D69EB87, 0x3D6FAE15,
    0x3D7570A3, 0x3D7B3333, 0x3D807AE2, 0x3D835C2A, 0x3D863D71, 0x3D891EB8, 0x3D8C0000,
    0x3D8EE148, 0x3D91C290, 0x3D94A3D7, 0x3D97851F, 0x3D9A6667, 0x3D9D47AF, 0x3DA028F6,
    0x3DA30A3E, 0x3DA5EB85, 0x3DA8CCCD, 0x3DABAE15, 0x3DAE8F5C, 0x3DB170A4, 0x3DB451EB,
    0x3DB73333, 0x3DBA147B, 0x3DBCF5C3, 0x3DBFD70B, 0x3DC2B852, 0x3DC5999A, 0x3DC87AE2,
    0x3DCB5C29, 0x3DD40000, 0x3DE26666, 0x3DF0CCCD, 0x3DFF3333, 0x3E06CCCC, 0x3E0E0000,
    0x3E153334, 0x3E1C6666, 0x3E23999A, 0x3E2ACCCC, 0x3E320000, 0x3E393334, 0x3E406666,
    0x3E47999A, 0x3E4ECCCC, 0x3E560000, 0x3E5D3334, 0x3E646666, 0x3E6B999A, 0x3E72CCCC,
    0x3E7A0000, 0x3E809999, 0x3E843333, 0x3E87CCCD, 0x3E8B6666, 0x3E8F0000, 0x3E92999A,
    0x3E963333, 0x3E99CCCC, 0x3E9D6666, 0x3EA10000, 0x3EA4999A, 0x3EA83333, 0x3EABCCCC,
    0x3EAF6666, 0x3EB30000, 0x3EB6999A, 0x3EBA3333, 0x3EBDCCCC, 0x3EC16666, 0x3EC50000,
    0x3EC8999A, 0x3ECC3333, 0x3ECFCCCC, 0x3ED36666, 0x3ED70000, 0x3EDA999A, 0x3EDE3333,
    0x3EE1CCCC, 0x3EE56666, 0x3EE90000, 0x3EEC999A, 0x3EF03333, 0x3EF3CCCC, 0x3EF76666,
    0x3EFB0000, 0x3EFE9999, 0x3F01199A, 0x3F02E666, 0x3F04B333, 0x3F068000, 0x3F084CCC,
    0x3F0A199A, 0x3F0BE666, 0x3F0DB334, 0x3F0F8000, 0x3F114CCD, 0x3F13199A, 0x3F14E666,
    0x3F16B334, 0x3F188000, 0x3F1A4CCD, 0x3F1C199A, 0x3F1DE666, 0x3F1FB334, 0x3F218000,
    0x3F234CCD, 0x3F25199A, 0x3F26E666, 0x3F28B334, 0x3F2A8000, 0x3F2C4CCD, 0x3F2E199A,
    0x3F2FE666, 0x3F31B334, 0x3F338000, 0x3F354CCD, 0x3F37199A, 0x3F38E666, 0x3F3AB334,
    0x3F3C8000, 0x3F3E4CCD, 0x3F40199A, 0x3F41E666, 0x3F43B334, 0x3F458000, 0x3F474CCC,
    0x3F49199A, 0x3F4AE666, 0x3F4CB334, 0x3F4E8000, 0x3F504CCC, 0x3F52199A, 0x3F53E666,
    0x3F55B334, 0x3F578000, 0x3F594CCC, 0x3F5B199A, 0x3F5CE666, 0x3F5EB334, 0x3F608000,
    0x3F624CCC, 0x3F64199A, 0x3F65E666, 0x3F67B334, 0x3F698000, 0x3F6B4CCC, 0x3F6D199A,
    0x3F6EE666, 0x3F70B334, 0x3F728000, 0x3F744CCC, 0x3F76199A, 0x3F77E666, 0x3F79B334,
    0x3F7B8000, 0x3F7D4CCC, 0x3F7F199A, 0x3F800000
)
import numpy as np  # noqa: E402 - the data above first

#: the lookup tables of the exact nearest code (see :func:`tables`): bucket ``b`` of a
#: magnitude's float32 bits ``a`` is ``min(max(a >> 15, B0), BMAX) - B0`` (8 mantissa bits per
#: bucket; everything below 2**-24 in bucket 0), ``NB`` buckets per sign
B0 = 0x33800000 >> 15      # 2**-24
BMAX = 0x3F800000 >> 15    # 1.0
NB = BMAX - B0 + 1


def qmap(signed):
    """The 256 values of the map, float32, ascending."""
    return np.array(SIGNED if signed else UNSIGNED, dtype=np.uint32).view(np.float32)


def midpoints(signed):
    """The 255 boundaries between neighbouring codes (float32, rounded from float64), then
    +inf: code ``c`` is nearest for ``mid[c-1] < y <= mid[c]``."""
    q = qmap(signed).astype(np.float64)
    return np.append(((q[:-1] + q[1:]) / 2).astype(np.float32), np.float32(np.inf))


def tables(signed):
    """``(mid, lo)``: for a normalised value ``y`` in [-1, 1] (unsigned: [0, 1]), with ``s`` its
    sign bit and ``b`` its bucket, the nearest code is ``lo[s*NB + b] + (y > mid[lo])``.

    ``lo`` is the code of the bucket's lowest value; the construction checks that no bucket
    holds more than one boundary, which makes the formula exact (``#{k: mid[k] < y}``)."""
    mid = midpoints(signed)
    b = np.arange(NB, dtype=np.int64)
    a_lo = np.where(b == 0, 0, (b + B0) << 15).astype(np.uint32)
    a_hi = (((b + B0 + 1) << 15) - 1).astype(np.uint32)
    lo_mag, hi_mag = a_lo.view(np.float32), np.minimum(a_hi.view(np.float32), np.float32(1))
    out = []
    for sign in ((1, -1) if signed else (1,)):
        low = lo_mag if sign > 0 else -hi_mag
        high = hi_mag if sign > 0 else -lo_mag
        lo = np.searchsorted(mid, low, side="left")
        nxt = mid[np.minimum(lo + 1, 255)]
        if not ((lo >= 254) | (nxt >= high)).all():
            raise AssertionError("a bucket holds two code boundaries")
        out.append(lo.astype(np.uint8))
    return mid, np.concatenate(out)


def packed_table(signed):
    """One 32-bit entry per bucket for the vector loops: ``lo | t << 8``.  Within a bucket every
    value shares its sign, exponent and top 8 mantissa bits, so ``y > mid[lo]`` is a test on the
    low 15 bits ``l`` of ``|y|``'s pattern: ``key > t`` with ``key = l`` for positive and
    ``0x7FFF - l`` for negative values, ``t`` from the boundary inside the bucket (``0x7FFF``,
    never, when there is none).  Built and checked against :func:`tables`."""
    mid, lo = tables(signed)
    out = []
    for sign in ((1, -1) if signed else (1,)):
        part = lo[:NB] if sign > 0 else lo[NB:]
        b = np.arange(NB, dtype=np.int64)
        m = mid[np.minimum(part.astype(np.int64), 255)]
        mbits = np.abs(m).astype(np.float32).view(np.uint32).astype(np.int64)
        inside = (np.minimum(np.maximum(mbits >> 15, B0), BMAX) - B0 == b) & np.isfinite(m) \
            & (b > 0) & ((m > 0) if sign > 0 else (m < 0))
        low = mbits & 0x7FFF
        t = np.where(inside, low if sign > 0 else 0x7FFF - low, 0x7FFF)
        out.append(part.astype(np.int64) | (t << 8))
    return np.concatenate(out).astype(np.int32)


#: the AVX-512 encoder (:func:`level_tables`): binade ``e`` of a magnitude is its float32
#: exponent field minus ``EOFF``, clamped to [0, 31]; a value whose position within its level is
#: within ``EPS`` of a code boundary is encoded again by the exact table path
EOFF = 96
EPS = 2.0 ** -12


def level_tables(signed):
    """``(ent, scale, offset, lohi)``: the tables of the AVX-512 encoder, which computes the
    code of a normalised magnitude ``a`` arithmetically instead of looking it up.

    The map's non-negative values are 0, seven decades ("levels") of equally spaced values
    (bitsandbytes' construction: 2**i of them in decade i, twice that in the unsigned map),
    and 1.  Level ``l`` of ``a`` is ``ent[e] >> 24`` (the level at the bottom of its binade
    ``e``) plus one when ``a``'s mantissa bits exceed ``ent[e] & 0xFFFFFF`` (the one level
    boundary inside that binade, a midpoint of the map; ``0xFFFFFF``: none); for a negative
    value "exceed" is "reach", the tie rule mirrored.  Within the level,
    ``t = a * scale[l] - offset[l]`` (float32, rounded at each step) is monotone in ``a`` and
    within ``D`` of the integer ``k + 1`` at the k-th midpoint of the level (code positions
    counted from the code of 0): so when ``t`` is at least ``EPS > D`` away from an integer its
    floor, clamped to ``[lohi & 0xFF, lohi >> 8]``, is exactly the nearest code's position, and
    otherwise the exact path decides.  The construction checks every assumption it uses (one
    boundary per binade, the level structure, ``D < EPS / 4``, the signed map's symmetry) and
    raises AssertionError if the maps ever stop fitting it; tests/test_int8.py compares the
    compiled encoder with ``searchsorted`` around every midpoint, and with the table path on
    every float32 in [-m, m] for three block maxima m (the encoder takes x * (1/m), the
    table path x / m)."""
    f32 = np.float32
    q, mid = qmap(signed), midpoints(signed)[:-1]
    pos0 = 127 if signed else 0
    if signed and not (np.array_equal(-q[:127][::-1], q[128:255])
                       and np.array_equal(-mid[:127][::-1], mid[127:254])):
        raise AssertionError("the signed map is not symmetric")
    counts = [1] + [2 ** (i + (0 if signed else 1)) for i in range(7)] + [1]
    base = np.cumsum([0] + counts[:-1])
    vals = q[pos0:].astype(np.float64)
    decade = np.floor(np.log10(vals[1:-1])).astype(int)
    if (vals[0] != 0 or vals[-1] != 1 or len(vals) != sum(counts)
            or list(np.unique(decade, return_counts=True)[1]) != counts[1:-1]):
        raise AssertionError("the map's levels are not bitsandbytes' dynamic construction")
    scale, offset = np.zeros(16, f32), np.full(16, f32(-0.5))
    lohi = np.zeros(16, np.int64)
    worst = 0.0
    for lv, (n, b) in enumerate(zip(counts, base)):
        lohi[lv] = b | ((b + n - 1) << 8)
        if lv in (0, len(counts) - 1):
            offset[lv] = f32(-(b + 0.5))
            continue
        scale[lv] = f32(n / (0.9 * 10.0 ** (lv - 7)))
        offset[lv] = f32(0.1 * n / 0.9 - b)
        m = mid[pos0 + b: pos0 + b + n - 1]
        t = (m * scale[lv]).astype(f32) - offset[lv]
        if n > 1:
            worst = max(worst, float(np.abs(t.astype(np.float64) - np.arange(b + 1, b + n)).max()))
    if not worst < EPS / 4:
        raise AssertionError(f"level positions are {worst} from the midpoints")
    thresholds = [mid[pos0 + b - 1] for b in base[1:]]
    ent = []
    for e in range(32):
        lo, hi = f32(2.0 ** (e + EOFF - 127)), f32(2.0 ** (e + EOFF - 126))
        inside = [t for t in thresholds if lo <= t < hi]
        if len(inside) > 1:
            raise AssertionError("a binade holds two level boundaries")
        field = int(inside[0].view(np.uint32)) & 0x7FFFFF if inside else 0xFFFFFF
        if inside and not 16 <= field <= 0x7FFFFF - 16:
            # (the encoder's x * (1/m) marks values within 8 units of the boundary unsure,
            # comparing mantissas within the binade)
            raise AssertionError("a level boundary is within 16 units of its binade's end")
        ent.append(field | (sum(1 for t in thresholds if t < lo) << 24))
    return (np.array(ent, np.int64).astype(np.int32), scale, offset, lohi.astype(np.int32))
