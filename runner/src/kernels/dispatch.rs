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

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
