//! SentencePiece `tokenizer.model` → Hugging Face `tokenizer.json`.
//!
//! The remote-code families (InternLM2, Baichuan 2, ChatGLM 3) publish only a
//! SentencePiece model, which their Python tokenizers run through the
//! `sentencepiece` library. The runner reads `tokenizer.json`, so `prep`
//! writes one that encodes as SentencePiece does, the way transformers'
//! `convert_slow_tokenizer` builds a fast tokenizer from the same file:
//!
//! - model: BPE over the model's pieces (ids unchanged), with merges ranked by
//!   the score of the merged piece (SentencePiece merges the adjacent pair whose
//!   result scores highest), `byte_fallback` as trained, `<unk>` fused;
//! - normalizer: the model's `precompiled_charsmap` (when it has one), then its
//!   whitespace rules (`remove_extra_whitespaces`, `add_dummy_prefix`,
//!   `escape_whitespaces`);
//! - added tokens: control and unknown pieces (special), user-defined pieces
//!   (matched whole in the text, as SentencePiece does) and the tokens of
//!   tokenizer_config.json's `added_tokens_decoder`; the family's own tokens
//!   after the model ([`Additions`]);
//! - post-processor: the BOS/EOS/prefix tokens the family's tokenizer adds;
//! - decoder: `▁` → space, byte pieces fused, the dummy prefix removed.
//!
//! Only BPE models are converted (every family above trains BPE); a unigram
//! model is refused with a clear error.

use std::collections::HashMap;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{json, Map, Value};

use crate::base64;

/// SentencePiece's whitespace symbol.
const SPACE: &str = "\u{2581}";

/// Piece types of `sentencepiece_model.proto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    /// An ordinary piece (merges produce these).
    Normal,
    /// The unknown piece.
    Unknown,
    /// A control symbol (`<s>`, `</s>`): never produced from text by SentencePiece.
    Control,
    /// A user-defined symbol: always one piece where it occurs in the text.
    UserDefined,
    /// Reserved and never produced.
    Unused,
    /// A byte piece `<0xXX>` (byte fallback).
    Byte,
}

/// One vocabulary entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// Its text.
    pub piece: String,
    /// Its score (higher merges first).
    pub score: f32,
    /// Its type.
    pub kind: PieceType,
}

/// The parts of a SentencePiece `ModelProto` this conversion uses.
#[derive(Debug, Clone, PartialEq)]
pub struct SpmModel {
    /// Pieces in id order.
    pub pieces: Vec<Piece>,
    /// `trainer_spec.model_type`: 1 unigram, 2 BPE, 3 word, 4 char.
    pub model_type: u64,
    /// `trainer_spec.byte_fallback`.
    pub byte_fallback: bool,
    /// `normalizer_spec.name` (e.g. `identity`, `nmt_nfkc`).
    pub normalizer_name: String,
    /// `normalizer_spec.precompiled_charsmap` (empty for `identity`).
    pub precompiled_charsmap: Vec<u8>,
    /// `normalizer_spec.add_dummy_prefix`.
    pub add_dummy_prefix: bool,
    /// `normalizer_spec.remove_extra_whitespaces`.
    pub remove_extra_whitespaces: bool,
    /// `normalizer_spec.escape_whitespaces`.
    pub escape_whitespaces: bool,
}

/// Why a `tokenizer.model` could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpmError {
    /// The bytes are not a SentencePiece model protobuf.
    #[error("not a SentencePiece model: {0}")]
    Malformed(String),
    /// A valid model this conversion does not handle.
    #[error("{0}")]
    Unsupported(String),
}

type Result<T> = std::result::Result<T, SpmError>;

/// A bounds-checked reader of protobuf wire format.
struct Wire<'a> {
    buf: &'a [u8],
    at: usize,
}

/// One field: its number and its value.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
    Fixed64,
}

