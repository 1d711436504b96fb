//! The generic decoder of SPEC.md §5.2, driven only by the manifest's
//! architecture description, computing in f32 from streamed stage bytes.

pub mod attention;
pub mod linear;
pub mod moe;
pub mod ops;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use strata_format::header::StageKind;
use strata_format::layout;
use strata_format::manifest::Architecture;
use strata_format::names::*;

use crate::container::{Container, StageInfo, Weight};
use crate::error::{Result, RunnerError};
use crate::kernels::Layout;
use crate::stream::{ExpertFetch, Streamer};
use attention::{attend, AttnShape, KvCache};
use linear::{linear_groups, linear_into};
use moe::{moe_block, LayerSource};
use ops::*;

/// A layer's bytes as the streamer hands them.
struct LayerBytes<'a> {
    stage: &'a StageInfo,
    bytes: &'a [u8],
    /// Its tensors laid out for the kernels ([`Layout::Interleaved8`]).
    interleaved: &'a [String],
}

/// Which positions' logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Only the last position.
    Last,
    /// Every position of the input.
    All,
}

/// Logits of one or more positions.
#[derive(Debug, Clone)]
pub struct Logits {
    /// Vocabulary size (row width).
    pub vocab: usize,
    /// `[rows, vocab]`.
    pub data: Vec<f32>,
}

impl Logits {
    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.data.len() / self.vocab.max(1)
    }
}

/// One sequence's state: its KV cache (per layer), length, token ids, and
/// whether its cache was computed with LongRoPE's long factors.
#[derive(Debug, Clone, Default)]
struct Sequence {
    cache: Vec<KvCache>,
    pos: usize,
    ids: Vec<u32>,
    long_rope: bool,
}

/// The decoder's state: the architecture, rotary tables and one KV cache per
/// sequence of the batch (one sequence unless [`Model::set_batch`] says otherwise).
pub struct Model {
    arch: Architecture,
    rope: RopeTables,
    /// The sliding-window layers' tables, where they differ (Gemma 3).
    sliding_rope: Option<RopeTables>,
    seqs: Vec<Sequence>,
    final_norm: Vec<f32>,
    ctx: usize,
}

/// The rows of the batch's activation matrix that belong to one sequence:
/// `n` rows from `row`, the first `skip` of them cached positions computed
/// again (their logits are not returned).
#[derive(Debug, Clone, Copy)]
struct Span {
    seq: usize,
    row: usize,
    n: usize,
    skip: usize,
}

/// Checks that every stage holds exactly the tensors the architecture needs
/// (the tables of [`strata_format::layout`]), with the right shapes, and that
/// each routed expert's tensors are stored together.
pub fn check_shapes(c: &Container) -> Result<()> {
    let a = &c.manifest.architecture;
    let mut stages = vec![
        (&c.embed, layout::embed_stage(a)),
        (&c.head, layout::head_stage(a)),
    ];
    stages.extend(
        c.layers
            .iter()
            .enumerate()
            .map(|(i, l)| (l, layout::layer_stage(a, i as u64))),
    );
    for (s, table) in &stages {
        for slot in &table.tensors {
            let e = s.entry(&slot.name)?;
            if e.shape != slot.shape {
                return Err(RunnerError::Tensor {
                    file: s.name.clone(),
                    tensor: slot.name.clone(),
                    reason: format!(
                        "shape {:?}, the architecture needs {:?}",
                        e.shape, slot.shape
                    ),
                });
            }
        }
        if let (StageKind::Layer, Some(m)) = (table.kind, &a.moe) {
            for e in 0..m.num_experts {
                layout::expert_range(&s.header, Path::new(&s.name), s.len, e)?;
            }
        }
    }
    // Every tensor a stage holds must be one the maths uses: a tensor this
    // runner does not know (a later format's) is refused, never ignored.
    let (fixed, layers) = stages.split_at(2);
    for (s, table) in std::iter::once(&fixed[0])
        .chain(layers)
        .chain(std::iter::once(&fixed[1]))
    {
        let used: HashSet<&str> = table.tensors.iter().map(|t| t.name.as_str()).collect();
        if let Some(t) = s
            .header
            .tensors
            .iter()
            .find(|t| !used.contains(t.name.as_str()))
        {
            return Err(RunnerError::Tensor {
                file: s.name.clone(),
                tensor: t.name.clone(),
                reason: "not a tensor of this architecture as the manifest describes it (a newer format, or a manifest that does not match the files)".into(),
            });
        }
    }
    Ok(())
}

