//! Whole-container verification: every listed file present, of the listed
//! size, with the listed sha256, and every stage file structurally valid.

use std::path::Path;

use serde::Serialize;

use crate::checksum::sha256_file;
use crate::error::FormatError;
use crate::header::StageKind;
use crate::manifest::Manifest;
use crate::reader::StageFile;

/// What is wrong with one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// The file is absent.
    Missing,
    /// The file is not a regular file (e.g. a symbolic link or a directory).
    NotRegular,
    /// The size differs from the manifest (truncated or extra bytes).
    Size {
        /// Size in the manifest.
        expected: u64,
        /// Size on disk.
        actual: u64,
    },
    /// The sha256 differs from the manifest.
    Checksum {
        /// Digest in the manifest.
        expected: String,
        /// Digest of the file on disk.
        actual: String,
    },
    /// The stage file's header is invalid or does not hold the stage the manifest says.
    Structure {
        /// What is wrong.
        reason: String,
    },
    /// The file could not be read.
    Unreadable {
        /// The operating system's message.
        reason: String,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Missing => write!(f, "missing"),
            Problem::NotRegular => write!(f, "not a regular file"),
            Problem::Size { expected, actual } => {
                let what = if actual < expected {
                    "truncated"
                } else {
                    "has extra bytes"
                };
                write!(f, "{what}: {actual} bytes, manifest says {expected}")
            }
            Problem::Checksum { expected, actual } => {
                write!(f, "sha256 mismatch: file has {actual}, manifest says {expected} (damaged, or from another container)")
            }
            Problem::Structure { reason } => write!(f, "invalid stage file: {reason}"),
            Problem::Unreadable { reason } => write!(f, "unreadable: {reason}"),
        }
    }
}

/// One damaged file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileProblem {
    /// File name inside the container.
    pub file: String,
    /// What is wrong.
    pub problem: Problem,
}

/// The result of verifying a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct VerifyReport {
    /// Files checked.
    pub files_checked: usize,
    /// Bytes hashed.
    pub bytes_checked: u64,
    /// Every problem found, in manifest order.
    pub problems: Vec<FileProblem>,
}

impl VerifyReport {
    /// Whether the container is intact.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The stage a listed file must hold, from the manifest's `stages`.
fn expected_stage(m: &Manifest, name: &str) -> Option<(StageKind, Option<u32>)> {
    if name == m.stages.embed {
        return Some((StageKind::Embed, None));
    }
    if name == m.stages.head {
        return Some((StageKind::Head, None));
    }
    m.stages
        .layers
        .iter()
        .position(|l| l == name)
        .map(|i| (StageKind::Layer, Some(i as u32)))
}

/// Checks one listed file: presence, size, structure (for stage files), and sha256 unless `hash` is false.
pub fn check_file(dir: &Path, m: &Manifest, name: &str, hash: bool) -> Option<Problem> {
    let entry = m.file(name)?;
    let path = match Manifest::resolve(dir, name) {
        Ok(p) => p,
        Err(_) => return Some(Problem::NotRegular),
    };
    let meta = match std::fs::metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(Problem::Missing),
        Err(e) => {
            return Some(Problem::Unreadable {
                reason: e.to_string(),
            })
        }
    };
    if !meta.is_file() {
        return Some(Problem::NotRegular);
    }
    if meta.len() != entry.bytes {
        return Some(Problem::Size {
            expected: entry.bytes,
            actual: meta.len(),
        });
    }
    if let Some((stage, layer)) = expected_stage(m, name) {
        match StageFile::open(&path) {
            Ok(f) if f.header().stage != stage || f.header().layer != layer => {
                return Some(Problem::Structure {
                    reason: format!(
                        "holds stage {:?} layer {:?}, manifest expects {:?} layer {:?}",
                        f.header().stage,
                        f.header().layer,
                        stage,
                        layer
                    ),
                })
            }
            Ok(_) => {}
            Err(e) => {
                return Some(Problem::Structure {
                    reason: e.to_string(),
                })
            }
        }
    }
    if hash {
        match sha256_file(&path) {
            Ok((_, actual)) if actual != entry.sha256 => {
                return Some(Problem::Checksum {
                    expected: entry.sha256.clone(),
                    actual,
                })
            }
            Ok(_) => {}
            Err(FormatError::Io { source, .. }) => {
                return Some(Problem::Unreadable {
                    reason: source.to_string(),
                })
            }
            Err(e) => {
                return Some(Problem::Unreadable {
                    reason: e.to_string(),
                })
            }
        }
    }
    None
}

/// Verifies every file the manifest lists (sizes, structure, sha256).
pub fn verify_container(dir: &Path, m: &Manifest) -> VerifyReport {
    let mut report = VerifyReport::default();
    for f in &m.files {
        report.files_checked += 1;
        match check_file(dir, m, &f.path, true) {
            Some(problem) => report.problems.push(FileProblem {
                file: f.path.clone(),
                problem,
            }),
            None => report.bytes_checked += f.bytes,
        }
    }
    report
}