impl<'a> Wire<'a> {
    fn new(buf: &'a [u8]) -> Wire<'a> {
        Wire { buf, at: 0 }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.at)
                .ok_or_else(|| SpmError::Malformed("truncated varint".into()))?;
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(SpmError::Malformed("varint longer than 10 bytes".into()))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                SpmError::Malformed(format!(
                    "a field of {n} bytes at offset {} runs past the end ({} bytes)",
                    self.at,
                    self.buf.len()
                ))
            })?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }

    /// The next field, or `None` at the end.
    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>> {
        if self.at == self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed64
            }
            2 => {
                let n = usize::try_from(self.varint()?)
                    .map_err(|_| SpmError::Malformed("length does not fit".into()))?;
                Field::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Field::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            w => {
                return Err(SpmError::Malformed(format!(
                    "wire type {w} of field {} is not used by SentencePiece models",
                    key >> 3
                )))
            }
        };
        Ok(Some((key >> 3, field)))
    }
}

fn text(b: &[u8], what: &str) -> Result<String> {
    String::from_utf8(b.to_vec()).map_err(|_| SpmError::Malformed(format!("{what} is not UTF-8")))
}

fn piece(b: &[u8]) -> Result<Piece> {
    let mut w = Wire::new(b);
    let mut p = Piece {
        piece: String::new(),
        score: 0.0,
        kind: PieceType::Normal,
    };
    while let Some((n, f)) = w.next()? {
        match (n, f) {
            (1, Field::Bytes(s)) => p.piece = text(s, "a piece")?,
            (2, Field::Fixed32(v)) => p.score = f32::from_bits(v),
            (3, Field::Varint(t)) => {
                p.kind = match t {
                    1 => PieceType::Normal,
                    2 => PieceType::Unknown,
                    3 => PieceType::Control,
                    4 => PieceType::UserDefined,
                    5 => PieceType::Unused,
                    6 => PieceType::Byte,
                    t => {
                        return Err(SpmError::Malformed(format!(
                            "piece {:?} has unknown type {t}",
                            p.piece
                        )))
                    }
                }
            }
            _ => {}
        }
    }
    Ok(p)
}