impl Model {
    /// A model for container `c` with a KV cache of `ctx` positions.
    pub fn new(c: &Arc<Container>, ctx: usize) -> Result<Model> {
        check_shapes(c)?;
        let bytes = c.head.read_encoded(FINAL_NORM)?;
        let final_norm = c
            .head
            .encoded_weight(&bytes, FINAL_NORM)?
            .to_f32(&c.head.name, FINAL_NORM)?;
        let arch = c.manifest.architecture.clone();
        if let Some(limit) = arch.max_context.filter(|&l| ctx as u64 > l) {
            return Err(RunnerError::Unsupported(format!(
                "a context of {ctx} positions: {} changes its maths past {limit} positions (dynamic NTK RoPE or log-n attention scaling), which the container does not describe; use --ctx {limit} or less",
                arch.source_class
            )));
        }
        let mut m = Model {
            rope: RopeTables::new(&arch.rope),
            sliding_rope: arch.sliding_rope.as_ref().map(RopeTables::new),
            seqs: Vec::new(),
            arch,
            final_norm,
            ctx,
        };
        m.set_batch(1);
        Ok(m)
    }

    /// Makes room for `n` independent sequences, all empty.
    pub fn set_batch(&mut self, n: usize) {
        let layers = self.arch.num_layers as usize;
        self.seqs = vec![
            Sequence {
                cache: vec![KvCache::default(); layers],
                ..Sequence::default()
            };
            n.max(1)
        ];
    }

    /// Number of sequences the model holds a KV cache for.
    pub fn batch_size(&self) -> usize {
        self.seqs.len()
    }

    /// Empties sequence `seq` (a new conversation in that slot of the batch);
    /// the others are untouched. Out-of-range sequences are ignored.
    pub fn reset_sequence(&mut self, seq: usize) {
        if let Some(s) = self.seqs.get_mut(seq) {
            for c in &mut s.cache {
                c.k.clear();
                c.v.clear();
            }
            s.pos = 0;
            s.ids.clear();
            s.long_rope = false;
        }
    }

    /// Positions held in the KV cache of the first sequence.
    pub fn position(&self) -> usize {
        self.seqs[0].pos
    }

    /// Positions held in the KV cache of sequence `seq` (0 outside the batch).
    pub fn position_of(&self, seq: usize) -> usize {
        self.seqs.get(seq).map_or(0, |s| s.pos)
    }

    /// The context length.
    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// The architecture.
    pub fn arch(&self) -> &Architecture {
        &self.arch
    }

    /// Forgets every position of the first sequence from `pos` on (0 resets the conversation).
    pub fn truncate(&mut self, pos: usize) {
        let kd = (self.arch.num_kv_heads * self.arch.head_dim) as usize;
        let seq = &mut self.seqs[0];
        for c in &mut seq.cache {
            c.k.truncate(pos * kd);
            c.v.truncate(pos * kd);
        }
        seq.pos = seq.pos.min(pos);
        seq.ids.truncate(pos);
    }

    /// Runs `ids` (appended after the cached positions of the first sequence)
    /// through every layer, each layer once for all of them, and returns the
    /// wanted logits.
    pub fn forward(&mut self, s: &mut Streamer, ids: &[u32], want: Want) -> Result<Logits> {
        let mut out = self.forward_batch(s, &[(0, ids)], want)?;
        Ok(out.remove(0))
    }

