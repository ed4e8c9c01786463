//! The text both databases index and query, made the same way on both sides (pure).
//!
//! - Lower case (Unicode, and `ß` as `ss`), so `grüße` and `GRÜSSE` find `Grüße`; accents are
//!   kept (`gruße` is another word, as in Gmail).
//! - Scripts written without spaces (Chinese, Japanese, Thai, …: anything idlesync cannot split
//!   into words) are indexed as overlapping pairs of characters, the usual bigram approach: `東京都`
//!   is `東京 京都`. A query is made the same way and searched as a phrase, so `京都` finds
//!   `東京都` and a word of any length inside a sentence is found.
//! - Every character that is not a letter or a digit becomes a space, so both databases'
//!   tokenizers (PostgreSQL's `simple` configuration, SQLite's `unicode61`) see the same plain
//!   words: `ann@example.com` is `ann example com`, and a query for it is that phrase.

/// Whether `c` belongs to a script written without spaces between words.
fn unspaced(c: char) -> bool {
    matches!(c as u32,
        0x0E00..=0x0EFF        // Thai, Lao
        | 0x1000..=0x109F      // Myanmar
        | 0x1780..=0x17FF      // Khmer
        | 0x3040..=0x30FF      // Hiragana, Katakana
        | 0x3400..=0x4DBF      // CJK Extension A
        | 0x4E00..=0x9FFF      // CJK Unified Ideographs
        | 0xAC00..=0xD7AF      // Hangul syllables
        | 0xF900..=0xFAFF      // CJK Compatibility Ideographs
        | 0xFF66..=0xFF9F      // half-width Katakana
        | 0x20000..=0x2FFFF) // CJK Extensions B and later
}

/// `s` as indexed and queried: lower case, unspaced runs as bigrams.
pub fn normalize(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 2);
    let mut run: Vec<char> = Vec::new();
    for c in s.chars() {
        if unspaced(c) {
            run.push(c);
            continue;
        }
        flush(&mut out, &mut run);
        if c.is_alphanumeric() {
            // Case folding beyond lower case, where a word has two spellings by case:
            // GRÜSSE is grüße, and a final sigma is a sigma.
            match c {
                'ß' | 'ẞ' => out.push_str("ss"),
                'ς' => out.push('σ'),
                _ => out.extend(c.to_lowercase()),
            }
        } else {
            out.push(' ');
        }
    }
    flush(&mut out, &mut run);
    out
}

fn flush(out: &mut String, run: &mut Vec<char>) {
    match run.len() {
        0 => return,
        1 => {
            out.push(' ');
            out.push(run[0]);
            out.push(' ');
        }
        _ => {
            out.push(' ');
            for pair in run.windows(2) {
                out.push(pair[0]);
                out.push(pair[1]);
                out.push(' ');
            }
        }
    }
    run.clear();
}

/// The words of a normalized text as the databases' tokenizers would see them, roughly: runs of
/// letters and digits. Used to build queries and to mark matches in snippets.
pub fn words(normalized: &str) -> Vec<&str> {
    normalized
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect()
}

/// The names and addresses of a JSON address list (`[{"name","address"}]`), as text: the
/// address whole and split (`ann@example.com ann example.com`), so `from:ann`,
/// `from:example.com` and `from:ann@example.com` all match.
pub fn addresses(json: &str) -> String {
    let list: Vec<serde_json::Value> = serde_json::from_str(json).unwrap_or_default();
    let mut out = String::new();
    for a in &list {
        if let Some(n) = a["name"].as_str() {
            out.push_str(n);
            out.push(' ');
        }
        if let Some(addr) = a["address"].as_str() {
            out.push_str(addr);
            out.push(' ');
        }
    }
    out
}

/// Body text indexed per message, at most: a 5 MB log attached inline must not make a
/// `tsvector` past PostgreSQL's 1 MB limit (and fail the batch that stores it).
pub const MAX_BODY: usize = 64 * 1024;

/// What one message contributes to the index, each field normalized.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Doc {
    /// Everything a bare word matches: subject, names and addresses, body, attachment names.
    pub all: String,
    /// `subject:`
    pub subject: String,
    /// `from:`
    pub from: String,
    /// `to:`
    pub to: String,
    /// `cc:`
    pub cc: String,
    /// `filename:`
    pub files: String,
}

/// A message's [`Doc`] from its stored fields (address lists as the store's JSON).
pub fn doc(
    subject: Option<&str>,
    from: &str,
    to: &str,
    cc: &str,
    body: Option<&str>,
    files: &[&str],
) -> Doc {
    let body = body.unwrap_or("");
    let mut cut = body.len().min(MAX_BODY);
    while !body.is_char_boundary(cut) {
        cut -= 1;
    }
    let d = Doc {
        subject: normalize(subject.unwrap_or("")),
        from: normalize(&addresses(from)),
        to: normalize(&addresses(to)),
        cc: normalize(&addresses(cc)),
        files: normalize(&files.join(" ")),
        all: String::new(),
    };
    let all = format!(
        "{} {} {} {} {} {}",
        d.subject,
        d.from,
        d.to,
        d.cc,
        d.files,
        normalize(&body[..cut])
    );
    Doc { all, ..d }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_folds_and_accents_stay() {
        assert_eq!(normalize("Grüße aus KÖLN!"), "grüsse aus köln ");
        assert_eq!(normalize("GRÜSSE"), normalize("grüße"));
        assert_eq!(normalize("ann@example.com"), "ann example com");
    }

    #[test]
    fn unspaced_scripts_become_bigrams() {
        assert_eq!(normalize("東京都へ"), " 東京 京都 都へ ");
        assert_eq!(normalize("in 東 ok"), "in  東  ok");
        assert_eq!(
            words(&normalize("請求書 invoice")),
            ["請求", "求書", "invoice"]
        );
    }

    #[test]
    fn addresses_are_whole_and_split() {
        let a = addresses(r#"[{"name":"Ann Lee","address":"ann@example.com"}]"#);
        assert_eq!(a, "Ann Lee ann@example.com ");
        assert_eq!(addresses("not json"), "");
    }
}