impl SpmModel {
    /// Parses a `tokenizer.model` (SentencePiece `ModelProto`).
    pub fn parse(bytes: &[u8]) -> Result<SpmModel> {
        let mut m = SpmModel {
            pieces: Vec::new(),
            model_type: 1,
            byte_fallback: false,
            normalizer_name: String::new(),
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        };
        let mut w = Wire::new(bytes);
        while let Some((n, f)) = w.next()? {
            match (n, f) {
                (1, Field::Bytes(b)) => m.pieces.push(piece(b)?),
                (2, Field::Bytes(b)) => {
                    let mut t = Wire::new(b);
                    while let Some((n, f)) = t.next()? {
                        match (n, f) {
                            (3, Field::Varint(v)) => m.model_type = v,
                            (35, Field::Varint(v)) => m.byte_fallback = v != 0,
                            _ => {}
                        }
                    }
                }
                (3, Field::Bytes(b)) => {
                    let mut t = Wire::new(b);
                    while let Some((n, f)) = t.next()? {
                        match (n, f) {
                            (1, Field::Bytes(s)) => m.normalizer_name = text(s, "normalizer name")?,
                            (2, Field::Bytes(s)) => m.precompiled_charsmap = s.to_vec(),
                            (3, Field::Varint(v)) => m.add_dummy_prefix = v != 0,
                            (4, Field::Varint(v)) => m.remove_extra_whitespaces = v != 0,
                            (5, Field::Varint(v)) => m.escape_whitespaces = v != 0,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if m.pieces.is_empty() {
            return Err(SpmError::Malformed("no pieces".into()));
        }
        Ok(m)
    }

    /// The id of the unknown piece.
    fn unk(&self) -> Result<&str> {
        self.pieces
            .iter()
            .find(|p| p.kind == PieceType::Unknown)
            .map(|p| p.piece.as_str())
            .ok_or_else(|| SpmError::Malformed("no unknown piece".into()))
    }

    /// BPE merges: every split of a normal piece into two normal pieces,
    /// ranked by the merged piece's score (highest first), then by its id and
    /// the ids of its parts, so that the order is deterministic.
    pub fn merges(&self) -> Vec<(String, String)> {
        self.merge_cuts()
            .into_iter()
            .map(|cut| {
                let (l, r) = self.split(cut);
                (l.to_string(), r.to_string())
            })
            .collect()
    }

    /// [`SpmModel::merges`] as (merged piece id, byte offset of the cut):
    /// two integers a merge instead of two strings (a 262k-piece vocabulary
    /// has millions of merges).
    fn merge_cuts(&self) -> Vec<(usize, usize)> {
        let ids: HashMap<&str, usize> = self
            .pieces
            .iter()
            .enumerate()
            .filter(|(_, p)| p.kind == PieceType::Normal)
            .map(|(i, p)| (p.piece.as_str(), i))
            .collect();
        let mut merges = Vec::new();
        for (id, p) in self.pieces.iter().enumerate() {
            if p.kind != PieceType::Normal {
                continue;
            }
            for (cut, _) in p.piece.char_indices().skip(1) {
                let (l, r) = p.piece.split_at(cut);
                if let (Some(&li), Some(&ri)) = (ids.get(l), ids.get(r)) {
                    merges.push((p.score, id, li, ri, cut));
                }
            }
        }
        merges.sort_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then(a.1.cmp(&b.1))
                .then(a.2.cmp(&b.2))
                .then(a.3.cmp(&b.3))
        });
        merges.into_iter().map(|m| (m.1, m.4)).collect()
    }

    /// The two parts of a merge cut.
    fn split(&self, (id, cut): (usize, usize)) -> (&str, &str) {
        self.pieces[id].piece.split_at(cut)
    }
}

/// ChatGLM 3's tokens after the SentencePiece vocabulary, in id order
/// (`SPTokenizer` of its `tokenization_chatglm.py`).
pub const CHATGLM3_TOKENS: [&str; 9] = [
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "sop",
    "eop",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
];

/// What a family's Python tokenizer adds around SentencePiece.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Additions {
    /// Tokens of tokenizer_config.json's `added_tokens_decoder`: id, content,
    /// special. An id inside the model renames that piece (InternLM2 names its
    /// `[UNUSED_TOKEN_146]` piece `<|im_start|>`); ids after it extend the
    /// vocabulary. transformers matches them in the text before SentencePiece
    /// runs, and so does the converted tokenizer.
    pub registered: Vec<(usize, String, bool)>,
    /// Tokens after the model's pieces (and after `registered`) that only the
    /// family's code emits by id (ChatGLM 3's `[gMASK]`, `sop`, role tokens):
    /// in the vocabulary, never matched in text, as that code does by default.
    pub appended: Vec<String>,
    /// Tokens `add_special_tokens` puts before the text (`<s>`, or ChatGLM's
    /// `[gMASK]`, `sop`).
    pub prefix: Vec<String>,
    /// Tokens it puts after the text (`</s>` when `add_eos_token`).
    pub suffix: Vec<String>,
}

impl Additions {
    /// The additions of a family's tokenizer (`family` as in the manifest)
    /// given its tokenizer_config.json: its `added_tokens_decoder`, and
    /// `add_bos_token` / `add_eos_token` (defaults true / false, the
    /// InternLM2, Baichuan and Llama tokenizers' own) with its `bos_token` /
    /// `eos_token` (defaults `<s>`, `</s>`). ChatGLM's tokenizer ignores
    /// those flags: it appends [`CHATGLM3_TOKENS`] and starts every text with
    /// `[gMASK]`, `sop`.
    pub fn of(family: &str, config: Option<&Map<String, Value>>) -> Result<Additions> {
        let bad = |m: String| SpmError::Unsupported(format!("tokenizer_config.json: {m}"));
        let mut a = Additions::default();
        if let Some(decoder) = config.and_then(|c| c.get("added_tokens_decoder")) {
            let decoder = decoder
                .as_object()
                .ok_or_else(|| bad("`added_tokens_decoder` is not an object".into()))?;
            for (id, t) in decoder {
                let id: usize = id
                    .parse()
                    .map_err(|_| bad(format!("added token id {id:?} is not a number")))?;
                let content = t
                    .get("content")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("added token {id} has no `content`")))?;
                let special = t.get("special").and_then(Value::as_bool).unwrap_or(false);
                a.registered.push((id, content.to_string(), special));
            }
            a.registered.sort();
        }
        if family == "chatglm" {
            a.appended = CHATGLM3_TOKENS.iter().map(|t| t.to_string()).collect();
            a.prefix = vec!["[gMASK]".into(), "sop".into()];
            return Ok(a);
        }
        let flag = |key: &str, default: bool| -> Result<bool> {
            match config.and_then(|c| c.get(key)) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(v) => Err(bad(format!("`{key}` is {v}, not true or false"))),
            }
        };
        let token = |key: &str, default: &str| -> Result<String> {
            match config.and_then(|c| c.get(key)) {
                None | Some(Value::Null) => Ok(default.into()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(Value::Object(o)) => o
                    .get("content")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("`{key}` has no `content`"))),
                Some(v) => Err(bad(format!("`{key}` is {v}, not a token"))),
            }
        };
        if flag("add_bos_token", true)? {
            a.prefix.push(token("bos_token", "<s>")?);
        }
        if flag("add_eos_token", false)? {
            a.suffix.push(token("eos_token", "</s>")?);
        }
        Ok(a)
    }
}

