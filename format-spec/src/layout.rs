//! The container's layout, the one normative statement of it in code: which
//! stage files an architecture has (SPEC.md §2), the tensor table of each
//! stage in file order with every tensor's shape and which `quantization`
//! field encodes it (§6, §5.3), and where a layer's routed experts lie in
//! its file (§6, "MoE layers").
//!
//! Everything that needs the table derives it from here: a conversion's plan
//! (`strata-prep` adds each tensor's source), random-weight containers and
//! memory plans of named shapes ([`crate::shapes`]), and a runner's check of
//! the headers it opens. A new tensor or encoding lands here, once.

use std::path::Path;

use crate::dtype::DType;
use crate::error::{FormatError, Result};
use crate::header::{FileHeader, StageKind, TensorEntry, ALIGN};
use crate::manifest::{Architecture, Quantization};
use crate::names;
use crate::writer::{stage_file_size, TensorSpec};

/// One projection of a routed expert (SPEC.md §6: `moe.expert.E.{gate,up,down}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpertPart {
    /// `moe.expert.E.gate`, `[expert_intermediate_size, hidden_size]`.
    Gate,
    /// `moe.expert.E.up`, `[expert_intermediate_size, hidden_size]`.
    Up,
    /// `moe.expert.E.down`, `[hidden_size, expert_intermediate_size]`.
    Down,
}

impl ExpertPart {
    /// The three parts in the order a layer file stores them.
    pub const ALL: [ExpertPart; 3] = [ExpertPart::Gate, ExpertPart::Up, ExpertPart::Down];

    /// The part's name within the tensor name (`gate`, `up`, `down`).
    pub fn as_str(self) -> &'static str {
        names::MOE_EXPERT_PARTS[self as usize]
    }
}

/// What a tensor of SPEC.md §6 is: one variant per row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// `embed.tokens` (embed stage).
    EmbedTokens,
    /// `attn_norm`.
    AttnNorm,
    /// `attn.q`.
    AttnQ,
    /// `attn.k`.
    AttnK,
    /// `attn.v`.
    AttnV,
    /// `attn.o`.
    AttnO,
    /// `attn.q.bias` (`attention_bias`).
    AttnQBias,
    /// `attn.k.bias` (`attention_bias`).
    AttnKBias,
    /// `attn.v.bias` (`attention_bias`).
    AttnVBias,
    /// `attn.o.bias` (`attention_out_bias`).
    AttnOBias,
    /// `attn.q_norm` (`qk_norm`).
    AttnQNorm,
    /// `attn.k_norm` (`qk_norm`).
    AttnKNorm,
    /// `attn_post_norm` (`post_norms`).
    AttnPostNorm,
    /// `mlp_norm`.
    MlpNorm,
    /// `mlp.gate` (dense layers).
    MlpGate,
    /// `mlp.up` (dense layers).
    MlpUp,
    /// `mlp.down` (dense layers).
    MlpDown,
    /// `mlp.gate.bias` (`mlp_bias`).
    MlpGateBias,
    /// `mlp.up.bias` (`mlp_bias`).
    MlpUpBias,
    /// `mlp.down.bias` (`mlp_bias`).
    MlpDownBias,
    /// `mlp_post_norm` (`post_norms`).
    MlpPostNorm,
    /// `moe.router` (MoE layers).
    MoeRouter,
    /// `moe.shared.gate` (shared expert).
    MoeSharedGate,
    /// `moe.shared.up` (shared expert).
    MoeSharedUp,
    /// `moe.shared.down` (shared expert).
    MoeSharedDown,
    /// `moe.shared_gate`, the shared expert's scalar gate.
    MoeSharedGateScalar,
    /// `moe.expert.E.{gate,up,down}`: routed expert `expert`'s projection `part`.
    MoeExpert {
        /// The expert's index, `0 ≤ expert < num_experts`.
        expert: u64,
        /// Which projection.
        part: ExpertPart,
    },
    /// `final_norm` (head stage).
    FinalNorm,
    /// `head` (head stage, absent when `tie_word_embeddings`).
    Head,
}

