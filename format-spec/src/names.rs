//! Normalized stage file names and tensor names (SPEC.md §2 and §6).

/// File name of the embeddings stage.
pub const EMBED_FILE: &str = "embed.strata";
/// File name of the head stage.
pub const HEAD_FILE: &str = "head.strata";

/// File name of decoder layer `i` (zero-padded to 3 digits: `layer.007.strata`).
pub fn layer_file(i: u64) -> String {
    format!("layer.{i:03}.strata")
}

/// Embedding matrix `[vocab, hidden]` in the embed stage.
pub const EMBED_TOKENS: &str = "embed.tokens";
/// Final norm weight `[hidden]` in the head stage.
pub const FINAL_NORM: &str = "final_norm";
/// Output head `[vocab, hidden]` in the head stage (absent when tied).
pub const HEAD: &str = "head";
/// Norm before attention `[hidden]`.
pub const ATTN_NORM: &str = "attn_norm";
/// Query projection `[heads*head_dim, hidden]`.
pub const ATTN_Q: &str = "attn.q";
/// Key projection `[kv_heads*head_dim, hidden]`.
pub const ATTN_K: &str = "attn.k";
/// Value projection `[kv_heads*head_dim, hidden]`.
pub const ATTN_V: &str = "attn.v";
/// Output projection `[hidden, heads*head_dim]`.
pub const ATTN_O: &str = "attn.o";
/// Query bias.
pub const ATTN_Q_BIAS: &str = "attn.q.bias";
/// Key bias.
pub const ATTN_K_BIAS: &str = "attn.k.bias";
/// Value bias.
pub const ATTN_V_BIAS: &str = "attn.v.bias";
/// Output projection bias.
pub const ATTN_O_BIAS: &str = "attn.o.bias";
/// Per-head query RMS norm weight `[head_dim]`.
pub const ATTN_Q_NORM: &str = "attn.q_norm";
/// Per-head key RMS norm weight `[head_dim]`.
pub const ATTN_K_NORM: &str = "attn.k_norm";
/// Norm of the attention block's output before it joins the residual stream
/// `[hidden]` (when the architecture has `post_norms`).
pub const ATTN_POST_NORM: &str = "attn_post_norm";
/// Norm before the feed-forward block `[hidden]`.
pub const MLP_NORM: &str = "mlp_norm";
/// Norm of the feed-forward block's output before it joins the residual
/// stream `[hidden]` (when the architecture has `post_norms`).
pub const MLP_POST_NORM: &str = "mlp_post_norm";
/// Gate projection `[intermediate, hidden]`.
pub const MLP_GATE: &str = "mlp.gate";
/// Up projection `[intermediate, hidden]`.
pub const MLP_UP: &str = "mlp.up";
/// Down projection `[hidden, intermediate]`.
pub const MLP_DOWN: &str = "mlp.down";
/// Gate projection bias `[intermediate]` (when the architecture has `mlp_bias`).
pub const MLP_GATE_BIAS: &str = "mlp.gate.bias";
/// Up projection bias `[intermediate]` (when the architecture has `mlp_bias`).
pub const MLP_UP_BIAS: &str = "mlp.up.bias";
/// Down projection bias `[hidden]` (when the architecture has `mlp_bias`).
pub const MLP_DOWN_BIAS: &str = "mlp.down.bias";
/// MoE router `[num_experts, hidden]` (stored f32).
pub const MOE_ROUTER: &str = "moe.router";
/// Shared expert's gate projection `[shared_expert_intermediate_size, hidden]`.
pub const MOE_SHARED_GATE: &str = "moe.shared.gate";
/// Shared expert's up projection `[shared_expert_intermediate_size, hidden]`.
pub const MOE_SHARED_UP: &str = "moe.shared.up";
/// Shared expert's down projection `[hidden, shared_expert_intermediate_size]`.
pub const MOE_SHARED_DOWN: &str = "moe.shared.down";
/// Scalar gate of the shared expert's output `[1, hidden]` (stored f32):
/// the output is scaled by `sigmoid(shared_gate · u)`.
pub const MOE_SHARED_GATE_SCALAR: &str = "moe.shared_gate";
/// The three projections of an expert, in the order a layer file stores them.
pub const MOE_EXPERT_PARTS: [&str; 3] = ["gate", "up", "down"];

/// Tensor name of routed expert `e`'s projection `part` (`gate`, `up` or `down`).
pub fn moe_expert(e: u64, part: &str) -> String {
    format!("moe.expert.{e}.{part}")
}
