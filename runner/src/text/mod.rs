//! The runner's text side: tokenizer, chat template and streaming detokenizer.
//!
//! Everything here reads the files that Hugging Face checkpoints ship next to the weights
//! (`tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`, `chat_template.jinja`)
//! and reproduces what transformers 5 does with them, so that prompts are tokenized exactly as
//! the Python reference would tokenize them.

pub mod chat;
mod pycompat;
pub mod stream;
pub mod tokenizer;

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// File name of the tokenizer configuration (special tokens, chat template, flags).
pub(crate) const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
/// File name of the legacy special-token map, consulted for tokens the config does not name.
pub(crate) const SPECIAL_TOKENS_MAP: &str = "special_tokens_map.json";

/// Errors of the text side. Every variant says which file or which step failed and why.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A file exists but could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (tokenizer_config.json, special_tokens_map.json) is not valid JSON.
    #[error("{} is not valid JSON: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A configuration file is valid JSON but a field has an unexpected shape.
    #[error("{}: {message}", path.display())]
    Config {
        /// The file (tokenizer_config.json or special_tokens_map.json).
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
    /// tokenizer.json could not be turned into a tokenizer.
    #[error("cannot load tokenizer {}: {message}", path.display())]
    Tokenizer {
        /// The tokenizer.json file.
        path: PathBuf,
        /// The tokenizers library's message.
        message: String,
    },
    /// The tokenizer failed to encode a text.
    #[error("tokenizer.json: cannot encode text: {0}")]
    Encode(String),
    /// The tokenizer failed to decode token ids.
    #[error("tokenizer.json: cannot decode token ids: {0}")]
    Decode(String),
    /// The chat template is not valid Jinja (as far as minijinja is concerned).
    #[error("chat template from {origin} does not compile: {message}")]
    TemplateSyntax {
        /// Where the template came from (tokenizer_config.json or chat_template.jinja path).
        origin: String,
        /// The template engine's message, with the template line.
        message: String,
    },
    /// Rendering the chat template failed (undefined operation, type error, ...).
    #[error("chat template from {origin} failed to render: {message}")]
    TemplateRender {
        /// Where the template came from.
        origin: String,
        /// The template engine's message, with the template line.
        message: String,
    },
    /// The chat template called `raise_exception(message)`, usually to reject a conversation
    /// (for example roles that do not alternate user/assistant).
    #[error("chat template from {origin} rejected the conversation: {message}")]
    TemplateRaised {
        /// Where the template came from.
        origin: String,
        /// The message the template passed to `raise_exception`, verbatim.
        message: String,
    },
}

/// Reads a JSON file that must hold an object. `Ok(None)` when the file does not exist.
pub(crate) fn read_json_object(path: &Path) -> Result<Option<Map<String, Value>>, TextError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TextError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(other) => Err(TextError::Config {
            path: path.to_path_buf(),
            message: format!(
                "expected a JSON object at the top level, found {}",
                kind(&other)
            ),
        }),
        Err(source) => Err(TextError::Json {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A short description of a JSON value's type, for error messages.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The named special tokens transformers exposes (`SPECIAL_TOKENS_ATTRIBUTES`), in its order.
pub(crate) const SPECIAL_TOKEN_NAMES: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// The named special tokens of a model folder, as transformers 5 resolves them. Each may be a
/// string or an AddedToken object (`{"content": "...", ...}`); `null` or absent means none.
/// tokenizer_config.json gives the values; when it has no `added_tokens_decoder` (a legacy
/// config), the entries of special_tokens_map.json are merged over them, as transformers does.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SpecialTokens {
    /// (name, token) pairs, in [`SPECIAL_TOKEN_NAMES`] order, only for tokens that are set.
    pub(crate) tokens: Vec<(&'static str, String)>,
}

impl SpecialTokens {
    /// Resolves the special tokens of `dir` given its already-read tokenizer_config.json.
    pub(crate) fn load(
        dir: &Path,
        config: Option<&Map<String, Value>>,
    ) -> Result<SpecialTokens, TextError> {
        let config_path = dir.join(TOKENIZER_CONFIG);
        let legacy = config.is_none_or(|config| !config.contains_key("added_tokens_decoder"));
        let map_path = dir.join(SPECIAL_TOKENS_MAP);
        let map = if legacy {
            read_json_object(&map_path)?
        } else {
            None
        };
        let mut tokens = Vec::new();
        for name in SPECIAL_TOKEN_NAMES {
            let token = match &map {
                Some(map) if map.contains_key(name) => token_string(map, name, &map_path)?,
                _ => match config {
                    Some(config) => token_string(config, name, &config_path)?,
                    None => None,
                },
            };
            if let Some(token) = token {
                tokens.push((name, token));
            }
        }
        Ok(SpecialTokens { tokens })
    }

    /// The token named `name` (for example `eos_token`), if the model has one.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.tokens
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, token)| token.as_str())
    }
}

/// Reads `object[name]` as a special token: a string, an AddedToken object with a string
/// `content`, or null/absent (`None`).
fn token_string(
    object: &Map<String, Value>,
    name: &str,
    path: &Path,
) -> Result<Option<String>, TextError> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(token)) => Ok(Some(token.clone())),
        Some(Value::Object(added)) => match added.get("content") {
            Some(Value::String(token)) => Ok(Some(token.clone())),
            other => Err(TextError::Config {
                path: path.to_path_buf(),
                message: format!(
                    "`{name}` is an object whose `content` should be a string, found {}",
                    other.map_or("nothing", kind)
                ),
            }),
        },
        Some(other) => Err(TextError::Config {
            path: path.to_path_buf(),
            message: format!(
                "`{name}` should be a string or an object with a string `content`, found {}",
                kind(other)
            ),
        }),
    }
}