impl Role {
    /// The tensor's normalized name (SPEC.md §6).
    pub fn name(self) -> String {
        use Role::*;
        match self {
            EmbedTokens => names::EMBED_TOKENS.into(),
            AttnNorm => names::ATTN_NORM.into(),
            AttnQ => names::ATTN_Q.into(),
            AttnK => names::ATTN_K.into(),
            AttnV => names::ATTN_V.into(),
            AttnO => names::ATTN_O.into(),
            AttnQBias => names::ATTN_Q_BIAS.into(),
            AttnKBias => names::ATTN_K_BIAS.into(),
            AttnVBias => names::ATTN_V_BIAS.into(),
            AttnOBias => names::ATTN_O_BIAS.into(),
            AttnQNorm => names::ATTN_Q_NORM.into(),
            AttnKNorm => names::ATTN_K_NORM.into(),
            AttnPostNorm => names::ATTN_POST_NORM.into(),
            MlpNorm => names::MLP_NORM.into(),
            MlpGate => names::MLP_GATE.into(),
            MlpUp => names::MLP_UP.into(),
            MlpDown => names::MLP_DOWN.into(),
            MlpGateBias => names::MLP_GATE_BIAS.into(),
            MlpUpBias => names::MLP_UP_BIAS.into(),
            MlpDownBias => names::MLP_DOWN_BIAS.into(),
            MlpPostNorm => names::MLP_POST_NORM.into(),
            MoeRouter => names::MOE_ROUTER.into(),
            MoeSharedGate => names::MOE_SHARED_GATE.into(),
            MoeSharedUp => names::MOE_SHARED_UP.into(),
            MoeSharedDown => names::MOE_SHARED_DOWN.into(),
            MoeSharedGateScalar => names::MOE_SHARED_GATE_SCALAR.into(),
            MoeExpert { expert, part } => names::moe_expert(expert, part.as_str()),
            FinalNorm => names::FINAL_NORM.into(),
            Head => names::HEAD.into(),
        }
    }

    /// Which `quantization` field encodes the tensor (SPEC.md §5.3, §6): the
    /// embeddings and an untied head their own; the decoder layers' linear
    /// weights `weights`; norms, biases, the router and the shared expert's
    /// scalar gate are always f32 (the router is small, and quantizing it
    /// could change which experts are chosen).
    pub fn encoding(self) -> Encoding {
        use Role::*;
        match self {
            EmbedTokens => Encoding::Embeddings,
            Head => Encoding::Head,
            AttnQ
            | AttnK
            | AttnV
            | AttnO
            | MlpGate
            | MlpUp
            | MlpDown
            | MoeSharedGate
            | MoeSharedUp
            | MoeSharedDown
            | MoeExpert { .. } => Encoding::Weights,
            AttnNorm | AttnQBias | AttnKBias | AttnVBias | AttnOBias | AttnQNorm | AttnKNorm
            | AttnPostNorm | MlpNorm | MlpGateBias | MlpUpBias | MlpDownBias | MlpPostNorm
            | MoeRouter | MoeSharedGateScalar | FinalNorm => Encoding::F32,
        }
    }
}

/// Which field of the manifest's `quantization` decides a tensor's `dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `quantization.embeddings`.
    Embeddings,
    /// `quantization.head`.
    Head,
    /// `quantization.weights`.
    Weights,
    /// Always `f32`.
    F32,
}

impl Encoding {
    /// The dtype this encoding has under `q`.
    pub fn dtype(self, q: &Quantization) -> DType {
        match self {
            Encoding::Embeddings => q.embeddings,
            Encoding::Head => q.head,
            Encoding::Weights => q.weights,
            Encoding::F32 => DType::F32,
        }
    }
}

/// One entry of a stage's tensor table, before any encoding is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// What the tensor is.
    pub role: Role,
    /// Its normalized name ([`Role::name`]).
    pub name: String,
    /// Its shape, outermost first (`[out_features, in_features]` for a matrix).
    pub shape: Vec<u64>,
}

impl Slot {
    fn new(role: Role, shape: Vec<u64>) -> Slot {
        Slot {
            role,
            name: role.name(),
            shape,
        }
    }

    /// The tensor as written under `q`: its dtype, and `q.block_size` when
    /// that dtype is quantized.
    pub fn spec(&self, q: &Quantization) -> TensorSpec {
        let dtype = self.role.encoding().dtype(q);
        TensorSpec {
            name: self.name.clone(),
            dtype,
            shape: self.shape.clone(),
            block_size: if dtype.is_quantized() {
                q.block_size
            } else {
                None
            },
            compression: None,
        }
    }
}

/// One stage file's place and tensor table (SPEC.md §2, §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageTable {
    /// File name inside the container.
    pub file: String,
    /// What the stage holds.
    pub kind: StageKind,
    /// Layer index for layer stages.
    pub layer: Option<u32>,
    /// The tensor table, in file order.
    pub tensors: Vec<Slot>,
}