fn added(id: usize, content: &str, special: bool) -> Value {
    json!({
        "id": id, "content": content, "single_word": false, "lstrip": false,
        "rstrip": false, "normalized": false, "special": special
    })
}

/// The `tokenizer.json` (as a JSON value) that encodes like `model` with
/// the family's `additions`. For a large vocabulary prefer
/// [`tokenizer_json_bytes`], which never holds the vocabulary and merges as
/// JSON values.
pub fn tokenizer_json(model: &SpmModel, additions: &Additions) -> Result<Value> {
    let t = build(model, additions)?;
    serde_json::to_value(&t).map_err(|e| SpmError::Malformed(format!("tokenizer.json: {e}")))
}

/// [`tokenizer_json`] serialized (compact, as `Value::to_string` writes it),
/// the vocabulary and merges written straight from the model: a 262k-piece
/// vocabulary (Gemma 3) peaks at a fraction of the memory its JSON values
/// take.
pub fn tokenizer_json_bytes(model: &SpmModel, additions: &Additions) -> Result<Vec<u8>> {
    let t = build(model, additions)?;
    serde_json::to_vec(&t).map_err(|e| SpmError::Malformed(format!("tokenizer.json: {e}")))
}

/// A tokenizer.json being written: every field as a JSON value except the
/// BPE model's `vocab` and `merges`, which follow the other model fields.
struct TokenizerJson<'a> {
    /// The whole object, `model` without `vocab` and `merges`.
    head: Value,
    /// Token text by id (the vocabulary in id order).
    names: Vec<String>,
    /// The merges kept, as cuts of `model`'s pieces.
    merges: Vec<(usize, usize)>,
    /// The model the cuts index.
    model: &'a SpmModel,
}

