//! Measures the reconstruction error of each encoding on a real checkpoint:
//! relative RMSE (`‖W − decode(encode(W))‖ / ‖W‖`) over every 2-D weight.
//!
//! Usage: `cargo run --release -p strata-prep --example quant_error -- MODEL_DIR/model.safetensors [BLOCK...]`

use std::path::PathBuf;

use strata_format::{codec, DType};
use strata_prep::safetensors::{to_f32, Shard};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(
        args.next()
            .ok_or_else(|| anyhow::anyhow!("usage: quant_error FILE.safetensors [BLOCK...]"))?,
    );
    let blocks: Vec<u32> = args.map(|b| b.parse()).collect::<Result<_, _>>()?;
    let blocks = if blocks.is_empty() {
        vec![64, 32]
    } else {
        blocks
    };
    let shard = Shard::open(&path)?;
    for (dtype, block) in blocks
        .iter()
        .flat_map(|&b| [(DType::Nf4, b), (DType::Int8, b)])
    {
        let (mut err, mut sig, mut count) = (0f64, 0f64, 0usize);
        for t in shard.tensors() {
            if t.shape.len() != 2 {
                continue;
            }
            let Some(sd) = t.source_dtype() else { continue };
            let n: usize = t.shape.iter().product::<u64>() as usize;
            let mut w = vec![0f32; n];
            to_f32(sd, shard.data(t), &mut w);
            let enc = codec::encode(dtype, &w, &t.shape, Some(block))?;
            let dec = codec::decode(dtype, &enc, &t.shape, Some(block))?;
            for (a, b) in w.iter().zip(&dec) {
                err += f64::from(a - b).powi(2);
                sig += f64::from(*a).powi(2);
            }
            count += n;
        }
        println!(
            "{dtype} block {block}: relative RMSE {:.5} over {count} weights",
            (err / sig).sqrt()
        );
    }
    Ok(())
}