impl StageTable {
    /// The stage with every tensor encoded as `q` says.
    pub fn encoded(&self, q: &Quantization) -> StageLayout {
        StageLayout {
            file: self.file.clone(),
            kind: self.kind,
            layer: self.layer,
            tensors: self.tensors.iter().map(|t| t.spec(q)).collect(),
        }
    }
}

/// The embed stage: `embed.tokens`, `[vocab_size, hidden_size]`.
pub fn embed_stage(arch: &Architecture) -> StageTable {
    StageTable {
        file: names::EMBED_FILE.into(),
        kind: StageKind::Embed,
        layer: None,
        tensors: vec![Slot::new(
            Role::EmbedTokens,
            vec![arch.vocab_size, arch.hidden_size],
        )],
    }
}

/// Decoder layer `i`'s stage, its tensors in the file order of SPEC.md §6:
/// the attention block (norm, q, k, v, o, then the optional biases, q/k
/// norms and post-norm), `mlp_norm`, the dense MLP (absent in MoE layers)
/// with its optional biases and post-norm, and in an MoE layer the router,
/// the shared expert (if any) and then every routed expert's `gate`, `up`,
/// `down`, expert by expert, so that the experts are the file's tail.
pub fn layer_stage(arch: &Architecture, i: u64) -> StageTable {
    use Role::*;
    let h = arch.hidden_size;
    let attn_out = arch.num_attention_heads * arch.head_dim;
    let kv_out = arch.num_kv_heads * arch.head_dim;
    let inter = arch.intermediate_size;
    let mut t = vec![
        Slot::new(AttnNorm, vec![h]),
        Slot::new(AttnQ, vec![attn_out, h]),
        Slot::new(AttnK, vec![kv_out, h]),
        Slot::new(AttnV, vec![kv_out, h]),
        Slot::new(AttnO, vec![h, attn_out]),
    ];
    if arch.attention_bias {
        t.push(Slot::new(AttnQBias, vec![attn_out]));
        t.push(Slot::new(AttnKBias, vec![kv_out]));
        t.push(Slot::new(AttnVBias, vec![kv_out]));
    }
    if arch.attention_out_bias {
        t.push(Slot::new(AttnOBias, vec![h]));
    }
    if arch.qk_norm {
        t.push(Slot::new(AttnQNorm, vec![arch.head_dim]));
        t.push(Slot::new(AttnKNorm, vec![arch.head_dim]));
    }
    if arch.post_norms {
        t.push(Slot::new(AttnPostNorm, vec![h]));
    }
    t.push(Slot::new(MlpNorm, vec![h]));
    if arch.moe.is_none() {
        t.push(Slot::new(MlpGate, vec![inter, h]));
        t.push(Slot::new(MlpUp, vec![inter, h]));
        t.push(Slot::new(MlpDown, vec![h, inter]));
    }
    if arch.mlp_bias {
        t.push(Slot::new(MlpGateBias, vec![inter]));
        t.push(Slot::new(MlpUpBias, vec![inter]));
        t.push(Slot::new(MlpDownBias, vec![h]));
    }
    if arch.post_norms {
        t.push(Slot::new(MlpPostNorm, vec![h]));
    }
    if let Some(m) = &arch.moe {
        let w = m.expert_intermediate_size;
        t.push(Slot::new(MoeRouter, vec![m.num_experts, h]));
        if let Some(sw) = m.shared_expert_intermediate_size {
            t.push(Slot::new(MoeSharedGate, vec![sw, h]));
            t.push(Slot::new(MoeSharedUp, vec![sw, h]));
            t.push(Slot::new(MoeSharedDown, vec![h, sw]));
            t.push(Slot::new(MoeSharedGateScalar, vec![1, h]));
        }
        for expert in 0..m.num_experts {
            for part in ExpertPart::ALL {
                let shape = match part {
                    ExpertPart::Down => vec![h, w],
                    ExpertPart::Gate | ExpertPart::Up => vec![w, h],
                };
                t.push(Slot::new(MoeExpert { expert, part }, shape));
            }
        }
    }
    StageTable {
        file: names::layer_file(i),
        kind: StageKind::Layer,
        layer: Some(i as u32),
        tensors: t,
    }
}