/// Everything of [`tokenizer_json`] but the serialization.
fn build<'a>(model: &'a SpmModel, additions: &Additions) -> Result<TokenizerJson<'a>> {
    if model.model_type != 2 {
        let kind = match model.model_type {
            1 => "unigram",
            3 => "word",
            4 => "char",
            _ => "unknown",
        };
        return Err(SpmError::Unsupported(format!(
            "a SentencePiece {kind} model (type {}); only BPE models are converted to tokenizer.json",
            model.model_type
        )));
    }
    let unk = model.unk()?;
    // Token text per id: the pieces, renamed and extended by the registered tokens.
    let mut names: Vec<String> = model.pieces.iter().map(|p| p.piece.clone()).collect();
    // Added tokens by id: content and whether it is special.
    let mut added_by_id: std::collections::BTreeMap<usize, bool> = model
        .pieces
        .iter()
        .enumerate()
        .filter_map(|(id, p)| match p.kind {
            PieceType::Control | PieceType::Unknown => Some((id, true)),
            PieceType::UserDefined => Some((id, false)),
            _ => None,
        })
        .collect();
    for (id, content, special) in &additions.registered {
        match (*id).cmp(&names.len()) {
            std::cmp::Ordering::Less => names[*id] = content.clone(),
            std::cmp::Ordering::Equal => names.push(content.clone()),
            std::cmp::Ordering::Greater => {
                let before = names.len();
                return Err(SpmError::Unsupported(format!(
                    "added token {content:?} has id {id}, leaving a gap after the {before} tokens"
                )));
            }
        }
        added_by_id.insert(*id, *special);
    }
    names.extend(additions.appended.iter().cloned());
    let mut vocab: HashMap<&str, usize> = HashMap::with_capacity(names.len());
    for (id, name) in names.iter().enumerate() {
        if vocab.insert(name.as_str(), id).is_some() {
            return Err(SpmError::Malformed(format!(
                "token {name:?} appears twice in the vocabulary"
            )));
        }
    }
    let added_tokens: Vec<Value> = added_by_id
        .iter()
        .map(|(&id, &special)| added(id, &names[id], special))
        .collect();
    let id_of = |t: &str| -> Result<u64> {
        vocab.get(t).map(|&id| id as u64).ok_or_else(|| {
            SpmError::Unsupported(format!("special token {t:?} is not in the vocabulary"))
        })
    };
    let mut normalizers = Vec::new();
    if !model.precompiled_charsmap.is_empty() {
        normalizers.push(json!({
            "type": "Precompiled",
            "precompiled_charsmap": base64::encode(&model.precompiled_charsmap)
        }));
    }
    if model.remove_extra_whitespaces {
        normalizers
            .push(json!({"type": "Replace", "pattern": {"Regex": "^ +| +$"}, "content": ""}));
        normalizers.push(json!({"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}));
    }
    if model.add_dummy_prefix {
        normalizers.push(json!({"type": "Prepend", "prepend": SPACE}));
    }
    if model.escape_whitespaces {
        normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": SPACE}));
    }
    let mut decoders =
        vec![json!({"type": "Replace", "pattern": {"String": SPACE}, "content": " "})];
    if model.byte_fallback {
        decoders.push(json!({"type": "ByteFallback"}));
    }
    decoders.push(json!({"type": "Fuse"}));
    if model.add_dummy_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let mut special = Map::new();
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let tok = |t: &str| json!({"SpecialToken": {"id": t, "type_id": 0}});
    for t in &additions.prefix {
        single.push(tok(t));
        pair.push(tok(t));
    }
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    pair.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    for t in &additions.suffix {
        single.push(tok(t));
        pair.push(tok(t));
    }
    for t in &additions.prefix {
        pair.push(tok(t));
    }
    pair.push(json!({"Sequence": {"id": "B", "type_id": 1}}));
    for t in &additions.suffix {
        pair.push(tok(t));
    }
    for t in additions.prefix.iter().chain(&additions.suffix) {
        special.insert(
            t.clone(),
            json!({"id": t, "ids": [id_of(t)?], "tokens": [t]}),
        );
    }
    // A renamed piece leaves the vocabulary under its old name, and its merges with it.
    let mut merges = model.merge_cuts();
    merges.retain(|&cut| {
        let (l, r) = model.split(cut);
        let whole = &model.pieces[cut.0].piece;
        vocab.contains_key(l) && vocab.contains_key(r) && vocab.contains_key(whole.as_str())
    });
    let head = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": null,
        "post_processor": {
            "type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special
        },
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": true, "byte_fallback": model.byte_fallback, "ignore_merges": false
        }
    });
    drop(vocab);
    Ok(TokenizerJson {
        head,
        names,
        merges,
        model,
    })
}

