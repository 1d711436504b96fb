#!/usr/bin/env python3
"""Independent reference for the NF4 and int8 block encodings of format-spec/SPEC.md §4.

Pure Python (no numpy), written from the spec's text, not from the Rust code.
The NF4 code values are bitsandbytes' published table (functional.py, `get_4bit_type("nf4")`,
as listed in QLoRA's appendix), given here in full double precision and rounded to float32.
f32 arithmetic is emulated with struct round-trips: a quotient of two f32 computed in double
and rounded once to f32 equals the f32 quotient (53 >= 2*24+2 bits), and likewise for sums.

Writes format-spec/tests/vectors/codec_vectors.json; the Rust test
`codec_vectors` checks that strata-format's encoders produce these exact bytes.
Usage: python3 scripts/make-codec-vectors.py
"""
import json
import math
import os
import struct

NF4_DOUBLE = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def f16_bytes(x):
    return struct.pack("<e", x)


def f16(x):
    return struct.unpack("<e", struct.pack("<e", x))[0]


NF4 = [f32(v) for v in NF4_DOUBLE]
MIDS = [f32((NF4[i] + NF4[i + 1]) / 2) for i in range(15)]


def nf4_code(x):
    return sum(1 for m in MIDS if x >= m)


SEARCH_STEPS = 7
SEARCH_STEP = f32(0.03)


def lane_total(lanes):
    """((L0 + L1) + (L2 + L3)) + ((L4 + L5) + (L6 + L7)) in binary32."""
    a = f32(f32(lanes[0] + lanes[1]) + f32(lanes[2] + lanes[3]))
    b = f32(f32(lanes[4] + lanes[5]) + f32(lanes[6] + lanes[7]))
    return f32(a + b)


def search_nf4_block(vals):
    """SPEC.md 4.4's scale search for one block's real elements: (f16 scale, codes)."""
    n = len(vals)
    absmax = max(abs(v) for v in vals)
    if absmax == 0.0:
        return 0.0, [7] * n
    lanes = [0.0] * 8
    for i, x in enumerate(vals):
        lanes[i % 8] = f32(lanes[i % 8] + f32(x * x))
    sigma2 = f32(f32(2.0 * lane_total(lanes)) / f32(n))
    best = None
    for k in range(-SEARCH_STEPS, SEARCH_STEPS + 1):
        inv = f32(f32(1.0 + f32(k * SEARCH_STEP)) / absmax)
        codes = [nf4_code(f32(x * inv)) for x in vals]
        lx, lq = [0.0] * 8, [0.0] * 8
        for i, (x, c) in enumerate(zip(vals, codes)):
            q = NF4[c]
            wq = f32(f32(sigma2 + f32(x * x)) * q)
            lx[i % 8] = f32(lx[i % 8] + f32(wq * x))
            lq[i % 8] = f32(lq[i % 8] + f32(wq * q))
        sqx, sq2 = lane_total(lx), lane_total(lq)
        if sq2 > 0.0:
            score = f32(f32(sqx * sqx) / sq2)
            if best is None or score > best[0]:
                best = (score, f32(sqx / sq2), codes)
    if best is None:
        inv = f32(1.0 / absmax)
        d, codes = f16(absmax), [nf4_code(f32(x * inv)) for x in vals]
    else:
        d, codes = f16(best[1]), best[2]
    if d == 0.0:
        codes = [7] * n
    return d, codes


def encode_nf4_row(row, block):
    out = bytearray()
    for start in range(0, len(row), block):
        vals = row[start:start + block]
        d, real = search_nf4_block(vals)
        codes = real + [7] * (block - len(real))
        out += f16_bytes(d)
        half = block // 2
        for j in range(half):
            out.append(codes[j] | (codes[j + half] << 4))
    return bytes(out)


def round_half_away(x):
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def encode_int8_row(row, block):
    out = bytearray()
    for start in range(0, len(row), block):
        vals = row[start:start + block]
        absmax = max(abs(v) for v in vals)
        d = f16(f32(absmax / 127.0))
        codes = [0] * block
        if d > 0:
            for i, v in enumerate(vals):
                q = round_half_away(f32(v / d))
                codes[i] = max(-127, min(127, q))
        out += f16_bytes(d)
        out += bytes((c + 256) % 256 for c in codes)
    return bytes(out)


class Lcg:
    """Deterministic generator (64-bit LCG, Knuth's MMIX constants)."""

    def __init__(self, seed):
        self.s = seed

    def uniform(self):
        self.s = (self.s * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        return (self.s >> 11) / float(1 << 53)


def make_data(rng, rows, cols, heavy):
    data = []
    for _ in range(rows * cols):
        u = rng.uniform() * 2 - 1
        v = u * 0.05
        if heavy and rng.uniform() < 0.02:
            v *= 40.0  # rare large outliers, as in real weight matrices
        data.append(f32(v))
    return data


def main():
    rng = Lcg(20261122)
    cases = []
    for name, rows, cols, block, heavy in [
        ("aligned", 3, 128, 64, False),
        ("padded", 2, 100, 64, True),
        ("block32", 2, 96, 32, True),
    ]:
        data = make_data(rng, rows, cols, heavy)
        # one all-zero block exercises the zero-scale rule
        if name == "aligned":
            for i in range(64):
                data[i] = 0.0
        nf4 = b"".join(encode_nf4_row(data[r * cols:(r + 1) * cols], block) for r in range(rows))
        i8 = b"".join(encode_int8_row(data[r * cols:(r + 1) * cols], block) for r in range(rows))
        cases.append({
            "name": name, "rows": rows, "cols": cols, "block": block,
            "data_f32_hex": struct.pack("<%df" % len(data), *data).hex(),
            "nf4_hex": nf4.hex(), "int8_hex": i8.hex(),
        })
    out = {
        "generator": "scripts/make-codec-vectors.py",
        "nf4_codes_f32_hex": struct.pack("<16f", *NF4).hex(),
        "cases": cases,
    }
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "..", "format-spec", "tests", "vectors", "codec_vectors.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(path)


if __name__ == "__main__":
    main()