/// The head stage: `final_norm` and, unless the embeddings are tied, `head`.
pub fn head_stage(arch: &Architecture) -> StageTable {
    let h = arch.hidden_size;
    let mut tensors = vec![Slot::new(Role::FinalNorm, vec![h])];
    if !arch.tie_word_embeddings {
        tensors.push(Slot::new(Role::Head, vec![arch.vocab_size, h]));
    }
    StageTable {
        file: names::HEAD_FILE.into(),
        kind: StageKind::Head,
        layer: None,
        tensors,
    }
}

/// Every stage of a container for `arch`, in manifest order: the embeddings,
/// each layer, then the head.
pub fn stage_tables(arch: &Architecture) -> Vec<StageTable> {
    let mut stages = Vec::with_capacity(arch.num_layers as usize + 2);
    stages.push(embed_stage(arch));
    stages.extend((0..arch.num_layers).map(|i| layer_stage(arch, i)));
    stages.push(head_stage(arch));
    stages
}

/// One stage file of a container with its encodings chosen, before it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageLayout {
    /// File name inside the container.
    pub file: String,
    /// What the stage holds.
    pub kind: StageKind,
    /// Layer index for layer stages.
    pub layer: Option<u32>,
    /// The tensor table, in file order.
    pub tensors: Vec<TensorSpec>,
}

impl StageLayout {
    /// Exact size of the stage file, from the same layout the writer uses.
    pub fn file_size(&self) -> Result<u64> {
        stage_file_size(self.kind, self.layer, &self.tensors, Path::new(&self.file))
    }

    /// The spec of tensor `name`, if the stage holds it.
    pub fn tensor(&self, name: &str) -> Option<&TensorSpec> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// The stages of a container for `arch` encoded as `q` ([`stage_tables`]
/// with norms and biases in f32, linear weights in `q.weights`, the
/// embedding matrix in `q.embeddings`, an untied head in `q.head`).
pub fn stage_layouts(arch: &Architecture, q: &Quantization) -> Vec<StageLayout> {
    stage_tables(arch).iter().map(|s| s.encoded(q)).collect()
}

/// Bytes of the tensor the output head multiplies with: `head` in the head
/// stage, or `embed.tokens` when the embeddings are tied. `None` when the
/// stages hold neither.
pub fn head_weight_bytes(arch: &Architecture, stages: &[StageLayout]) -> Option<u64> {
    let (kind, name) = if arch.tie_word_embeddings {
        (StageKind::Embed, names::EMBED_TOKENS)
    } else {
        (StageKind::Head, names::HEAD)
    };
    let t = stages.iter().find(|s| s.kind == kind)?.tensor(name)?;
    t.dtype.encoded_len(&t.shape, t.block_size)
}

/// Entry `name` of the header of `file`, or an error naming both.
fn entry<'a>(header: &'a FileHeader, file: &Path, name: &str) -> Result<&'a TensorEntry> {
    header.tensor(name).ok_or_else(|| FormatError::BadTensor {
        path: file.to_path_buf(),
        tensor: name.into(),
        reason: "missing".into(),
    })
}

/// Where the routed experts of an MoE layer file begin: the offset of
/// `moe.expert.0.gate` (SPEC.md §6: the experts are the file's tail, so a
/// runner reads the bytes before it and then only the experts it routes to).
/// `file` names the file in errors.
pub fn experts_start(header: &FileHeader, file: &Path) -> Result<u64> {
    Ok(entry(
        header,
        file,
        &names::moe_expert(0, ExpertPart::Gate.as_str()),
    )?
    .offset)
}