/// The SmolLM2-135M-Instruct folder the tests use: `$STRATA_SMOLLM2`, else
/// `${STRATA_MODELS:-~/.cache/strata-models}/smollm2-135m-instruct`. Panics with instructions
/// when it is missing, so that the tests that need it fail instead of passing silently.
#[cfg(test)]
pub(crate) fn smollm2_dir() -> PathBuf {
    let dir = match std::env::var_os("STRATA_SMOLLM2") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let models = match std::env::var_os("STRATA_MODELS") {
                Some(models) => PathBuf::from(models),
                None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache")
                    .join("strata-models"),
            };
            models.join("smollm2-135m-instruct")
        }
    };
    assert!(
        dir.join("tokenizer.json").is_file(),
        "SmolLM2-135M-Instruct not found at {}: run scripts/fetch-smollm2.sh \
         (or set STRATA_SMOLLM2 to the folder it prints)",
        dir.display()
    );
    dir
}

/// A byte-level BPE tokenizer without merges, written to a temporary folder: token id `b` is
/// the single byte `b` (so a multi-byte character always spans several tokens), plus the
/// special tokens `<|end|>` (256) and `<s>` (257). `post_processor` goes into tokenizer.json
/// as is (`null` for none).
#[cfg(test)]
pub(crate) fn byte_level_tokenizer(
    post_processor: Value,
) -> (tempfile::TempDir, tokenizer::TextTokenizer) {
    // GPT-2's byte-to-unicode table: printable bytes stand for themselves, the others are
    // mapped in order to U+0100 and up.
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut vocab = Map::new();
    let mut shifted = 0u32;
    for b in 0..=255u8 {
        let c = if printable(b) {
            char::from(b)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).expect("valid char")
        };
        vocab.insert(c.to_string(), Value::from(b));
    }
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false,
        "trim_offsets": true, "use_regex": true});
    let tokenizer = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(256, "<|end|>"), special(257, "<s>")],
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": post_processor,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": []}
    });
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer.to_string()).expect("write");
    std::fs::write(
        dir.path().join(TOKENIZER_CONFIG),
        r#"{"bos_token": "<s>", "eos_token": "<|end|>"}"#,
    )
    .expect("write");
    let tok = tokenizer::TextTokenizer::load(dir.path())
        .expect("load test tokenizer")
        .expect("tokenizer.json present");
    (dir, tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).expect("write fixture");
    }

    #[test]
    fn special_tokens_accept_strings_and_added_token_objects() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            TOKENIZER_CONFIG,
            r#"{"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>",
                "pad_token": null, "sep_token": "<sep>"}"#,
        );
        // A legacy config (no added_tokens_decoder): the map's entries win, null included.
        write(
            dir.path(),
            SPECIAL_TOKENS_MAP,
            r#"{"eos_token": "<eos>", "pad_token": {"content": "<pad>"}, "unk_token": "<unk>",
                "sep_token": null, "additional_special_tokens": ["<x>"]}"#,
        );
        let config = read_json_object(&dir.path().join(TOKENIZER_CONFIG)).expect("config");
        let special = SpecialTokens::load(dir.path(), config.as_ref()).expect("special tokens");
        assert_eq!(
            special.tokens,
            vec![
                ("bos_token", "<s>".to_string()),
                ("eos_token", "<eos>".to_string()),
                ("unk_token", "<unk>".to_string()),
                ("pad_token", "<pad>".to_string()),
            ]
        );
        assert_eq!(special.get("eos_token"), Some("<eos>"));
        assert_eq!(special.get("mask_token"), None);
    }

    #[test]
    fn special_tokens_map_is_ignored_when_the_config_has_added_tokens_decoder() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            TOKENIZER_CONFIG,
            r#"{"added_tokens_decoder": {}, "eos_token": "</s>"}"#,
        );
        write(
            dir.path(),
            SPECIAL_TOKENS_MAP,
            r#"{"eos_token": "<eos>", "unk_token": "<unk>"}"#,
        );
        let config = read_json_object(&dir.path().join(TOKENIZER_CONFIG)).expect("config");
        let special = SpecialTokens::load(dir.path(), config.as_ref()).expect("special tokens");
        assert_eq!(special.tokens, vec![("eos_token", "</s>".to_string())]);
    }

    #[test]
    fn bad_special_token_names_the_file_and_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), TOKENIZER_CONFIG, r#"{"eos_token": 2}"#);
        let config = read_json_object(&dir.path().join(TOKENIZER_CONFIG)).expect("config");
        let err = SpecialTokens::load(dir.path(), config.as_ref()).expect_err("must fail");
        let message = err.to_string();
        assert!(message.contains("tokenizer_config.json"), "{message}");
        assert!(message.contains("`eos_token`"), "{message}");
        assert!(message.contains("a number"), "{message}");
    }

    #[test]
    fn json_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), TOKENIZER_CONFIG, "{ not json");
        let err = read_json_object(&dir.path().join(TOKENIZER_CONFIG)).expect_err("must fail");
        assert!(matches!(err, TextError::Json { .. }));
        assert!(err
            .to_string()
            .contains("tokenizer_config.json is not valid JSON"));
        write(dir.path(), TOKENIZER_CONFIG, "[1, 2]");
        let err = read_json_object(&dir.path().join(TOKENIZER_CONFIG)).expect_err("must fail");
        assert!(err.to_string().contains("expected a JSON object"), "{err}");
        assert!(read_json_object(&dir.path().join("absent.json"))
            .expect("absent is fine")
            .is_none());
    }
}
