//! The model's tokenizer: `tokenizer.json` through the `tokenizers` crate, plus the special
//! tokens and flags of `tokenizer_config.json` / `special_tokens_map.json`.

use std::path::Path;

use serde_json::Value;
use tokenizers::{ModelWrapper, Tokenizer};

use super::{kind, read_json_object, SpecialTokens, TextError, TOKENIZER_CONFIG};

/// File name of the serialized fast tokenizer.
const TOKENIZER_JSON: &str = "tokenizer.json";

/// A Hugging Face fast tokenizer with the special tokens of its model folder.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    bos_token: Option<String>,
    eos_token: Option<String>,
    add_bos_token: bool,
    clean_up_tokenization_spaces: bool,
}

impl TextTokenizer {
    /// Loads `DIR/tokenizer.json` (+ `tokenizer_config.json` and `special_tokens_map.json` if
    /// present). `Ok(None)` when tokenizer.json is absent.
    ///
    /// Truncation and padding settings stored in tokenizer.json are dropped: transformers only
    /// applies them when asked to, and a prompt must never be cut silently.
    pub fn load(dir: &Path) -> Result<Option<TextTokenizer>, TextError> {
        let path = dir.join(TOKENIZER_JSON);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(TextError::Io { path, source }),
        };
        let mut inner = Tokenizer::from_bytes(&bytes).map_err(|err| TextError::Tokenizer {
            path: path.clone(),
            message: err.to_string(),
        })?;
        inner
            .with_truncation(None)
            .map_err(|err| TextError::Tokenizer {
                path: path.clone(),
                message: err.to_string(),
            })?;
        inner.with_padding(None);

        let config_path = dir.join(TOKENIZER_CONFIG);
        let config = read_json_object(&config_path)?;
        let special = SpecialTokens::load(dir, config.as_ref())?;
        let bos_token = special.get("bos_token").map(str::to_string);
        let eos_token = special.get("eos_token").map(str::to_string);

