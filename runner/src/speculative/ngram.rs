//! Prompt-lookup drafting: the continuation of the latest earlier occurrence
//! of the text's last few tokens, proposed without any draft model.

/// Longest suffix looked up.
pub const NGRAM_MAX: usize = 4;

/// Shortest suffix looked up: a single token matches too often by chance.
pub const NGRAM_MIN: usize = 2;

/// Proposes up to `k` tokens to follow `ids`: for the longest suffix of `ids`
/// (from [`NGRAM_MAX`] tokens down to [`NGRAM_MIN`]) that also occurs earlier,
/// the tokens that followed its latest earlier occurrence. Empty when no
/// suffix recurs or `k` is 0.
pub fn propose(ids: &[u32], k: usize) -> Vec<u32> {
    if k == 0 {
        return Vec::new();
    }
    for n in (NGRAM_MIN..=NGRAM_MAX).rev() {
        if ids.len() <= n {
            continue;
        }
        let suffix = &ids[ids.len() - n..];
        // Latest occurrence first, ending before the suffix itself.
        let found = (0..ids.len() - n)
            .rev()
            .find(|&start| &ids[start..start + n] == suffix);
        if let Some(start) = found {
            let from = start + n;
            let to = (from + k).min(ids.len());
            return ids[from..to].to_vec();
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_longest_match_is_continued() {
        // "1 2 3" occurs twice before; the latest occurrence continues with 9.
        let ids = [1, 2, 3, 4, 5, 1, 2, 3, 9, 8, 7, 1, 2, 3];
        assert_eq!(propose(&ids, 3), vec![9, 8, 7]);
        assert_eq!(propose(&ids, 1), vec![9]);
        assert_eq!(propose(&ids, 0), Vec::<u32>::new());
        // The continuation stops at the end of the text.
        assert_eq!(propose(&[5, 6, 7, 5, 6], 10), vec![7, 5, 6]);
    }

    #[test]
    fn longer_suffixes_win_over_more_recent_shorter_ones() {
        // Suffix [7, 1, 2]: its 3-token match is at the start (continues 40);
        // [1, 2] alone also occurs later (continues 50).
        let ids = [7, 1, 2, 40, 0, 1, 2, 50, 7, 1, 2];
        assert_eq!(propose(&ids, 1), vec![40]);
    }

    #[test]
    fn nothing_recurring_proposes_nothing() {
        assert!(propose(&[1, 2, 3, 4], 4).is_empty());
        assert!(propose(&[], 4).is_empty());
        // A single recurring token is not enough.
        assert!(propose(&[1, 2, 3, 1], 4).is_empty());
    }
}
