//! Writes a random-weight F16 Llama checkpoint of a real model's shape, in the
//! Hugging Face layout (`config.json`, `generation_config.json`, safetensors
//! shards and `model.safetensors.index.json`), for benchmarking `prep`.
//!
//! ```text
//! cargo run --release -p strata-prep --example make_random_checkpoint -- \
//!     --shape llama2-7b --out ~/.cache/strata-bench/llama2-7b
//! ```
//!
//! Shapes: `llama2-7b` (32 layers, hidden 4096, 32 heads, 32 KV heads,
//! intermediate 11008, vocab 32000, untied head; about 13.5 GB split like the
//! real checkpoint into a ~10 GB and a ~3.5 GB shard) and `tiny` (4 layers,
//! hidden 64, two shards) for quick checks. Tensors are streamed from a
//! seeded generator, so memory use is a few MiB whatever the size, and the
//! same seed gives the same bytes. The index is written last: a folder
//! holding it is complete.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use clap::{Parser, ValueEnum};
use serde_json::json;

/// The model shapes this tool can write.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ShapeName {
    /// Llama 2 7B.
    #[value(name = "llama2-7b")]
    Llama2_7b,
    /// A 4-layer toy model.
    Tiny,
}

/// Dimensions of a Llama model and how to shard it.
struct Shape {
    vocab: u64,
    hidden: u64,
    intermediate: u64,
    layers: u64,
    heads: u64,
    kv_heads: u64,
    max_position: u64,
    /// Largest shard in bytes (transformers' `max_shard_size`).
    max_shard_bytes: u64,
}

impl ShapeName {
    fn shape(self) -> Shape {
        match self {
            ShapeName::Llama2_7b => Shape {
                vocab: 32000,
                hidden: 4096,
                intermediate: 11008,
                layers: 32,
                heads: 32,
                kv_heads: 32,
                max_position: 4096,
                max_shard_bytes: 10_000_000_000,
            },
            ShapeName::Tiny => Shape {
                vocab: 256,
                hidden: 64,
                intermediate: 160,
                layers: 4,
                heads: 4,
                kv_heads: 2,
                max_position: 256,
                max_shard_bytes: 250_000,
            },
        }
    }
}

/// Write a random-weight F16 Llama checkpoint.
#[derive(Debug, Parser)]
struct Args {
    /// Which model's shape to write.
    #[arg(long, value_enum)]
    shape: ShapeName,
    /// Destination folder (created).
    #[arg(long)]
    out: PathBuf,
    /// Seed of the weight generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// A tensor to write: name, shape, and whether it is a norm weight (values near 1).
struct Tensor {
    name: String,
    shape: Vec<u64>,
    norm: bool,
}

impl Tensor {
    fn new(name: String, shape: Vec<u64>, norm: bool) -> Tensor {
        Tensor { name, shape, norm }
    }