        let flag = |name: &str| -> Result<Option<bool>, TextError> {
            match config.as_ref().and_then(|config| config.get(name)) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Bool(flag)) => Ok(Some(*flag)),
                Some(other) => Err(TextError::Config {
                    path: config_path.clone(),
                    message: format!("`{name}` should be true or false, found {}", kind(other)),
                }),
            }
        };
        let add_bos_token = match flag("add_bos_token")? {
            Some(flag) => flag,
            None => post_processor_adds_bos(&inner, bos_token.as_deref())
                .map_err(|message| TextError::Tokenizer { path, message })?,
        };
        // transformers 5 skips this clean-up for BPE models even when the config asks for it.
        let clean_up_tokenization_spaces = flag("clean_up_tokenization_spaces")?.unwrap_or(false)
            && !matches!(inner.get_model(), ModelWrapper::BPE(_));

        Ok(Some(TextTokenizer {
            inner,
            bos_token,
            eos_token,
            add_bos_token,
            clean_up_tokenization_spaces,
        }))
    }

    /// Encodes `text` into token ids. Special and added tokens written in the text (for
    /// example `<|im_start|>`) are matched as single tokens, as transformers does.
    /// `add_special_tokens` runs tokenizer.json's post-processor (BOS/EOS templates), like
    /// transformers' `tokenizer(text, add_special_tokens=...)`; chat prompts rendered by a
    /// template already contain their special tokens and are encoded with `false`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TextError> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|err| TextError::Encode(err.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Decodes token ids into text, dropping special tokens if `skip_special_tokens`. Ids the
    /// tokenizer does not know are skipped, as the tokenizers library does. Bytes of an
    /// incomplete UTF-8 sequence (a character split across byte-level tokens) come out as
    /// U+FFFD; [`super::stream::TextStream`] holds such tails back while streaming.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TextError> {
        let text = self
            .inner
            .decode(ids, skip_special_tokens)
            .map_err(|err| TextError::Decode(err.to_string()))?;
        Ok(if self.clean_up_tokenization_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// The id of a token string (vocabulary entry or added token), if the tokenizer has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The first difference between this tokenizer's vocabulary (a target
    /// model's) and `other`'s (a draft's, as the message says), if any: the number of tokens, then each id's token text
    /// (added and special tokens included), then the begin/end tokens and
    /// whether a begin token is added.
    pub fn first_difference(&self, other: &TextTokenizer) -> Option<String> {
        let (a, b) = (self.vocab_size(), other.vocab_size());
        if a != b {
            return Some(format!("{a} tokens in the target, {b} in the draft"));
        }
        for id in 0..u32::try_from(a).unwrap_or(u32::MAX) {
            let (x, y) = (self.inner.id_to_token(id), other.inner.id_to_token(id));
            if x != y {
                return Some(format!(
                    "token {id} is {x:?} in the target, {y:?} in the draft"
                ));
            }
        }
        if self.bos_token() != other.bos_token() {
            return Some(format!(
                "begin token {:?} in the target, {:?} in the draft",
                self.bos_token(),
                other.bos_token()
            ));
        }
        if self.eos_token() != other.eos_token() {
            return Some(format!(
                "end token {:?} in the target, {:?} in the draft",
                self.eos_token(),
                other.eos_token()
            ));
        }
        if self.add_bos_token() != other.add_bos_token() {
            return Some(format!(
                "the target {} a begin token, the draft {}",
                if self.add_bos_token() {
                    "adds"
                } else {
                    "does not add"
                },
                if other.add_bos_token() {
                    "does"
                } else {
                    "does not"
                }
            ));
        }
        None
    }

    /// The number of token ids the tokenizer knows, added tokens included (transformers'
    /// `len(tokenizer)`). A model's embedding matrix may have more rows (padding).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The end-of-sequence token string, from tokenizer_config.json / special_tokens_map.json.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// The beginning-of-sequence token string, from tokenizer_config.json /
    /// special_tokens_map.json.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// True if tokenizer_config.json says `add_bos_token: true`. When the config does not say,
    /// the default is what the tokenizer class would do with this folder: transformers 5 lets
    /// tokenizer.json's post-processor decide, so this is true when encoding with
    /// `add_special_tokens` puts the BOS token first. (transformers 5 also ignores an explicit
    /// config flag when tokenizer.json exists; [`Self::encode`] always follows the
    /// post-processor.)
    pub fn add_bos_token(&self) -> bool {
        self.add_bos_token
    }
}

/// Whether tokenizer.json's post-processor starts a single sequence with the BOS token.
fn post_processor_adds_bos(inner: &Tokenizer, bos_token: Option<&str>) -> Result<bool, String> {
    let Some(bos_id) = bos_token.and_then(|token| inner.token_to_id(token)) else {
        return Ok(false);
    };
    let encoding = inner.encode("", true).map_err(|err| err.to_string())?;
    Ok(encoding.get_ids().first() == Some(&bos_id))
}

