//! Request bodies of the OpenAI and Ollama APIs, read leniently: unknown
//! fields are ignored, every field may be missing, and a field of the wrong
//! type or out of range is an error naming it.

use serde::Deserialize;
use serde_json::Value;
use strata_runner::sampling::SamplerConfig;
use strata_runner::text::chat::Message;

/// A request the server refuses, with the message for the client.
#[derive(Debug)]
pub struct BadRequest(pub String);

impl<T: Into<String>> From<T> for BadRequest {
    fn from(s: T) -> BadRequest {
        BadRequest(s.into())
    }
}

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Stop {
    fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// A chat message; `content` is a string, a list of parts (only `text` parts
/// are supported) or null.
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The content.
    #[serde(default)]
    pub content: Value,
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct StreamOptions {
    /// Send a last chunk with the token counts.
    pub include_usage: bool,
}

/// The sampler's fields, named alike in the OpenAI API (with llama.cpp's
/// `top_k`, `min_p`, `repeat_penalty`) and in Ollama's `options`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SamplerFields {
    /// Softmax temperature; 0 is greedy.
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Keep the k most likely tokens.
    pub top_k: Option<i64>,
    /// Min-p filter.
    pub min_p: Option<f64>,
    /// Repeat penalty.
    pub repeat_penalty: Option<f64>,
    /// Seed of the sampler.
    pub seed: Option<i64>,
    /// Stop strings.
    pub stop: Option<Stop>,
}

/// The sampling and length fields the OpenAI endpoints share.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct OpenAiSampling {
    /// Tokens to generate at most.
    pub max_tokens: Option<i64>,
    /// The newer name of `max_tokens` (chat).
    pub max_completion_tokens: Option<i64>,
    /// The sampler.
    #[serde(flatten)]
    pub sampler: SamplerFields,
    /// Completions per prompt: only 1.
    pub n: Option<i64>,
    /// Stream the answer as server-sent events (null: no).
    pub stream: Option<bool>,
    /// Options of the stream.
    pub stream_options: Option<StreamOptions>,
    /// Keep generating past end-of-sequence tokens (llama.cpp's extension).
    pub ignore_eos: Option<bool>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Sampling and length.
    #[serde(flatten)]
    pub sampling: OpenAiSampling,
}

/// `prompt` of `/v1/completions`: a string or a list of one string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// The prompt.
    One(String),
    /// Several prompts (only one is supported).
    Many(Vec<String>),
}

/// `POST /v1/completions`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CompletionRequest {
    /// The prompt.
    pub prompt: Option<Prompt>,
    /// Sampling and length.
    #[serde(flatten)]
    pub sampling: OpenAiSampling,
}

/// Ollama's `options`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct OllamaOptions {
    /// Tokens to generate at most (-1: until the context is full).
    pub num_predict: Option<i64>,
    /// The sampler.
    #[serde(flatten)]
    pub sampler: SamplerFields,
}

/// `POST /api/chat`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct OllamaChat {
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Stream NDJSON lines (Ollama's default: true).
    pub stream: Option<bool>,
    /// Sampling options.
    pub options: OllamaOptions,
}

/// `POST /api/generate`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct OllamaGenerate {
    /// The prompt.
    pub prompt: Option<String>,
    /// A system message (with the chat template).
    pub system: Option<String>,
    /// No chat template: the prompt as it is.
    pub raw: Option<bool>,
    /// Stream NDJSON lines (default true).
    pub stream: Option<bool>,
    /// Sampling options.
    pub options: OllamaOptions,
}

/// What to generate, checked: the sampler, the length, the stop strings.
#[derive(Debug, Clone)]
pub struct GenParams {
    /// Sampler settings.
    pub sampler: SamplerConfig,
    /// Tokens at most (`None`: until the context is full).
    pub max_tokens: Option<usize>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens.
    pub ignore_eos: bool,
}

