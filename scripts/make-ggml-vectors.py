#!/usr/bin/env python3
"""Test vectors for the GGML block decoders of format-spec/src/codec/ggml.rs, from gguf-py's dequantizers.

For each block type: 4 blocks of seeded random bytes whose f16 scale fields hold random finite values, and
the f32 values gguf-py (gguf==0.19.0, numpy 2.4.6: the packages of scripts/fetch-model.sh's venv) decodes
them to, as hex bit patterns. Writes format-spec/tests/vectors/ggml_vectors.json; the Rust test
`ggml_vectors` checks strata-format's decoders against it.
Usage: PY=$STRATA_MODELS/.venv-fixture/bin/python; $PY scripts/make-ggml-vectors.py
"""
import json
import os

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

# type -> byte offsets of its f16 scale fields in a block
SCALES = {
    "Q4_0": (T.Q4_0, [0]), "Q4_1": (T.Q4_1, [0, 2]), "Q5_0": (T.Q5_0, [0]), "Q5_1": (T.Q5_1, [0, 2]),
    "Q8_0": (T.Q8_0, [0]), "Q2_K": (T.Q2_K, [80, 82]), "Q3_K": (T.Q3_K, [108]), "Q4_K": (T.Q4_K, [0, 2]),
    "Q5_K": (T.Q5_K, [0, 2]), "Q6_K": (T.Q6_K, [208]),
}
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "Q8_0": 34, "Q2_K": 84, "Q3_K": 110,
               "Q4_K": 144, "Q5_K": 176, "Q6_K": 210}
BLOCKS = 4


def main():
    rng = np.random.default_rng(20261206)
    out = {"source": "gguf-py 0.19.0 gguf.quants.dequantize", "blocks": BLOCKS, "types": {}}
    for name, (t, offsets) in SCALES.items():
        bb = BLOCK_BYTES[name]
        raw = bytearray(rng.integers(0, 256, size=bb * BLOCKS, dtype=np.uint8).tobytes())
        for b in range(BLOCKS):
            for off in offsets:
                v = np.float16(rng.uniform(-0.05, 0.05) if off else rng.uniform(0.001, 0.05))
                raw[b * bb + off:b * bb + off + 2] = v.tobytes()
        vals = dequantize(np.frombuffer(bytes(raw), dtype=np.uint8), t).astype(np.float32).reshape(-1)
        assert np.isfinite(vals).all(), name
        out["types"][name] = {"bytes": bytes(raw).hex(), "f32_bits": vals.view(np.uint32).tolist()}
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "format-spec", "tests", "vectors", "ggml_vectors.json")
    with open(path, "w") as f:
        json.dump(out, f, sort_keys=True)
        f.write("\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
