//! tiktoken rank file → Hugging Face `tokenizer.json`.
//!
//! Qwen (v1) ships `qwen.tiktoken` and GLM-4 a `tokenizer.model` in the same
//! format: one line per token, `base64(token bytes) rank`. Their Python
//! tokenizers (remote code) build a `tiktoken.Encoding` from it with a
//! pre-tokenization pattern and special tokens numbered after the ranks. The
//! tokenizer.json written here is the byte-level BPE transformers'
//! `TikTokenConverter` makes of such a file:
//!
//! - vocabulary: each token's bytes in GPT-2's byte-to-character alphabet,
//!   its rank as id; merges: every split of a token into two tokens, ranked by
//!   the token's rank (tiktoken merges the adjacent pair whose concatenation
//!   ranks lowest), `ignore_merges` so that a pre-token in the vocabulary is
//!   taken whole, as tiktoken does;
//! - pre-tokenizer: the family's pattern (isolated splits), then byte-level;
//!   normalizer: NFC for Qwen, whose tokenizer normalizes first;
//! - special tokens: added tokens matched in the text (Qwen encodes with
//!   `allowed_special="all"`; GLM-4's tokenizer_config registers its own);
//! - post-processor: GLM-4's `[gMASK]`, `<sop>` before the text; decoder:
//!   byte-level.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::base64;

/// Qwen (v1)'s pre-tokenization pattern (`PAT_STR` of `tokenization_qwen.py`):
/// one digit per number piece.
pub const QWEN_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GLM-4's pattern (`pat_str` of its `tokenization_chatglm.py`, cl100k's):
/// up to three digits per number piece.
pub const GLM4_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GLM-4's special tokens, numbered from the number of ranks on.
pub const GLM4_SPECIAL: [&str; 14] = [
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
];

/// Qwen (v1)'s special tokens, numbered from the number of ranks on:
/// `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, `<|extra_0|>`..`<|extra_204|>`.
pub fn qwen_special() -> Vec<String> {
    ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .map(|s| s.to_string())
        .chain((0..205).map(|i| format!("<|extra_{i}|>")))
        .collect()
}

/// How a family's tokenizer uses its rank file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flavor {
    /// Pre-tokenization pattern.
    pub pattern: &'static str,
    /// Special tokens, with ids after the ranks.
    pub special: Vec<String>,
    /// Whether the text is NFC-normalized first.
    pub nfc: bool,
    /// Special tokens put before the text by `add_special_tokens`.
    pub prefix: Vec<String>,
}

impl Flavor {
    /// The flavor of a family (as in the manifest), if its tokenizer is tiktoken-based.
    pub fn of(family: &str) -> Option<Flavor> {
        match family {
            "qwen" => Some(Flavor {
                pattern: QWEN_PATTERN,
                special: qwen_special(),
                nfc: true,
                prefix: Vec::new(),
            }),
            "chatglm" => Some(Flavor {
                pattern: GLM4_PATTERN,
                special: GLM4_SPECIAL.iter().map(|s| s.to_string()).collect(),
                nfc: false,
                prefix: vec!["[gMASK]".into(), "<sop>".into()],
            }),
            _ => None,
        }
    }
}

/// Why a rank file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a tiktoken rank file: {0}")]
pub struct TiktokenError(String);

/// Token bytes by rank (ranks `0..n`, each once).
pub fn parse(text: &[u8]) -> Result<Vec<Vec<u8>>, TiktokenError> {
    let bad = |m: String| TiktokenError(m);
    let text = std::str::from_utf8(text).map_err(|_| bad("not UTF-8 text".into()))?;
    let mut by_rank: Vec<Option<Vec<u8>>> = Vec::new();
    let mut count = 0usize;
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
        let mut parts = line.split(' ');
        let (Some(tok), Some(rank), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad(format!("line {} is not `base64 rank`", n + 1)));
        };
        let bytes = base64::decode(tok)
            .filter(|b| !b.is_empty())
            .ok_or_else(|| bad(format!("line {}: {tok:?} is not base64 of a token", n + 1)))?;
        let rank: usize = rank
            .parse()
            .map_err(|_| bad(format!("line {}: rank {rank:?} is not a number", n + 1)))?;
        // Ranks are dense, so no rank can exceed the number of lines.
        if rank >= text.len() {
            return Err(bad(format!("line {}: rank {rank} is out of range", n + 1)));
        }
        if by_rank.len() <= rank {
            by_rank.resize(rank + 1, None);
        }
        if by_rank[rank].replace(bytes).is_some() {
            return Err(bad(format!("line {}: rank {rank} appears twice", n + 1)));
        }
        count += 1;
    }
    if count == 0 {
        return Err(bad("no tokens".into()));
    }
    let ranks: Vec<Vec<u8>> = by_rank
        .into_iter()
        .enumerate()
        .map(|(r, t)| t.ok_or_else(|| bad(format!("rank {r} is missing"))))
        .collect::<Result<_, _>>()?;
    let mut seen = HashMap::with_capacity(ranks.len());
    for (r, t) in ranks.iter().enumerate() {
        if let Some(first) = seen.insert(t.as_slice(), r) {
            return Err(bad(format!("ranks {first} and {r} hold the same token")));
        }
    }
    if (0u8..=255).any(|b| !seen.contains_key([b].as_slice())) {
        return Err(bad("not every single byte is a token".into()));
    }
    Ok(ranks)
}

/// GPT-2's byte-to-character table: byte-level vocabularies write each byte
/// as one printable character.
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            extra += 1;
            char::from_u32(255 + extra).expect("below the surrogates")
        };
    }
    table
}

