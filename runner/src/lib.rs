//! # strata-runner
//!
//! Streams a strata container layer by layer and computes a Llama-family
//! decoder on the CPU: I/O backends (io_uring, pread, mmap), the prefetching
//! streamer, the memory plan, the model, tokenization, chat templates,
//! sampling, and containers on object storage (S3, HTTP). The `runner` binary
//! is a thin command-line layer over it.

pub mod batching;
pub mod container;
pub mod engine;
pub mod error;
pub mod io;
pub mod kernels;
pub mod lru;
pub mod model;
pub mod plan;
pub mod remote;
pub mod sampling;
pub mod speculative;
pub mod stream;
pub mod text;
pub mod units;

pub use error::{Result, RunnerError};
