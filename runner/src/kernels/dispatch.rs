//! Which instruction-set path the kernels take: detected once at run time,
//! or chosen explicitly (tests, benchmarks).

use std::sync::OnceLock;

/// An instruction-set path of the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable scalar code: the reference every SIMD path is tested against.
    Scalar,
    /// x86-64 AVX2 with FMA and F16C.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL/VNNI (with AVX2, FMA and F16C).
    Avx512,
    /// aarch64 Advanced SIMD (NEON).
    Neon,
}

/// Every path, in order of preference (best last).
const ALL: [Isa; 4] = [Isa::Scalar, Isa::Neon, Isa::Avx2, Isa::Avx512];

/// Environment variable that picks a path (`scalar`, `avx2`, `avx512`, `neon`)
/// instead of the best one, e.g. to compare paths in a benchmark.
pub const ISA_ENV: &str = "STRATA_KERNELS";

impl Isa {
    /// Lower-case name, as accepted by [`ISA_ENV`].
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    /// Whether this machine can run the path.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.is_available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            _ => false,
        }
    }

    /// Every path this machine can run, the scalar reference first.
    pub fn available() -> Vec<Isa> {
        ALL.into_iter().filter(|i| i.is_available()).collect()
    }

    /// The path the runner uses: the best available one, unless
    /// [`ISA_ENV`] names another available path. Decided once per process.
    pub fn selected() -> Isa {
        static SELECTED: OnceLock<Isa> = OnceLock::new();
        *SELECTED.get_or_init(|| {
            let best = *Isa::available().last().unwrap_or(&Isa::Scalar);
            let Ok(want) = std::env::var(ISA_ENV) else {
                return best;
            };
            match ALL.into_iter().find(|i| i.name() == want.trim()) {
                Some(isa) if isa.is_available() => isa,
                _ => {
                    log::warn!(
                        "{ISA_ENV}={want}: not a kernel path this machine runs; using {}",
                        best.name()
                    );
                    best
                }
            }
        })
    }
}

/// How the `nf4` and `int8` kernels quantize the activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActQuant {
    /// int8 in blocks of 32 (llama.cpp's Q8_0), dotted with int8 weights
    /// (NF4 codes × 127) in byte instructions: the default.
    Int8,
    /// int16 per weight block, dotted with int16 weights (NF4 codes × 1024)
    /// in 16-bit instructions: half the throughput, closer to the exact
    /// product of the decoded weights. Also used for blocks the int8
    /// kernels do not take (an `nf4` block size that is not a
    /// multiple of 64, rows ending in a partial block).
    Int16,
}

/// Environment variable that picks [`ActQuant`]: `int8` (default) or `int16`.
pub const ACTS_ENV: &str = "STRATA_ACTS";

impl ActQuant {
    /// The runner's choice: [`ActQuant::Int8`] unless [`ACTS_ENV`] says
    /// `int16`. Decided once per process.
    pub fn selected() -> ActQuant {
        static SELECTED: OnceLock<ActQuant> = OnceLock::new();
        *SELECTED.get_or_init(|| match std::env::var(ACTS_ENV) {
            Ok(v) if v.trim() == "int16" => ActQuant::Int16,
            Ok(v) if v.trim() != "int8" => {
                log::warn!("{ACTS_ENV}={v}: neither int8 nor int16; using int8");
                ActQuant::Int8
            }
            _ => ActQuant::Int8,
        })
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
