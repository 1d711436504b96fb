#!/usr/bin/env bash
# bench-ggml-kernels.sh -- the GGML-encoding kernels (runner/src/kernels/ggml) against llama.cpp's.
#
# One 1536×8960 weight matrix (Qwen2.5-1.5B's down projection) × 1 and × 8 activation rows, on
# THREADS threads (default 2), best of 1 s each:
#   strata     the integer kernels (kernels::linear_t, as the runner calls it; activation
#              quantization included) against the former decode-to-f32 path, "hot" (the same
#              matrix again and again: it stays in the last-level cache) and "streamed" (8 copies
#              in turn, so the weights come from memory as in decoding) -- the #[ignore]d test
#              kernels::ggml::tests::ggml_speed;
#   llama.cpp  ggml-cpu's mul_mat on the same shapes and the same hot/streamed split (a small C
#              program against the libggml of llama-cpp-python, scripts/llama-cpp.sh; source
#              quantization of the activations included), unless LLAMA=0.
# Env: TYPES (default q4_k,q6_k; any of q4_0 q4_1 q5_0 q5_1 q8_0 q2_k q3_k q4_k q5_k q6_k),
#      ROWS (default 1,8), THREADS (default 2: the strata benchmark's pool is fixed at 2),
#      LLAMA_PY (a python with llama_cpp installed; default scripts/llama-cpp.sh python);
#      LLAMA=0 or STRATA=0 leaves one side out.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TYPES="${TYPES:-q4_k,q6_k}"
ROWS="${ROWS:-1,8}"
THREADS="${THREADS:-2}"
log() { echo "bench-ggml-kernels.sh: $*" >&2; }

if [ "${STRATA:-1}" != 0 ]; then
  log "strata (release build of the runner's tests)"
  STRATA_BENCH_TYPES="$TYPES" STRATA_BENCH_ROWS="$ROWS" \
    cargo test --release -p strata-runner --lib -- \
    --ignored --nocapture --exact kernels::ggml::tests::ggml_speed 2>&1 | grep -E "n=|kernels:"
fi

[ "${LLAMA:-1}" = 0 ] && exit 0
PY="${LLAMA_PY:-$(scripts/llama-cpp.sh python)}"
PKG="$("$PY" -c 'import llama_cpp, os; print(os.path.dirname(llama_cpp.__file__))')"
LIB="$PKG/lib"
INC="$(dirname "$PKG")/include"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cat >"$WORK/bench.c" <<'EOF'
// ggml-cpu's mul_mat of an M×K quantized matrix with N f32 rows: "hot" (one matrix again and
// again) and "streamed" (8 different matrices in one graph, time per matrix), best of 1 s.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include "ggml.h"
#include "ggml-cpu.h"

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

int main(int argc, char **argv) {
    const int M = 1536, K = 8960, copies = 8;
    const int threads = atoi(argv[1]);
    const char *types = argv[2], *rows = argv[3];
    enum ggml_type all[10] = { GGML_TYPE_Q4_K, GGML_TYPE_Q6_K, GGML_TYPE_Q8_0, GGML_TYPE_Q5_0, GGML_TYPE_Q4_0,
                               GGML_TYPE_Q4_1, GGML_TYPE_Q5_K, GGML_TYPE_Q3_K, GGML_TYPE_Q2_K, GGML_TYPE_Q5_1 };
    float *src = malloc(sizeof(float) * M * K);
    srand(1);
    for (int ti = 0; ti < 10; ti++) {
        char name[16];
        snprintf(name, sizeof name, "%s", ggml_type_name(all[ti]));
        char list[256];
        snprintf(list, sizeof list, ",%s,", types);
        char key[24];
        snprintf(key, sizeof key, ",%s,", name);
        if (!strcasestr(list, key)) continue;
        char rl[256];
        snprintf(rl, sizeof rl, "%s", rows);
        for (char *tok = strtok(rl, ","); tok; tok = strtok(NULL, ",")) {
            int N = atoi(tok);
            for (int streamed = 0; streamed < 2; streamed++) {
                int k = streamed ? copies : 1;
                struct ggml_init_params p = { .mem_size = (size_t) 256 << 20, .mem_buffer = NULL, .no_alloc = false };
                struct ggml_context *ctx = ggml_init(p);
                struct ggml_tensor *b = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, K, N);
                float *bd = (float *) b->data;
                for (long i = 0; i < (long) K * N; i++) bd[i] = rand() / (float) RAND_MAX - 0.5f;
                struct ggml_cgraph *gf = ggml_new_graph(ctx);
                size_t bytes = 0;
                for (int c = 0; c < k; c++) {
                    for (long i = 0; i < (long) M * K; i++) src[i] = (rand() / (float) RAND_MAX - 0.5f) * 0.1f;
                    struct ggml_tensor *a = ggml_new_tensor_2d(ctx, all[ti], K, M);
                    ggml_quantize_chunk(all[ti], src, a->data, 0, M, K, NULL);
                    bytes = ggml_nbytes(a);
                    ggml_build_forward_expand(gf, ggml_mul_mat(ctx, a, b));
                }
                struct ggml_cplan plan = ggml_graph_plan(gf, threads, NULL);
                plan.work_data = malloc(plan.work_size + 64);
                ggml_graph_compute(gf, &plan);
                double best = 1e9, start = now();
                while (now() - start < 1.0) {
                    double t = now();
                    ggml_graph_compute(gf, &plan);
                    double e = (now() - t) / k;
                    if (e < best) best = e;
                }
                printf("llama.cpp %s n=%d %8s: %6.2f ms (%4.1f GB/s), %d threads\n", name, N,
                       streamed ? "streamed" : "hot", best * 1e3, bytes / best / 1e9, threads);
                free(plan.work_data);
                ggml_free(ctx);
            }
        }
    }
    return 0;
}
EOF
log "llama.cpp ($LIB)"
"${CC:-cc}" -O2 "$WORK/bench.c" -I"$INC" -L"$LIB" -lggml-base -lggml-cpu -lggml \
  -Wl,-rpath,"$LIB" -o "$WORK/bench"
"$WORK/bench" "$THREADS" "$TYPES" "$ROWS"
