//! `runner inspect DIR [--json]`.

use anyhow::Result;
use clap::Args;
use strata_format::Manifest;
use strata_runner::units::human;

use crate::Dir;

/// Arguments of `inspect`.
#[derive(Args)]
pub struct InspectArgs {
    #[command(flatten)]
    dir: Dir,
    /// Print the manifest as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `inspect`.
pub fn run(mut a: InspectArgs) -> Result<i32> {
    a.dir.resolve()?;
    let m = Manifest::load(&a.dir.dir)?;
    if a.json {
        println!("{}", String::from_utf8_lossy(&m.to_json()));
        return Ok(0);
    }
    let ar = &m.architecture;
    let q = &m.quantization;
    match strata_runner::remote::lookup(&a.dir.dir) {
        Some(r) => println!(
            "container:     {} (cached in {})",
            r.url(),
            r.dir().display()
        ),
        None => println!("container:     {}", a.dir.dir.display()),
    }
    println!(
        "format:        {} (written by {} {})",
        m.format_version, m.tool.name, m.tool.version
    );
    println!("architecture:  {} ({})", ar.family, ar.source_class);
    println!(
        "shape:         {} layers, hidden {}, {} heads / {} kv heads × {}, intermediate {}, vocab {}",
        ar.num_layers, ar.hidden_size, ar.num_attention_heads, ar.num_kv_heads, ar.head_dim, ar.intermediate_size, ar.vocab_size
    );
    let rope = |r: &strata_format::manifest::Rope| {
        format!(
            "theta {}, rotary dim {}, scaling {}",
            r.theta,
            r.rotary_dim,
            r.scaling
                .as_ref()
                .map_or("none".to_string(), |s| format!("{s:?}"))
        )
    };
    match &ar.sliding_rope {
        None => println!("rope:          {}", rope(&ar.rope)),
        Some(sr) => {
            println!("rope:          full layers: {}", rope(&ar.rope));
            println!("               sliding layers: {}", rope(sr));
        }
    }
    println!(
        "options:       norm eps {}, activation {:?}, tied embeddings {}, qkv bias {}, qk norm {}, sliding window {:?}, max positions {}",
        ar.norm_eps, ar.activation, ar.tie_word_embeddings, ar.attention_bias, ar.qk_norm, ar.sliding_window, ar.max_position_embeddings
    );
    if ar.post_norms
        || ar.sliding_window_layers.is_some()
        || ar.attention_scale.is_some()
        || ar.attn_logit_softcap.is_some()
        || ar.final_logit_softcap.is_some()
        || ar.embedding_multiplier.is_some()
    {
        println!(
            "extras:        post norms {}, window layers {:?}, attention scale {:?}, soft-caps {:?} / {:?}, embedding multiplier {:?}",
            ar.post_norms, ar.sliding_window_layers, ar.attention_scale, ar.attn_logit_softcap, ar.final_logit_softcap, ar.embedding_multiplier
        );
    }
    if ar.alibi || ar.max_context.is_some() {
        println!(
            "positions:     {}, context limit {}",
            if ar.alibi { "ALiBi (no RoPE)" } else { "RoPE" },
            ar.max_context.map_or("none".into(), |c| c.to_string())
        );
    }
    println!(
        "quantization:  weights {}, embeddings {}, head {}, block {}",
        q.weights,
        q.embeddings,
        q.head,
        q.block_size.map_or("-".into(), |b| b.to_string())
    );
    let size = |name: &str| m.file(name).map_or(0, |f| f.bytes);
    let layers: u64 = m.stages.layers.iter().map(|l| size(l)).sum();
    println!(
        "embeddings:    {} ({})",
        human(size(&m.stages.embed)),
        m.stages.embed
    );
    println!(
        "layers:        {} in {} files ({} each on average)",
        human(layers),
        m.stages.layers.len(),
        human(layers / (m.stages.layers.len().max(1) as u64))
    );
    println!(
        "head:          {} ({})",
        human(size(&m.stages.head)),
        m.stages.head
    );
    let total: u64 = m.files.iter().map(|f| f.bytes).sum();
    println!("total:         {} in {} files", human(total), m.files.len());
    println!(
        "source:        {} {}{}",
        m.source.kind,
        m.source.location,
        m.source
            .revision
            .as_ref()
            .map_or(String::new(), |r| format!(" @ {r}"))
    );
    Ok(0)
}