    fn bytes(&self) -> u64 {
        self.shape.iter().product::<u64>() * 2
    }
}

/// All tensors in model order.
fn tensors(s: &Shape) -> Vec<Tensor> {
    let head_dim = s.hidden / s.heads;
    let kv = s.kv_heads * head_dim;
    let mut t = vec![Tensor::new(
        "model.embed_tokens.weight".into(),
        vec![s.vocab, s.hidden],
        false,
    )];
    for i in 0..s.layers {
        let p = format!("model.layers.{i}.");
        t.push(Tensor::new(
            format!("{p}input_layernorm.weight"),
            vec![s.hidden],
            true,
        ));
        t.push(Tensor::new(
            format!("{p}self_attn.q_proj.weight"),
            vec![s.hidden, s.hidden],
            false,
        ));
        t.push(Tensor::new(
            format!("{p}self_attn.k_proj.weight"),
            vec![kv, s.hidden],
            false,
        ));
        t.push(Tensor::new(
            format!("{p}self_attn.v_proj.weight"),
            vec![kv, s.hidden],
            false,
        ));
        t.push(Tensor::new(
            format!("{p}self_attn.o_proj.weight"),
            vec![s.hidden, s.hidden],
            false,
        ));
        t.push(Tensor::new(
            format!("{p}post_attention_layernorm.weight"),
            vec![s.hidden],
            true,
        ));
        t.push(Tensor::new(
            format!("{p}mlp.gate_proj.weight"),
            vec![s.intermediate, s.hidden],
            false,
        ));
        t.push(Tensor::new(
            format!("{p}mlp.up_proj.weight"),
            vec![s.intermediate, s.hidden],
            false,
        ));
        t.push(Tensor::new(
            format!("{p}mlp.down_proj.weight"),
            vec![s.hidden, s.intermediate],
            false,
        ));
    }
    t.push(Tensor::new(
        "model.norm.weight".into(),
        vec![s.hidden],
        true,
    ));
    t.push(Tensor::new(
        "lm_head.weight".into(),
        vec![s.vocab, s.hidden],
        false,
    ));
    t
}

/// SplitMix64: a small, fast, seedable generator.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Random F16 bits: weights of magnitude 2⁻⁸…2⁻⁴ with a random sign, or
/// norm weights in [1, 1.06).
fn f16_bits(r: u16, norm: bool) -> u16 {
    if norm {
        0x3C00 | (r & 0x3F)
    } else {
        let sign = r & 0x8000;
        let exponent = 7 + ((r >> 10) & 0x3);
        sign | (exponent << 10) | (r & 0x3FF)
    }
}

fn write_shard(path: &Path, tensors: &[&Tensor], rng: &mut SplitMix) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for t in tensors {
        let end = offset + t.bytes();
        header.insert(
            t.name.clone(),
            json!({"dtype": "F16", "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut text = serde_json::to_string(&header)?;
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let tmp = path.with_extension("safetensors.tmp");
    let mut out = BufWriter::with_capacity(8 << 20, File::create(&tmp)?);
    out.write_all(&(text.len() as u64).to_le_bytes())?;
    out.write_all(text.as_bytes())?;
    let mut buf = vec![0u8; 4 << 20];
    for t in tensors {
        let mut left = t.bytes() as usize;
        while left > 0 {
            let n = left.min(buf.len());
            for chunk in buf[..n].chunks_exact_mut(8) {
                let r = rng.next();
                for (k, pair) in chunk.chunks_exact_mut(2).enumerate() {
                    let bits = f16_bits((r >> (16 * k)) as u16, t.norm);
                    pair.copy_from_slice(&bits.to_le_bytes());
                }
            }
            out.write_all(&buf[..n])?;
            left -= n;
        }
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let s = args.shape.shape();
    std::fs::create_dir_all(&args.out)?;
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": s.hidden,
        "intermediate_size": s.intermediate,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "vocab_size": s.vocab,
        "max_position_embeddings": s.max_position,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": null,
        "hidden_act": "silu",
        "tie_word_embeddings": false,
        "attention_bias": false,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float16"
    });
    std::fs::write(
        args.out.join("config.json"),
        serde_json::to_vec_pretty(&config)?,
    )?;
    let generation = json!({"bos_token_id": 1, "eos_token_id": 2});
    std::fs::write(
        args.out.join("generation_config.json"),
        serde_json::to_vec_pretty(&generation)?,
    )?;

    let all = tensors(&s);
    let mut shards: Vec<Vec<&Tensor>> = vec![Vec::new()];
    let mut size = 0u64;
    for t in &all {
        if size + t.bytes() > s.max_shard_bytes && !shards.last().is_some_and(Vec::is_empty) {
            shards.push(Vec::new());
            size = 0;
        }
        size += t.bytes();
        shards.last_mut().expect("a shard").push(t);
    }
    let n = shards.len();
    let mut rng = SplitMix(args.seed);
    let mut weight_map = serde_json::Map::new();
    let mut total = 0u64;
    for (i, shard) in shards.iter().enumerate() {
        let name = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        let path = args.out.join(&name);
        eprintln!("writing {} ({} tensors)", path.display(), shard.len());
        write_shard(&path, shard, &mut rng)?;
        for t in shard {
            weight_map.insert(t.name.clone(), json!(name));
            total += t.bytes();
        }
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    std::fs::write(
        args.out.join("model.safetensors.index.json"),
        serde_json::to_vec_pretty(&index)?,
    )?;
    println!("{}", args.out.display());
    Ok(())
}