impl Serialize for TokenizerJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        /// The `model` object: its fields, then `vocab` and `merges`.
        struct Model<'b>(&'b Map<String, Value>, &'b TokenizerJson<'b>);
        /// Token text → id, in id order.
        struct Vocab<'b>(&'b [String]);
        /// `[left, right]` per merge.
        struct Merges<'b>(&'b TokenizerJson<'b>);
        impl Serialize for Model<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(self.0.len() + 2))?;
                for (k, v) in self.0 {
                    m.serialize_entry(k, v)?;
                }
                m.serialize_entry("vocab", &Vocab(&self.1.names))?;
                m.serialize_entry("merges", &Merges(self.1))?;
                m.end()
            }
        }
        impl Serialize for Vocab<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().enumerate().map(|(id, n)| (n, id)))
            }
        }
        impl Serialize for Merges<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                let t = self.0;
                s.collect_seq(t.merges.iter().map(|&cut| {
                    let (l, r) = t.model.split(cut);
                    [l, r]
                }))
            }
        }
        let Some(head) = self.head.as_object() else {
            return Err(serde::ser::Error::custom("tokenizer.json is not an object"));
        };
        let mut m = s.serialize_map(Some(head.len()))?;
        for (k, v) in head {
            match (k.as_str(), v.as_object()) {
                ("model", Some(model)) => m.serialize_entry(k, &Model(model, self))?,
                _ => m.serialize_entry(k, v)?,
            }
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protobuf of `pieces` (piece, score, type) and a BPE trainer spec.
    fn proto(pieces: &[(&str, f32, u64)], model_type: u64) -> Vec<u8> {
        fn len_field(out: &mut Vec<u8>, n: u64, b: &[u8]) {
            out.push((n << 3 | 2) as u8);
            out.push(b.len() as u8);
            out.extend_from_slice(b);
        }
        let mut out = Vec::new();
        for (p, s, t) in pieces {
            let mut m = Vec::new();
            len_field(&mut m, 1, p.as_bytes());
            m.push(2 << 3 | 5);
            m.extend_from_slice(&s.to_le_bytes());
            m.extend_from_slice(&[3 << 3, *t as u8]);
            len_field(&mut out, 1, &m);
        }
        // trainer_spec { model_type; byte_fallback (field 35: two-byte key) }
        len_field(&mut out, 2, &[3 << 3, model_type as u8, 0x98, 0x02, 1]);
        // normalizer_spec { name "identity"; add_dummy_prefix true }
        let mut n = Vec::new();
        len_field(&mut n, 1, b"identity");
        n.extend_from_slice(&[3 << 3, 1, 4 << 3, 0]);
        len_field(&mut out, 3, &n);
        out
    }

    #[test]
    fn parses_pieces_specs_and_ranks_merges_by_score() {
        let bytes = proto(
            &[
                ("<unk>", 0.0, 2),
                ("<s>", 0.0, 3),
                ("<|u|>", 0.0, 4),
                ("\u{2581}a", -1.0, 1),
                ("ab", -0.5, 1),
                ("\u{2581}", -3.0, 1),
                ("a", -4.0, 1),
                ("b", -5.0, 1),
                ("<0x41>", 0.0, 6),
            ],
            2,
        );
        let m = SpmModel::parse(&bytes).expect("parse");
        assert_eq!(m.pieces.len(), 9);
        assert_eq!(m.pieces[2].kind, PieceType::UserDefined);
        assert_eq!(m.pieces[4].score, -0.5);
        assert_eq!(m.model_type, 2);
        assert!(m.byte_fallback);
        assert_eq!(m.normalizer_name, "identity");
        assert!(m.add_dummy_prefix && !m.remove_extra_whitespaces && m.escape_whitespaces);
        // "ab" (-0.5) outranks "▁a" (-1.0).
        assert_eq!(
            m.merges(),
            [("a".into(), "b".into()), ("\u{2581}".into(), "a".into())]
        );
        // "ab" is renamed by the config: its merge goes; one token extends the vocabulary.
        let config = serde_json::json!({
            "add_bos_token": true,
            "bos_token": {"content": "<s>"},
            "added_tokens_decoder": {
                "4": {"content": "<|r|>", "special": true},
                "9": {"content": "<|x|>", "special": false}
            }
        });
        let a = Additions::of("internlm2", config.as_object()).expect("additions");
        assert_eq!(a.prefix, ["<s>"]);
        assert!(a.suffix.is_empty());
        let t = tokenizer_json(&m, &a).expect("convert");
        assert_eq!(t["model"]["vocab"]["<|r|>"], 4);
        assert_eq!(t["model"]["vocab"]["<|x|>"], 9);
        assert!(t["model"]["vocab"].get("ab").is_none());
        assert_eq!(t["model"]["merges"], serde_json::json!([["\u{2581}", "a"]]));
        let added: Vec<(u64, &str, bool)> = t["added_tokens"]
            .as_array()
            .expect("added")
            .iter()
            .map(|a| {
                (
                    a["id"].as_u64().unwrap(),
                    a["content"].as_str().unwrap(),
                    a["special"].as_bool().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            added,
            [
                (0, "<unk>", true),
                (1, "<s>", true),
                (2, "<|u|>", false),
                (4, "<|r|>", true),
                (9, "<|x|>", false)
            ]
        );
        assert_eq!(t["post_processor"]["special_tokens"]["<s>"]["ids"][0], 1);
        // ChatGLM: its tokens follow, in the vocabulary only, and prefix every text.
        let g = Additions::of("chatglm", None).expect("chatglm");
        let t = tokenizer_json(&m, &g).expect("convert");
        assert_eq!(t["model"]["vocab"]["[gMASK]"], 10);
        assert_eq!(t["model"]["vocab"]["<|observation|>"], 17);
        assert_eq!(t["added_tokens"].as_array().unwrap().len(), 3);
        assert_eq!(t["post_processor"]["special_tokens"]["sop"]["ids"][0], 12);
        // A gap after the model's pieces is refused; so is a malformed flag.
        let gap = serde_json::json!({"added_tokens_decoder": {"11": {"content": "x"}}});
        let e =
            tokenizer_json(&m, &Additions::of("baichuan", gap.as_object()).unwrap()).unwrap_err();
        assert!(e.to_string().contains("gap"), "{e}");
        let flag = serde_json::json!({"add_bos_token": "yes"});
        let e = Additions::of("baichuan", flag.as_object()).unwrap_err();
        assert!(e.to_string().contains("add_bos_token"), "{e}");
    }

    #[test]
    fn refuses_damage_and_other_model_types() {
        let bytes = proto(&[("<unk>", 0.0, 2), ("a", -1.0, 1)], 1);
        let m = SpmModel::parse(&bytes).expect("parse");
        let e = tokenizer_json(&m, &Additions::default()).unwrap_err();
        assert!(e.to_string().contains("unigram"), "{e}");
        for cut in 1..bytes.len() {
            // Any truncation is an error or a shorter valid model, never a panic.
            let _ = SpmModel::parse(&bytes[..cut]);
        }
        assert!(matches!(
            SpmModel::parse(b"{\"version\": 1}"),
            Err(SpmError::Malformed(_))
        ));
        assert!(matches!(SpmModel::parse(&[]), Err(SpmError::Malformed(_))));
    }
}