/// Parses a JSON body into `T`, naming what is wrong.
pub fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, BadRequest> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("the request body is empty; send a JSON object".into());
    }
    serde_json::from_slice(body).map_err(|e| BadRequest(format!("invalid JSON body: {e}")))
}

/// Longest stop string, in bytes (each is matched against the text held back
/// at every token).
const MAX_STOP_BYTES: usize = 256;

/// The checked parameters: `k` over `defaults`, at most `max_tokens` tokens
/// (when `negative_is_unlimited`, as Ollama's `num_predict`, a negative
/// number means until the context is full).
fn check(
    k: SamplerFields,
    max_tokens: Option<i64>,
    negative_is_unlimited: bool,
    defaults: &SamplerConfig,
    ctx: usize,
) -> Result<GenParams, BadRequest> {
    let mut s = defaults.clone();
    let max_tokens = match max_tokens {
        None => None,
        Some(n) if n < 0 && negative_is_unlimited => None,
        Some(n) if n < 1 => {
            return Err(format!("max_tokens must be at least 1, not {n}").into());
        }
        Some(n) if n as u64 > ctx as u64 => {
            return Err(format!(
                "max_tokens {n} is more than the context of {ctx} tokens can hold"
            )
            .into());
        }
        Some(n) => Some(n as usize),
    };
    if let Some(t) = k.temperature {
        if !(0.0..=100.0).contains(&t) {
            return Err(format!("temperature must be between 0 and 100, not {t}").into());
        }
        s.temperature = t as f32;
    }
    if let Some(p) = k.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], not {p}").into());
        }
        s.top_p = p as f32;
    }
    if let Some(v) = k.top_k {
        s.top_k = usize::try_from(v).map_err(|_| format!("top_k must be 0 or more, not {v}"))?;
    }
    if let Some(p) = k.min_p {
        if !(0.0..=1.0).contains(&p) {
            return Err(format!("min_p must be in [0, 1], not {p}").into());
        }
        s.min_p = p as f32;
    }
    if let Some(r) = k.repeat_penalty {
        if !(r > 0.0 && r.is_finite()) {
            return Err(format!("repeat_penalty must be positive, not {r}").into());
        }
        s.repeat_penalty = r as f32;
    }
    if let Some(seed) = k.seed {
        // Any integer: negative seeds (llama.cpp's -1) map onto u64.
        s.seed = seed as u64;
    }
    let stop = k.stop.map(Stop::into_vec).unwrap_or_default();
    if stop.len() > 16 {
        return Err(format!("at most 16 stop strings, not {}", stop.len()).into());
    }
    if let Some(long) = stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(format!(
            "a stop string of {} bytes; at most {MAX_STOP_BYTES}",
            long.len()
        )
        .into());
    }
    Ok(GenParams {
        sampler: s,
        max_tokens,
        stop,
        ignore_eos: false,
    })
}

impl OpenAiSampling {
    /// The checked parameters.
    pub fn params(self, defaults: &SamplerConfig, ctx: usize) -> Result<GenParams, BadRequest> {
        if let Some(n) = self.n.filter(|&n| n != 1) {
            return Err(
                format!("n = {n}: this server makes one choice per request (n = 1)").into(),
            );
        }
        let max_tokens = self.max_completion_tokens.or(self.max_tokens);
        let mut p = check(self.sampler, max_tokens, false, defaults, ctx)?;
        p.ignore_eos = self.ignore_eos.unwrap_or(false);
        Ok(p)
    }
}

impl OllamaOptions {
    /// The checked parameters.
    pub fn params(self, defaults: &SamplerConfig, ctx: usize) -> Result<GenParams, BadRequest> {
        check(self.sampler, self.num_predict, true, defaults, ctx)
    }
}