/// The `tokenizer.json` (as a JSON value) for token bytes `ranks` used as
/// `flavor` says.
pub fn tokenizer_json(ranks: &[Vec<u8>], flavor: &Flavor) -> Value {
    let chars = byte_chars();
    let name = |t: &[u8]| -> String { t.iter().map(|&b| chars[b as usize]).collect() };
    let ids: HashMap<&[u8], usize> = ranks
        .iter()
        .enumerate()
        .map(|(r, t)| (t.as_slice(), r))
        .collect();
    let mut vocab = Map::new();
    for (r, t) in ranks.iter().enumerate() {
        vocab.insert(name(t), r.into());
    }
    let mut merges = Vec::new();
    for (r, t) in ranks.iter().enumerate() {
        let mut local: Vec<(usize, usize, usize)> = (1..t.len())
            .filter_map(|cut| Some((*ids.get(&t[..cut])?, *ids.get(&t[cut..])?, cut)))
            .collect();
        local.sort();
        merges.extend(local.into_iter().map(|(_, _, cut)| (r, cut)));
    }
    let merges: Vec<Value> = merges
        .into_iter()
        .map(|(r, cut)| json!([name(&ranks[r][..cut]), name(&ranks[r][cut..])]))
        .collect();
    let added: Vec<Value> = flavor
        .special
        .iter()
        .enumerate()
        .map(|(k, t)| {
            json!({
                "id": ranks.len() + k, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
            })
        })
        .collect();
    let id_of = |t: &str| {
        flavor
            .special
            .iter()
            .position(|s| s == t)
            .map(|k| ranks.len() + k)
    };
    let tok = |t: &str| json!({"SpecialToken": {"id": t, "type_id": 0}});
    let mut single: Vec<Value> = flavor.prefix.iter().map(|t| tok(t)).collect();
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    let mut pair = single.clone();
    pair.push(json!({"Sequence": {"id": "B", "type_id": 1}}));
    let special: Map<String, Value> = flavor
        .prefix
        .iter()
        .filter_map(|t| {
            Some((
                t.clone(),
                json!({"id": t, "ids": [id_of(t)?], "tokens": [t]}),
            ))
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": if flavor.nfc { json!({"type": "NFC"}) } else { Value::Null },
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": flavor.pattern}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]},
        "post_processor": {
            "type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": true, "vocab": vocab, "merges": merges
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(tokens: &[&[u8]]) -> Vec<u8> {
        let mut all: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        all.extend(tokens.iter().map(|t| t.to_vec()));
        all.iter()
            .enumerate()
            .map(|(r, t)| format!("{} {r}\n", base64::encode(t)))
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn byte_alphabet_is_gpt2s() {
        let c = byte_chars();
        assert_eq!(
            (c[b'!' as usize], c[b' ' as usize], c[b'\n' as usize]),
            ('!', 'Ġ', 'Ċ')
        );
        assert_eq!((c[0], c[0xAD]), ('Ā', 'Ń'));
        let distinct: std::collections::HashSet<char> = c.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn parses_and_converts_with_merges_in_rank_order() {
        let ranks = parse(&file(&[b"ab", b" a", b"abc"])).expect("parse");
        assert_eq!(ranks.len(), 259);
        assert_eq!(ranks[257], b" a");
        let t = tokenizer_json(&ranks, &Flavor::of("chatglm").expect("glm4"));
        assert_eq!(t["model"]["vocab"]["Ġa"], 257);
        // "ab" (256), " a" (257), "abc" = "ab" + "c" (258).
        assert_eq!(
            t["model"]["merges"],
            json!([["a", "b"], ["Ġ", "a"], ["ab", "c"]])
        );
        assert_eq!(t["added_tokens"][2]["content"], "[gMASK]");
        assert_eq!(t["added_tokens"][2]["id"], 261);
        assert_eq!(
            t["post_processor"]["special_tokens"]["<sop>"]["ids"][0],
            263
        );
        assert_eq!(t["normalizer"], Value::Null);
        let q = tokenizer_json(&ranks, &Flavor::of("qwen").expect("qwen"));
        assert_eq!(q["normalizer"]["type"], "NFC");
        assert_eq!(q["added_tokens"].as_array().unwrap().len(), 208);
        assert_eq!(q["added_tokens"][207]["content"], "<|extra_204|>");
        assert!(Flavor::of("llama").is_none());
    }

    #[test]
    fn damaged_files_are_refused() {
        let good = file(&[b"ab"]);
        let text = String::from_utf8(good.clone()).unwrap();
        for (bad, why) in [
            (text.replace(" 256", " 258"), "missing"),
            (text.replace("YWI= 256", "YQ== 256"), "same token"),
            (text.replace("YWI= 256", "YWI= x"), "not a number"),
            (text.replace("YWI= 256", "Y*I= 256"), "base64"),
            (text.replace("YWI= 256", "YWI=256"), "base64 rank"),
            (text.replace("AA== 0\n", ""), "missing"),
            (String::new(), "no tokens"),
        ] {
            let e = parse(bad.as_bytes()).unwrap_err();
            assert!(e.to_string().contains(why), "{why}: {e}");
        }
        let e = parse(&[0xff, 0xfe]).unwrap_err().to_string();
        assert!(e.contains("not UTF-8"), "{e}");
        // A SentencePiece protobuf is not a rank file.
        let e = parse(b"\x0a\x05\x0a\x01a\x15").unwrap_err().to_string();
        assert!(e.contains("line 2 is not `base64 rank`"), "{e}");
    }
}