/// The byte range `start..end` of routed expert `e` in an MoE layer file of
/// `file_len` bytes (SPEC.md §6): from its `gate`'s offset to the end of its
/// `down` rounded up to a page (tensors start on pages, so the range holds
/// nothing of another expert), with all three of its tensors inside. An
/// error names the file and tensor when a part is missing or the three are
/// not stored together.
pub fn expert_range(header: &FileHeader, file: &Path, file_len: u64, e: u64) -> Result<(u64, u64)> {
    let name = |p: ExpertPart| names::moe_expert(e, p.as_str());
    let first = entry(header, file, &name(ExpertPart::Gate))?;
    let last = entry(header, file, &name(ExpertPart::Down))?;
    let apart = || FormatError::BadTensor {
        path: file.to_path_buf(),
        tensor: name(ExpertPart::Gate),
        reason: "expert tensors are not stored together (gate, up, down)".into(),
    };
    let end = last
        .offset
        .checked_add(last.length)
        .and_then(|x| x.checked_next_multiple_of(ALIGN))
        .ok_or_else(apart)?
        .min(file_len);
    let start = first.offset;
    let inside = |p: ExpertPart| {
        header.tensor(&name(p)).is_some_and(|x| {
            x.offset >= start && x.offset.checked_add(x.length).is_some_and(|t| t <= end)
        })
    };
    if end <= start || !ExpertPart::ALL.into_iter().all(inside) {
        return Err(apart());
    }
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::Shape;

    #[test]
    fn optional_tensors_follow_the_architecture() {
        let mut a = Shape::named("tiny").unwrap().architecture;
        a.attention_bias = true;
        a.qk_norm = true;
        a.mlp_bias = true;
        a.tie_word_embeddings = false;
        let q = Shape::named("tiny").unwrap().quantization;
        let plain = stage_layouts(&a, &q);
        assert!(plain[1].tensor(names::ATTN_POST_NORM).is_none());
        a.post_norms = true;
        let stages = stage_layouts(&a, &q);
        let names: Vec<&str> = stages[1].tensors.iter().map(|t| t.name.as_str()).collect();
        assert!(names.contains(&names::ATTN_Q_BIAS) && names.contains(&names::ATTN_K_NORM));
        assert!(names.contains(&names::MLP_DOWN_BIAS));
        assert!(names.contains(&names::ATTN_POST_NORM) && names.contains(&names::MLP_POST_NORM));
        assert!(stages.last().unwrap().tensor(names::HEAD).is_some());
        assert_eq!(stages[1].tensor(names::ATTN_NORM).unwrap().block_size, None);
        assert_eq!(
            stages[1].tensor(names::ATTN_Q).unwrap().block_size,
            Some(64)
        );
    }

    #[test]
    fn role_names_round_trip_and_experts_are_the_tail() {
        let s = Shape::named("mixtral-8x7b-2l").unwrap();
        let layer = layer_stage(&s.architecture, 1);
        assert_eq!(layer.file, "layer.001.strata");
        let first = layer
            .tensors
            .iter()
            .position(|t| matches!(t.role, Role::MoeExpert { .. }))
            .unwrap();
        assert_eq!(layer.tensors[first].name, "moe.expert.0.gate");
        assert!(layer.tensors[first..]
            .iter()
            .all(|t| matches!(t.role, Role::MoeExpert { .. })));
        assert_eq!(layer.tensors.len() - first, 3 * 8);
        assert_eq!(layer.tensors.last().unwrap().name, "moe.expert.7.down");
        assert_eq!(layer.tensors.last().unwrap().shape, vec![4096, 14_336]);
        let router = layer.tensors.iter().find(|t| t.role == Role::MoeRouter);
        assert_eq!(router.unwrap().spec(&s.quantization).dtype, DType::F32);
    }

    fn header_of(stage: &StageLayout) -> FileHeader {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(&stage.file);
        let w = crate::StageWriter::create(&path, stage.kind, stage.layer, &stage.tensors).unwrap();
        w.header().clone()
    }

    #[test]
    fn expert_ranges_are_page_aligned_and_disjoint() {
        let mut s = Shape::named("tiny").unwrap();
        s.architecture.num_layers = 1;
        s.architecture.moe = Some(crate::manifest::Moe {
            num_experts: 3,
            top_k: 1,
            expert_intermediate_size: 96,
            normalize_top_k: false,
            shared_expert_intermediate_size: None,
        });
        let stage = &s.stages()[1];
        let len = stage.file_size().unwrap();
        let header = header_of(stage);
        let file = Path::new(&stage.file);
        let start = experts_start(&header, file).unwrap();
        let mut at = start;
        for e in 0..3 {
            let (a, b) = expert_range(&header, file, len, e).unwrap();
            assert_eq!((a % ALIGN, b % ALIGN, a), (0, 0, at));
            at = b;
        }
        assert_eq!(at, len);
        let err = expert_range(&header, file, len, 3).unwrap_err().to_string();
        assert!(
            err.contains("moe.expert.3.gate") && err.contains("missing"),
            "{err}"
        );
        // An `up` stored after another expert's tensors is refused.
        let mut moved = header.clone();
        let up = moved
            .tensors
            .iter()
            .position(|t| t.name == "moe.expert.0.up")
            .unwrap();
        moved.tensors[up].offset = len;
        let err = expert_range(&moved, file, len, 0).unwrap_err().to_string();
        assert!(err.contains("not stored together"), "{err}");
    }
}