/// The conversation as the chat template takes it.
pub fn messages(list: Vec<ChatMessage>) -> Result<Vec<Message>, BadRequest> {
    if list.is_empty() {
        return Err("messages is empty: send at least one message".into());
    }
    list.into_iter()
        .enumerate()
        .map(|(i, m)| {
            let content = match m.content {
                Value::String(s) => s,
                Value::Null => String::new(),
                Value::Array(parts) => {
                    let mut texts = Vec::new();
                    for p in parts {
                        match (p.get("type").and_then(Value::as_str), p.get("text")) {
                            (Some("text"), Some(Value::String(t))) => texts.push(t.clone()),
                            (kind, _) => {
                                return Err(BadRequest(format!(
                                    "messages[{i}]: only text content is supported, not {}",
                                    kind.unwrap_or("a part without a type")
                                )))
                            }
                        }
                    }
                    texts.join("\n")
                }
                other => {
                    return Err(BadRequest(format!(
                    "messages[{i}].content must be a string or a list of text parts, not {other}"
                )))
                }
            };
            if m.role.is_empty() {
                return Err(BadRequest(format!("messages[{i}] has no role")));
            }
            Ok(Message::new(m.role, content))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> SamplerConfig {
        SamplerConfig::default()
    }

    #[test]
    fn lenient_bodies_parse_and_unknown_fields_are_ignored() {
        let r: ChatRequest = parse(
            br#"{"model":"x","messages":[{"role":"user","content":"hi","name":"a"}],"logit_bias":{},"temperature":0,"stop":"END","stream":true}"#,
        )
        .unwrap();
        assert_eq!(r.sampling.stream, Some(true));
        let p = r.sampling.params(&defaults(), 100).unwrap();
        assert_eq!(p.sampler.temperature, 0.0);
        assert_eq!(p.stop, ["END"]);
        let m = messages(r.messages).unwrap();
        assert_eq!(m, [Message::new("user", "hi")]);
        let parts: ChatRequest = parse(
            br#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#,
        )
        .unwrap();
        assert_eq!(messages(parts.messages).unwrap()[0].content, "a\nb");
    }

    #[test]
    fn wrong_types_and_ranges_name_the_field() {
        let e = parse::<ChatRequest>(br#"{"messages":[],"temperature":"hot"}"#).unwrap_err();
        assert!(
            e.0.contains("invalid JSON body") && e.0.contains("line 1"),
            "{}",
            e.0
        );
        let e = parse::<ChatRequest>(b"{not json").unwrap_err();
        assert!(e.0.starts_with("invalid JSON body"), "{}", e.0);
        let e = parse::<ChatRequest>(b"  ").unwrap_err();
        assert!(e.0.contains("empty"), "{}", e.0);
        let bad = |body: &[u8]| {
            parse::<ChatRequest>(body)
                .unwrap()
                .sampling
                .params(&defaults(), 100)
                .unwrap_err()
                .0
        };
        assert!(bad(br#"{"max_tokens":-5}"#).contains("at least 1"));
        assert!(bad(br#"{"max_tokens":0}"#).contains("at least 1"));
        assert!(bad(br#"{"max_tokens":1000000000}"#).contains("context of 100"));
        assert!(bad(br#"{"temperature":-1}"#).contains("temperature"));
        assert!(bad(br#"{"top_p":0}"#).contains("top_p"));
        assert!(bad(br#"{"n":2}"#).contains("n = 2"));
        let e = messages(Vec::new()).unwrap_err();
        assert!(e.0.contains("empty"));
        let r: ChatRequest =
            parse(br#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#).unwrap();
        assert!(messages(r.messages).unwrap_err().0.contains("image_url"));
    }

    #[test]
    fn ollama_num_predict_minus_one_is_unlimited() {
        let r: OllamaChat =
            parse(br#"{"model":"m","messages":[{"role":"user","content":"x"}],"options":{"num_predict":-1,"seed":-1}}"#)
                .unwrap();
        let p = r.options.params(&defaults(), 64).unwrap();
        assert_eq!(p.max_tokens, None);
        assert_eq!(p.sampler.seed, u64::MAX);
        assert_eq!(r.stream, None);
    }
}