    /// Runs several sequences at once: each `(sequence, ids)` appends `ids`
    /// to that sequence. Every layer is fetched once and serves all of them;
    /// returns the wanted logits of each entry, in order.
    ///
    /// With LongRoPE, a sequence is always computed with the factor set its
    /// new length calls for: when that differs from the set its cache was
    /// computed with (it grows past the original context), its cached
    /// positions are computed again, as transformers' Phi-3 generation does.
    pub fn forward_batch(
        &mut self,
        s: &mut Streamer,
        batch: &[(usize, &[u32])],
        want: Want,
    ) -> Result<Vec<Logits>> {
        for &(seq, ids) in batch {
            let state = self.seqs.get(seq).ok_or_else(|| {
                RunnerError::Invalid(format!(
                    "sequence {seq} is outside the batch of {}",
                    self.seqs.len()
                ))
            })?;
            if ids.is_empty() {
                return Err(RunnerError::Invalid("no tokens to process".into()));
            }
            if state.pos + ids.len() > self.ctx {
                return Err(RunnerError::Invalid(format!(
                    "context full: {} cached + {} new tokens exceed --ctx {}",
                    state.pos,
                    ids.len(),
                    self.ctx
                )));
            }
        }
        let mut spans = Vec::with_capacity(batch.len());
        let mut all_ids = Vec::new();
        for &(seq, ids) in batch {
            let state = &mut self.seqs[seq];
            let long = self.rope.uses_long(state.pos + ids.len());
            let row = all_ids.len();
            let mut skip = 0;
            if long != state.long_rope && state.pos > 0 {
                skip = state.pos;
                all_ids.extend_from_slice(&state.ids);
                state.pos = 0;
                for c in &mut state.cache {
                    c.k.clear();
                    c.v.clear();
                }
            }
            state.long_rope = long;
            all_ids.extend_from_slice(ids);
            spans.push(Span {
                seq,
                row,
                n: skip + ids.len(),
                skip,
            });
        }
        let n = all_ids.len();
        let hidden = self.arch.hidden_size as usize;
        let c = s.container().clone();
        let e = c.embed.entry(EMBED_TOKENS)?;
        let (dtype, block) = (e.dtype, e.block_size.unwrap_or(1) as usize);
        let mut x = vec![0f32; n * hidden];
        for (row, bytes) in x.chunks_mut(hidden).zip(s.embedding_rows(&all_ids)?) {
            strata_format::codec::decode_row(dtype, &bytes, block, row).map_err(|err| {
                RunnerError::Tensor {
                    file: c.embed.name.clone(),
                    tensor: EMBED_TOKENS.into(),
                    reason: err.to_string(),
                }
            })?;
        }
        if let Some(m) = self.arch.embedding_multiplier {
            x.iter_mut().for_each(|v| *v *= m as f32);
        }
        for l in 0..c.layers.len() {
            s.with_layer(l, |stage, bytes, inter, fetch| {
                let src = LayerBytes {
                    stage,
                    bytes,
                    interleaved: inter,
                };
                self.layer(l, src, fetch, &mut x, &spans)
            })?;
        }
        // The rows whose logits are wanted, and how many belong to each entry.
        let mut rows = Vec::new();
        let mut counts = Vec::with_capacity(spans.len());
        for sp in &spans {
            let (first, count) = match want {
                Want::All => (sp.row + sp.skip, sp.n - sp.skip),
                Want::Last => (sp.row + sp.n - 1, 1),
            };
            rows.extend_from_slice(&x[first * hidden..(first + count) * hidden]);
            counts.push(count);
        }
        let m = rows.len() / hidden;
        let xs = rms_norm(&rows, &self.final_norm, self.arch.norm_eps as f32, hidden);
        let vocab = self.arch.vocab_size as usize;
        let mut data = vec![0f32; m * vocab];
        let (hstage, hname) = c.head_weight_stage();
        s.for_each_head_chunk(|r0, w| {
            linear_into(&xs, m, &w, &mut data, vocab, r0, (&hstage.name, hname))
        })?;
        if let Some(cap) = self.arch.final_logit_softcap {
            soft_cap(&mut data, cap as f32);
        }
        for sp in &spans {
            let seq = &mut self.seqs[sp.seq];
            seq.pos += sp.n;
            seq.ids
                .extend_from_slice(&all_ids[sp.row + sp.skip..sp.row + sp.n]);
        }
        let mut out = Vec::with_capacity(spans.len());
        let mut at = 0;
        for count in counts {
            out.push(Logits {
                vocab,
                data: data[at * vocab..(at + count) * vocab].to_vec(),
            });
            at += count;
        }
        Ok(out)
    }

