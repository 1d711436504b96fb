//! Incremental detokenization for streaming output, with stop strings.
//!
//! Decoding tokens one at a time goes wrong in two ways: a byte-level BPE token may hold only
//! part of a UTF-8 character, and SentencePiece-style decoders decide spaces from context. So,
//! as text-generation-inference does, the stream decodes a short window of recent tokens twice
//! (with and without the newest ones) and prints the difference once it no longer ends in an
//! incomplete character (U+FFFD). Text that could be the beginning of a stop string is held back
//! until it either completes the stop string (generation stops, the stop string is not printed)
//! or diverges from it (it is printed).

use super::tokenizer::TextTokenizer;
use super::TextError;

/// The replacement character decoders emit for incomplete UTF-8 sequences.
const REPLACEMENT: char = '\u{FFFD}';

/// Turns generated token ids into printable text, piece by piece.
#[derive(Debug, Clone)]
pub struct TextStream {
    /// Non-empty stop strings.
    stop: Vec<String>,
    /// Generated ids not yet fully printed, starting at the decoding window.
    ids: Vec<u32>,
    /// `ids[..read]` have been turned into text (the window's context).
    read: usize,
    /// Decoded text not yet returned because it may start a stop string.
    pending: String,
    /// A stop string was completed, or `finish` ran.
    done: bool,
}

impl TextStream {
    /// A stream that stops at the first occurrence of any of `stop` (empty strings are
    /// ignored). Special tokens are decoded as their text (`<|im_end|>`), so stop strings can
    /// name them.
    pub fn new(stop: Vec<String>) -> TextStream {
        TextStream {
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            ids: Vec::new(),
            read: 0,
            pending: String::new(),
            done: false,
        }
    }

    /// Pushes one generated token id. Returns the text that is now safe to print (never a
    /// partial UTF-8 character, never text that might be the start of a stop string) and
    /// whether a stop string was completed: then the text ends right before it and generation
    /// must stop. After a stop, further pushes return `("", true)`.
    pub fn push(&mut self, tok: &TextTokenizer, id: u32) -> Result<(String, bool), TextError> {
        if self.done {
            return Ok((String::new(), true));
        }
        self.ids.push(id);
        let context = tok.decode(&self.ids[..self.read], false)?;
        let text = tok.decode(&self.ids, false)?;
        if text.len() > context.len() && !text.ends_with(REPLACEMENT) {
            self.pending
                .push_str(&text[floor_char_boundary(&text, context.len())..]);
            // The newest tokens become the context of the next window.
            self.ids.drain(..self.read);
            self.read = self.ids.len();
        }
        Ok(self.release())
    }

    /// Flushes what is held back at the end of generation: text held as a possible stop
    /// string prefix, and the tail of a character the tokens never completed (printed with
    /// U+FFFD, as a full decode would). Returns "" after a stop.
    pub fn finish(&mut self, tok: &TextTokenizer) -> Result<String, TextError> {
        if self.done {
            return Ok(String::new());
        }
        let context = tok.decode(&self.ids[..self.read], false)?;
        let text = tok.decode(&self.ids, false)?;
        self.pending
            .push_str(&text[floor_char_boundary(&text, context.len())..]);
        self.ids.clear();
        self.read = 0;
        self.done = true;
        let mut out = std::mem::take(&mut self.pending);
        if let Some(at) = self.first_stop(&out) {
            out.truncate(at);
        }
        Ok(out)
    }

    /// Splits `pending` into what can be printed now and what must wait.
    fn release(&mut self) -> (String, bool) {
        if let Some(at) = self.first_stop(&self.pending) {
            let mut out = std::mem::take(&mut self.pending);
            out.truncate(at);
            self.done = true;
            return (out, true);
        }
        let hold = self.stop_prefix_len(&self.pending);
        let out: String = self.pending.drain(..self.pending.len() - hold).collect();
        (out, false)
    }

    /// Byte offset of the earliest stop string in `text`.
    fn first_stop(&self, text: &str) -> Option<usize> {
        self.stop.iter().filter_map(|s| text.find(s.as_str())).min()
    }