/// transformers' `clean_up_tokenization`: removes the spaces WordPiece-style decoders leave
/// before punctuation and English contractions.
fn clean_up_tokenization(text: &str) -> String {
    const REPLACEMENTS: [(&str, &str); 10] = [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ];
    REPLACEMENTS
        .iter()
        .fold(text.to_string(), |text, (from, to)| text.replace(from, to))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::smollm2_dir;

    fn smollm2() -> TextTokenizer {
        TextTokenizer::load(&smollm2_dir())
            .expect("load SmolLM2 tokenizer")
            .expect("tokenizer.json present")
    }

    /// A copy of SmolLM2's tokenizer files with `edit` applied to tokenizer.json.
    fn edited_smollm2(edit: impl FnOnce(&mut Value)) -> (tempfile::TempDir, TextTokenizer) {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in [TOKENIZER_CONFIG, "special_tokens_map.json"] {
            let from = smollm2_dir().join(name);
            if from.is_file() {
                std::fs::copy(&from, dir.path().join(name)).expect("copy");
            }
        }
        let text = std::fs::read_to_string(smollm2_dir().join(TOKENIZER_JSON)).expect("read");
        let mut json: Value = serde_json::from_str(&text).expect("parse");
        edit(&mut json);
        std::fs::write(dir.path().join(TOKENIZER_JSON), json.to_string()).expect("write");
        let tok = TextTokenizer::load(dir.path())
            .expect("load")
            .expect("present");
        (dir, tok)
    }

    #[test]
    fn vocabulary_differences_are_named() {
        let tok = smollm2();
        assert_eq!(tok.first_difference(&smollm2()), None);
        let (_d, same) = edited_smollm2(|_| {});
        assert_eq!(tok.first_difference(&same), None);
        // Two tokens' texts swapped: the lower id is named with both texts.
        let (_d, swapped) = edited_smollm2(|j| {
            let vocab = j["model"]["vocab"].as_object_mut().expect("vocab");
            let (a, b) = (vocab["hello"].clone(), vocab["world"].clone());
            vocab.insert("hello".into(), b);
            vocab.insert("world".into(), a);
        });
        let (h, w) = (
            tok.token_to_id("hello").expect("hello"),
            tok.token_to_id("world").expect("world"),
        );
        let (lo, lo_text, other) = if h < w {
            (h, "hello", "world")
        } else {
            (w, "world", "hello")
        };
        assert_eq!(
            tok.first_difference(&swapped),
            Some(format!(
                "token {lo} is Some({lo_text:?}) in the target, Some({other:?}) in the draft"
            ))
        );
        // One more added token: the counts differ.
        let (_d, longer) = edited_smollm2(|j| {
            let added = j["added_tokens"].as_array_mut().expect("added_tokens");
            added.push(serde_json::json!({
                "id": 49152, "content": "<extra>", "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
            }));
        });
        let n = tok.vocab_size();
        assert_eq!(
            tok.first_difference(&longer),
            Some(format!("{n} tokens in the target, {} in the draft", n + 1))
        );
    }

    #[test]
    fn encodes_the_smollm2_goldens_exactly() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/smollm2/golden.json"
        );
        let text = std::fs::read_to_string(path).expect("read golden.json");
        let golden: Value = serde_json::from_str(&text).expect("parse golden.json");
        let prompts = golden["prompts"].as_array().expect("prompts array");
        assert_eq!(prompts.len(), 4);
        let tok = smollm2();
        for prompt in prompts {
            let name = prompt["name"].as_str().expect("name");
            let text = prompt["text"].as_str().expect("text");
            let expected: Vec<u32> = prompt["input_ids"]
                .as_array()
                .expect("input_ids")
                .iter()
                .map(|id| u32::try_from(id.as_u64().expect("id")).expect("u32 id"))
                .collect();
            // The golden ids were made without a BOS (SmolLM2's add_bos_token is false and its
            // post-processor adds nothing), so both settings give the same ids.
            assert_eq!(tok.encode(text, false).expect("encode"), expected, "{name}");
            assert_eq!(tok.encode(text, true).expect("encode"), expected, "{name}");
            assert_eq!(
                tok.decode(&expected, false).expect("decode"),
                text,
                "{name}"
            );
        }
    }

    #[test]
    fn special_tokens_in_text_are_single_tokens() {
        let tok = smollm2();
        let ids = tok
            .encode("<|im_start|>user\nhi<|im_end|>", false)
            .expect("encode");
        assert_eq!(ids.first(), Some(&1));
        assert_eq!(ids.last(), Some(&2));
        assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
        assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
        assert_eq!(tok.token_to_id("no such token"), None);
        let skipped = tok.decode(&ids, true).expect("decode");
        assert_eq!(skipped, "user\nhi");
    }

    #[test]
    fn smollm2_metadata() {
        let tok = smollm2();
        assert_eq!(tok.vocab_size(), 49152);
        assert_eq!(tok.eos_token(), Some("<|im_end|>"));
        assert_eq!(tok.bos_token(), Some("<|im_start|>"));
        assert!(!tok.add_bos_token());
    }

    #[test]
    fn round_trips_multilingual_text() {
        let tok = smollm2();
        let texts = [
            "Grüße aus Köln — naïve café, œuvre, façade.",
            "Привет, мир! Как дела?",
            "日本語のテキストと中文文本，还有한국어 문장.",
            "emoji: 🎉🔥👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 and flags 🇫🇷🇯🇵",
            "العربية والعبرית: שלום, مرحبا",
            "math ∀x∈ℝ: x² ≥ 0, tabs\tand\nnewlines\r\n  spaces  ",
            "combining: e\u{301} a\u{308} and zero\u{200b}width, BOM \u{feff}",
            "",
        ];
        for text in texts {
            let ids = tok.encode(text, false).expect("encode");
            assert_eq!(tok.decode(&ids, false).expect("decode"), text);
            assert_eq!(tok.decode(&ids, true).expect("decode"), text);
        }
    }

    #[test]
    fn missing_tokenizer_json_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(TextTokenizer::load(dir.path()).expect("no error").is_none());
    }

    #[test]
    fn broken_tokenizer_json_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(TOKENIZER_JSON), "{\"model\": 3}").expect("write");
        let err = TextTokenizer::load(dir.path()).err().expect("must fail");
        let message = err.to_string();
        assert!(message.starts_with("cannot load tokenizer "), "{message}");
        assert!(message.contains("tokenizer.json"), "{message}");
    }

    #[test]
    fn config_flags_and_tokens_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(
            smollm2_dir().join(TOKENIZER_JSON),
            dir.path().join(TOKENIZER_JSON),
        )
        .expect("copy tokenizer.json");
        std::fs::write(
            dir.path().join(TOKENIZER_CONFIG),
            r#"{"add_bos_token": true, "bos_token": {"content": "<|endoftext|>"},
                "eos_token": "<|im_end|>"}"#,
        )
        .expect("write config");
        let tok = TextTokenizer::load(dir.path())
            .expect("load")
            .expect("present");
        assert!(tok.add_bos_token());
        assert_eq!(tok.bos_token(), Some("<|endoftext|>"));
        assert_eq!(tok.eos_token(), Some("<|im_end|>"));

        std::fs::write(
            dir.path().join(TOKENIZER_CONFIG),
            r#"{"add_bos_token": "yes"}"#,
        )
        .expect("write config");
        let err = TextTokenizer::load(dir.path()).err().expect("must fail");
        let message = err.to_string();
        assert!(message.contains("tokenizer_config.json"), "{message}");
        assert!(
            message.contains("`add_bos_token` should be true or false"),
            "{message}"
        );
    }

    #[test]
    fn add_bos_token_defaults_to_what_the_post_processor_does() {
        use crate::text::byte_level_tokenizer;
        let (_dir, plain) = byte_level_tokenizer(Value::Null);
        assert!(!plain.add_bos_token());
        assert_eq!(plain.encode("hi", true).expect("encode"), vec![104, 105]);
        let template = serde_json::json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [257], "tokens": ["<s>"]}}
        });
        let (_dir, with_bos) = byte_level_tokenizer(template);
        assert!(with_bos.add_bos_token());
        assert_eq!(
            with_bos.encode("hi", true).expect("encode"),
            vec![257, 104, 105]
        );
        assert_eq!(
            with_bos.encode("hi", false).expect("encode"),
            vec![104, 105]
        );
        assert_eq!(
            with_bos.decode(&[257, 104, 105], true).expect("decode"),
            "hi"
        );
        assert_eq!(
            with_bos.decode(&[257, 104, 105], false).expect("decode"),
            "<s>hi"
        );
    }

    #[test]
    fn clean_up_matches_transformers() {
        assert_eq!(
            clean_up_tokenization("Hello , world ! I 'm here . Don 't , isn't ?"),
            "Hello, world! I'm here. Don 't, isn't?"
        );
    }
}