    fn layer(
        &mut self,
        l: usize,
        src: LayerBytes<'_>,
        fetch: &mut ExpertFetch<'_>,
        x: &mut [f32],
        spans: &[Span],
    ) -> Result<()> {
        let LayerBytes {
            stage,
            bytes,
            interleaved,
        } = src;
        let a = &self.arch;
        let n = x.len() / a.hidden_size as usize;
        let hidden = a.hidden_size as usize;
        let hd = a.head_dim as usize;
        let (heads, kv_heads) = (a.num_attention_heads as usize, a.num_kv_heads as usize);
        let eps = a.norm_eps as f32;
        let file = stage.name.as_str();
        let w = |name: &str| -> Result<Weight<'_>> {
            let w = stage.weight(bytes, 0, name)?;
            Ok(match interleaved.iter().any(|n| n == name) {
                true => Weight {
                    layout: Layout::Interleaved8,
                    ..w
                },
                false => w,
            })
        };
        let vecf = |name: &str| w(name)?.to_f32(file, name);
        // Each sequence's rows go the way they would alone (see `linear_groups`),
        // so a sequence's output does not depend on what it is batched with.
        let groups: Vec<usize> = spans.iter().map(|sp| sp.n).collect();
        let lin = |inp: &[f32], name: &str| -> Result<Vec<f32>> {
            let mut y = linear_groups(inp, &groups, &w(name)?, (file, name))?;
            let bias = format!("{name}.bias");
            if stage.header.tensor(&bias).is_some() {
                add_bias(&mut y, &vecf(&bias)?);
            }
            Ok(y)
        };

        let h = rms_norm(x, &vecf(ATTN_NORM)?, eps, hidden);
        let mut q = lin(&h, ATTN_Q)?;
        let mut k = lin(&h, ATTN_K)?;
        let v = lin(&h, ATTN_V)?;
        if a.qk_norm {
            rms_norm_in_place(&mut q, &vecf(ATTN_Q_NORM)?, eps, hd);
            rms_norm_in_place(&mut k, &vecf(ATTN_K_NORM)?, eps, hd);
        }
        let window = a.sliding_window.filter(|_| {
            a.sliding_window_layers
                .as_ref()
                .is_none_or(|ls| ls.contains(&(l as u64)))
        });
        let shape = AttnShape {
            heads,
            kv_heads,
            head_dim: hd,
            scale: a
                .attention_scale
                .map_or(1.0 / (hd as f32).sqrt(), |s| s as f32),
            window: window.map(|w| w as usize),
            softcap: a.attn_logit_softcap.map(|c| c as f32),
            alibi: a.alibi,
        };
        let (qd, kd) = (heads * hd, kv_heads * hd);
        let mut att = vec![0f32; n * qd];
        for sp in spans {
            let seq = &mut self.seqs[sp.seq];
            let qs = &mut q[sp.row * qd..(sp.row + sp.n) * qd];
            let ks = &mut k[sp.row * kd..(sp.row + sp.n) * kd];
            if !a.alibi {
                let (inv, scale) = match (&self.sliding_rope, window) {
                    (Some(t), Some(_)) => (t.inv(false), t.scale),
                    _ => (self.rope.inv(seq.long_rope), self.rope.scale),
                };
                apply_rope(qs, heads, hd, seq.pos, inv, scale);
                apply_rope(ks, kv_heads, hd, seq.pos, inv, scale);
            }
            let cache = &mut seq.cache[l];
            cache.k.extend_from_slice(ks);
            cache
                .v
                .extend_from_slice(&v[sp.row * kd..(sp.row + sp.n) * kd]);
            let out = attend(qs, sp.n, seq.pos, cache, shape);
            att[sp.row * qd..(sp.row + sp.n) * qd].copy_from_slice(&out);
        }
        let mut o = lin(&att, ATTN_O)?;
        if a.post_norms {
            rms_norm_in_place(&mut o, &vecf(ATTN_POST_NORM)?, eps, hidden);
        }
        add_in_place(x, &o);

        let h2 = rms_norm(x, &vecf(MLP_NORM)?, eps, hidden);
        let mut d = match &a.moe {
            Some(m) => moe_block(
                &h2,
                n,
                hidden,
                m,
                a.activation,
                LayerSource {
                    stage,
                    bytes,
                    fetch,
                },
            )?,
            None => {
                let mut g = lin(&h2, MLP_GATE)?;
                let u = lin(&h2, MLP_UP)?;
                gated_activation(&mut g, &u, a.activation);
                lin(&g, MLP_DOWN)?
            }
        };
        if a.post_norms {
            rms_norm_in_place(&mut d, &vecf(MLP_POST_NORM)?, eps, hidden);
        }
        add_in_place(x, &d);
        Ok(())
    }
}