    /// Length of the longest suffix of `text` that is the beginning of some stop string.
    fn stop_prefix_len(&self, text: &str) -> usize {
        let longest = self.stop.iter().map(String::len).max().unwrap_or(0);
        (1..=longest.min(text.len()))
            .rev()
            .find(|&n| {
                let start = text.len() - n;
                text.is_char_boundary(start)
                    && self.stop.iter().any(|s| s.starts_with(&text[start..]))
            })
            .unwrap_or(0)
    }
}

/// The largest char boundary of `text` at or before `index`.
fn floor_char_boundary(text: &str, index: usize) -> usize {
    if index >= text.len() {
        return text.len();
    }
    (0..=index)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::{byte_level_tokenizer, smollm2_dir};

    /// Runs `ids` through a stream; returns each push's output, whether it stopped, and the
    /// finish output.
    fn run(tok: &TextTokenizer, stop: &[&str], ids: &[u32]) -> (Vec<String>, bool, String) {
        let mut stream = TextStream::new(stop.iter().map(|s| s.to_string()).collect());
        let mut pieces = Vec::new();
        let mut stopped = false;
        for &id in ids {
            let (piece, stop) = stream.push(tok, id).expect("push");
            pieces.push(piece);
            if stop {
                stopped = true;
                break;
            }
        }
        let tail = stream.finish(tok).expect("finish");
        (pieces, stopped, tail)
    }

    fn bytes(text: &str) -> Vec<u32> {
        text.bytes().map(u32::from).collect()
    }

    #[test]
    fn characters_split_across_byte_tokens_print_whole() {
        let (_dir, tok) = byte_level_tokenizer(serde_json::Value::Null);
        let text = "a🎉b東京é!";
        let ids = bytes(text);
        let (pieces, stopped, tail) = run(&tok, &[], &ids);
        assert!(!stopped);
        assert_eq!(tail, "");
        // One push per byte: the emoji's first three bytes print nothing, its fourth prints it.
        assert_eq!(
            pieces,
            vec!["a", "", "", "", "🎉", "b", "", "", "東", "", "", "京", "", "é", "!"]
        );
        assert!(pieces.iter().all(|p| !p.contains(REPLACEMENT)));
    }

    #[test]
    fn unfinished_character_is_flushed_by_finish() {
        let (_dir, tok) = byte_level_tokenizer(serde_json::Value::Null);
        let mut ids = bytes("ok ");
        ids.extend(&bytes("🎉")[..2]);
        let (pieces, stopped, tail) = run(&tok, &[], &ids);
        assert!(!stopped);
        assert_eq!(pieces.concat(), "ok ");
        assert_eq!(tail, tok.decode(&ids, false).expect("decode")[3..]);
        assert!(tail.contains(REPLACEMENT));
    }

    #[test]
    fn stop_string_split_across_tokens_stops_right_before_it() {
        let (_dir, tok) = byte_level_tokenizer(serde_json::Value::Null);
        let ids = bytes("Hello there.\nUser: more text");
        let (pieces, stopped, tail) = run(&tok, &["\nUser:"], &ids);
        assert!(stopped);
        assert_eq!(pieces.concat(), "Hello there.");
        assert_eq!(tail, "");
        // Nothing of the stop string was printed at any point.
        assert!(pieces
            .iter()
            .all(|p| !p.contains('\n') && !p.contains("User")));
        // The stop is reported by the push that completes it, with the text before it.
        assert_eq!(pieces.last().map(String::as_str), Some(""));
    }

    #[test]
    fn stop_string_inside_one_token_cuts_that_token() {
        let (_dir, tok) = byte_level_tokenizer(serde_json::Value::Null);
        let end = tok.token_to_id("<|end|>").expect("special token");
        let mut ids = bytes("answer");
        ids.push(end);
        ids.extend(bytes("ignored"));
        let (pieces, stopped, _) = run(&tok, &["<|end|>"], &ids);
        assert!(stopped);
        assert_eq!(pieces.concat(), "answer");
        // Without the stop string the special token is printed as its text.
        let (pieces, stopped, _) = run(&tok, &[], &ids);
        assert!(!stopped);
        assert_eq!(pieces.concat(), "answer<|end|>ignored");
    }

    #[test]
    fn text_that_starts_like_a_stop_string_but_diverges_is_printed() {
        let (_dir, tok) = byte_level_tokenizer(serde_json::Value::Null);
        let ids = bytes("a\nUse it\nUs");
        let (pieces, stopped, tail) = run(&tok, &["\nUser:"], &ids);
        assert!(!stopped);
        // "\nUse" was held until " " showed it is not "\nUser:".
        assert_eq!(pieces[..5].concat(), "a");
        assert_eq!(pieces[5], "\nUse ");
        assert_eq!(pieces.concat(), "a\nUse it");
        // The trailing "\nUs" could still have become the stop string: finish prints it.
        assert_eq!(tail, "\nUs");
    }

    #[test]
    fn earliest_of_several_stop_strings_wins_and_overlaps_are_handled() {
        let (_dir, tok) = byte_level_tokenizer(serde_json::Value::Null);
        let (pieces, stopped, _) = run(&tok, &["abcd", "bc"], &bytes("xabce"));
        assert!(stopped);
        assert_eq!(pieces.concat(), "xa");
        // "aab" with stop "ab": the first "a" is released once the second arrives.
        let (pieces, stopped, _) = run(&tok, &["ab"], &bytes("aab"));
        assert!(stopped);
        assert_eq!(pieces, vec!["", "a", ""]);
        // Multi-byte stop string, split inside its characters.
        let (pieces, stopped, _) = run(&tok, &["東京"], &bytes("x東京y"));
        assert!(stopped);
        assert_eq!(pieces.concat(), "x");
        // Empty stop strings are ignored; pushes after a stop return nothing.
        let mut stream = TextStream::new(vec![String::new(), "b".to_string()]);
        assert_eq!(
            stream.push(&tok, u32::from(b'a')).expect("push"),
            ("a".to_string(), false)
        );
        assert_eq!(
            stream.push(&tok, u32::from(b'b')).expect("push"),
            (String::new(), true)
        );
        assert_eq!(
            stream.push(&tok, u32::from(b'c')).expect("push"),
            (String::new(), true)
        );
        assert_eq!(stream.finish(&tok).expect("finish"), "");
    }

    #[test]
    fn smollm2_stream_equals_full_decode() {
        let tok = TextTokenizer::load(&smollm2_dir())
            .expect("load")
            .expect("present");
        let text = "Voilà 🎉👍🏽 東京タワー — \"quotes\" & <tags>\n  indented, 한국어 text. 🇫🇷";
        let ids = tok.encode(text, false).expect("encode");
        // SmolLM2's byte-level BPE splits some of these characters across tokens.
        assert!(ids.iter().any(|&id| tok
            .decode(&[id], false)
            .expect("decode")
            .contains(REPLACEMENT)));
        let (pieces, stopped, tail) = run(&tok, &[], &ids);
        assert!(!stopped);
        assert!(pieces.iter().all(|p| !p.contains(REPLACEMENT)));
        assert_eq!(pieces.concat() + &tail, text);

        let (pieces, stopped, _) = run(&tok, &["タワー"], &ids);
        assert!(stopped);
        assert_eq!(pieces.concat(), "Voilà 🎉👍🏽 東京");
    }

    #[test]
    fn floor_char_boundary_never_splits_a_character() {
        let text = "aé東";
        assert_eq!(floor_char_boundary(text, 0), 0);
        assert_eq!(floor_char_boundary(text, 2), 1);
        assert_eq!(floor_char_boundary(text, 4), 3);
        assert_eq!(floor_char_boundary(text, 5), 3);
        assert_eq!(floor_char_boundary(text, 6), 6);
        assert_eq!(floor_char_boundary(text, 99), 6);
    }
}
