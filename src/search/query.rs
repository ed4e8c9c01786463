//! The search box's language, parsed once into a [`Query`] (pure). Gmail's operators:
//! free words and `"phrases"`, `from:`, `to:`, `cc:`, `subject:`, `filename:`,
//! `has:attachment`, `is:unread|read|starred|unstarred`, `in:<mailbox>`, `before:`/`after:`
//! (dates), `larger:`/`smaller:` (sizes), `-` to negate, `OR` (or `|`), parentheses (or
//! braces). Terms side by side must all match.
//!
//! Values never reach SQL as text: the translation ([`crate::store`]'s search) binds each one.
//! Anything not understood is an error naming it, never a silent match-all.

use chrono::NaiveDate;

/// Longest query accepted, in bytes.
pub const MAX_QUERY: usize = 2048;
/// Most terms (operators and words) in one query.
pub const MAX_TERMS: usize = 64;
/// Deepest nesting of parentheses.
const MAX_DEPTH: usize = 8;

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// All must match.
    And(Vec<Query>),
    /// One must match.
    Or(Vec<Query>),
    /// Must not match.
    Not(Box<Query>),
    /// One condition.
    Term(Term),
}

/// Where a text term is looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// Subject, addresses, body and attachment names.
    All,
    /// `subject:`
    Subject,
    /// `from:` names and addresses.
    From,
    /// `to:` names and addresses.
    To,
    /// `cc:` names and addresses.
    Cc,
    /// `filename:` attachment names (and so their extensions).
    Filename,
}

/// A flag condition of `is:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Is {
    /// No `\Seen`.
    Unread,
    /// `\Seen`.
    Read,
    /// `\Flagged`.
    Starred,
    /// No `\Flagged`.
    Unstarred,
}

/// One condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    /// Words (normalized, [`super::text::normalize`]) that must appear together, in order, in
    /// `field`. A bare word is a phrase of one word.
    Text {
        /// Where.
        field: Field,
        /// The normalized words, at least one.
        words: Vec<String>,
    },
    /// `has:attachment`.
    HasAttachment,
    /// `is:…`.
    Is(Is),
    /// `in:Mailbox`, as configured.
    In(String),
    /// `after:` (inclusive) as Unix ms at 00:00 UTC of that day.
    After(i64),
    /// `before:` (exclusive) as Unix ms at 00:00 UTC of that day.
    Before(i64),
    /// `larger:` in bytes (size strictly above).
    Larger(i64),
    /// `smaller:` in bytes (size strictly below).
    Smaller(i64),
}

/// Why a query was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Empty, or only white space.
    #[error("the query is empty")]
    Empty,
    /// Longer than [`MAX_QUERY`].
    #[error("the query is longer than {MAX_QUERY} bytes")]
    TooLong,
    /// More than [`MAX_TERMS`] terms.
    #[error("the query has more than {MAX_TERMS} terms")]
    TooManyTerms,
    /// Parentheses nested deeper than allowed, or unbalanced.
    #[error("{0}")]
    Parens(&'static str),
    /// A quote with no closing quote.
    #[error("a \" is not closed")]
    Unclosed,
    /// `key:` that is not an operator.
    #[error("unknown operator {0:?} (quote the word to search for it: \"{0}:…\")")]
    UnknownOperator(String),
    /// A known operator with a value it does not take.
    #[error("{op}: cannot take {value:?}: {why}")]
    BadValue {
        /// The operator.
        op: String,
        /// Its value.
        value: String,
        /// What it takes.
        why: &'static str,
    },
    /// An operator or `-` with nothing after it, or `OR` with nothing on one side.
    #[error("{0} needs something after it")]
    Dangling(&'static str),
    /// Only negations: Gmail needs something to match first.
    #[error("a query of only negated terms would match everything; add a term to match")]
    OnlyNegations,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Open,
    Close,
    Or,
    Minus,
    /// A word or `key:value` (value possibly quoted).
    Word(String),
    /// A quoted phrase.
    Phrase(String),
    /// `key:` followed by a quoted phrase.
    KeyPhrase(String, String),
}

fn tokenize(q: &str) -> Result<Vec<Token>, ParseError> {
    let mut out = Vec::new();
    let mut chars = q.chars().peekable();
    // `-` negates only at the start of a term (after white space, `(` or the start).
    let mut term_start = true;
    // Each round consumes at least one character: bounded by the length.
    while let Some(&c) = chars.peek() {
        let at_start = std::mem::replace(&mut term_start, false);
        match c {
            c if c.is_whitespace() => {
                chars.next();
                term_start = true;
            }
            '(' | '{' => {
                chars.next();
                out.push(Token::Open);
                term_start = true;
            }
            ')' | '}' => {
                chars.next();
                out.push(Token::Close);
            }
            '|' => {
                chars.next();
                out.push(Token::Or);
                term_start = true;
            }
            '-' if at_start => {
                chars.next();
                out.push(Token::Minus);
                term_start = true;
            }
            '"' => {
                chars.next();
                out.push(Token::Phrase(quoted(&mut chars)?));
            }
            _ => {
                let mut w = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || "(){}\"|".contains(c) {
                        break;
                    }
                    w.push(c);
                    chars.next();
                }
                if w.ends_with(':') && chars.peek() == Some(&'"') {
                    chars.next();
                    let value = quoted(&mut chars)?;
                    w.pop();
                    out.push(Token::KeyPhrase(w, value));
                } else if w == "OR" {
                    out.push(Token::Or);
                } else {
                    out.push(Token::Word(w));
                }
            }
        }
    }
    // Gmail reads `{a b}` as `a OR b`; here braces group like parentheses, and OR is written.
    Ok(out)
}

fn quoted(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<String, ParseError> {
    let mut s = String::new();
    for c in chars.by_ref() {
        if c == '"' {
            return Ok(s);
        }
        s.push(c);
    }
    Err(ParseError::Unclosed)
}

/// Parses the search box's text.
pub fn parse(q: &str) -> Result<Query, ParseError> {
    if q.len() > MAX_QUERY {
        return Err(ParseError::TooLong);
    }
    let tokens = tokenize(q)?;
    if tokens
        .iter()
        .filter(|t| !matches!(t, Token::Open | Token::Close | Token::Or | Token::Minus))
        .count()
        > MAX_TERMS
    {
        return Err(ParseError::TooManyTerms);
    }
    let mut p = Parser { tokens, pos: 0 };
    let query = p.and(0)?;
    if p.pos < p.tokens.len() {
        return Err(ParseError::Parens("a ) has no matching ("));
    }
    match &query {
        Query::And(v) if v.is_empty() => return Err(ParseError::Empty),
        _ => {}
    }
    if !has_positive(&query) {
        return Err(ParseError::OnlyNegations);
    }
    Ok(query)
}

/// Whether something in `q` must match (not only negations).
fn has_positive(q: &Query) -> bool {
    match q {
        Query::And(v) => v.iter().any(has_positive),
        Query::Or(v) => v.iter().all(has_positive),
        Query::Not(_) => false,
        Query::Term(_) => true,
    }
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    /// Terms side by side, up to `)` or the end.
    fn and(&mut self, depth: usize) -> Result<Query, ParseError> {
        let mut all = Vec::new();
        while let Some(t) = self.peek() {
            if *t == Token::Close {
                break;
            }
            all.push(self.or(depth)?);
        }
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            Query::And(all)
        })
    }

    fn or(&mut self, depth: usize) -> Result<Query, ParseError> {
        if self.peek() == Some(&Token::Or) {
            return Err(ParseError::Dangling("OR"));
        }
        let mut any = vec![self.unary(depth)?];
        while self.peek() == Some(&Token::Or) {
            self.pos += 1;
            match self.peek() {
                None | Some(Token::Close) | Some(Token::Or) => {
                    return Err(ParseError::Dangling("OR"))
                }
                _ => any.push(self.unary(depth)?),
            }
        }
        Ok(if any.len() == 1 {
            any.remove(0)
        } else {
            Query::Or(any)
        })
    }

    fn unary(&mut self, depth: usize) -> Result<Query, ParseError> {
        if self.peek() == Some(&Token::Minus) {
            self.pos += 1;
            return match self.peek() {
                None | Some(Token::Close) | Some(Token::Or) | Some(Token::Minus) => {
                    Err(ParseError::Dangling("-"))
                }
                _ => Ok(Query::Not(Box::new(self.atom(depth)?))),
            };
        }
        self.atom(depth)
    }

    fn atom(&mut self, depth: usize) -> Result<Query, ParseError> {
        let Some(t) = self.tokens.get(self.pos).cloned() else {
            return Err(ParseError::Dangling("the query"));
        };
        self.pos += 1;
        match t {
            Token::Open => {
                if depth >= MAX_DEPTH {
                    return Err(ParseError::Parens("parentheses are nested too deep"));
                }
                let inner = self.and(depth + 1)?;
                if self.peek() != Some(&Token::Close) {
                    return Err(ParseError::Parens("a ( is not closed"));
                }
                self.pos += 1;
                if matches!(&inner, Query::And(v) if v.is_empty()) {
                    return Err(ParseError::Parens("() holds nothing"));
                }
                Ok(inner)
            }
            Token::Close => Err(ParseError::Parens("a ) has no matching (")),
            Token::Or => Err(ParseError::Dangling("OR")),
            Token::Minus => Err(ParseError::Dangling("-")),
            Token::Phrase(p) => text(Field::All, &p, "\"…\""),
            Token::KeyPhrase(k, v) => operator(&k, &v, true),
            Token::Word(w) => match w.split_once(':') {
                Some((k, v)) if !k.is_empty() => operator(k, v, false),
                _ => text(Field::All, &w, "word"),
            },
        }
    }
}

/// A text term; one that normalizes to nothing (only punctuation) is an error.
fn text(field: Field, value: &str, op: &str) -> Result<Query, ParseError> {
    let n = super::text::normalize(value);
    let words: Vec<String> = super::text::words(&n)
        .into_iter()
        .map(str::to_string)
        .collect();
    if words.is_empty() {
        return Err(ParseError::BadValue {
            op: op.to_string(),
            value: value.to_string(),
            why: "it holds no letter or digit to search for",
        });
    }
    Ok(Query::Term(Term::Text { field, words }))
}

fn operator(key: &str, value: &str, quoted: bool) -> Result<Query, ParseError> {
    let k = key.to_ascii_lowercase();
    if value.is_empty() {
        return Err(ParseError::Dangling(match k.as_str() {
            "from" => "from:",
            "to" => "to:",
            "cc" => "cc:",
            "subject" => "subject:",
            "filename" => "filename:",
            "in" => "in:",
            _ => "an operator",
        }));
    }
    let bad = |why| ParseError::BadValue {
        op: format!("{k}:"),
        value: value.to_string(),
        why,
    };
    let term = match k.as_str() {
        "from" => return text(Field::From, value, "from:"),
        "to" => return text(Field::To, value, "to:"),
        "cc" => return text(Field::Cc, value, "cc:"),
        "subject" => return text(Field::Subject, value, "subject:"),
        "filename" => return text(Field::Filename, value, "filename:"),
        "has" if value.eq_ignore_ascii_case("attachment") => Term::HasAttachment,
        "has" => return Err(bad("only has:attachment is supported")),
        "is" => Term::Is(match value.to_ascii_lowercase().as_str() {
            "unread" => Is::Unread,
            "read" => Is::Read,
            "starred" => Is::Starred,
            "unstarred" => Is::Unstarred,
            _ => return Err(bad("is: takes unread, read, starred or unstarred")),
        }),
        "in" => Term::In(value.to_string()),
        "after" | "newer" => {
            Term::After(day(value).ok_or_else(|| bad("a date such as 2025/10/03"))?)
        }
        "before" | "older" => {
            Term::Before(day(value).ok_or_else(|| bad("a date such as 2025/10/03"))?)
        }
        "larger" => Term::Larger(size(value).ok_or_else(|| bad("a size such as 20K or 1M"))?),
        "smaller" => Term::Smaller(size(value).ok_or_else(|| bad("a size such as 20K or 1M"))?),
        _ if quoted => return Err(ParseError::UnknownOperator(key.to_string())),
        _ => return Err(ParseError::UnknownOperator(key.to_string())),
    };
    Ok(Query::Term(term))
}

/// `2025/10/03`, `2025-10-03` or `2025/10/3`: 00:00 UTC of that day, in Unix ms.
fn day(v: &str) -> Option<i64> {
    let v = v.replace('-', "/");
    let d = NaiveDate::parse_from_str(&v, "%Y/%m/%d").ok()?;
    Some(d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis())
}

/// `20K`, `1M`, `2G` (powers of 1024), `5000` (bytes).
fn size(v: &str) -> Option<i64> {
    let v = v.trim();
    let (num, unit) = match v.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => v.split_at(i),
        None => (v, ""),
    };
    let n: i64 = num.parse().ok()?;
    let mult: i64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" => 1 << 10,
        "M" | "MB" => 1 << 20,
        "G" | "GB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(field: Field, w: &[&str]) -> Query {
        Query::Term(Term::Text {
            field,
            words: w.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn words_phrases_and_operators() {
        assert_eq!(parse("Invoice").unwrap(), words(Field::All, &["invoice"]));
        assert_eq!(
            parse("\"Quarterly Report\" from:ann@example.com").unwrap(),
            Query::And(vec![
                words(Field::All, &["quarterly", "report"]),
                words(Field::From, &["ann", "example", "com"]),
            ])
        );
        assert_eq!(
            parse("subject:\"a b\"").unwrap(),
            words(Field::Subject, &["a", "b"])
        );
        assert_eq!(
            parse("has:attachment").unwrap(),
            Query::Term(Term::HasAttachment)
        );
        assert_eq!(
            parse("IS:Unread").unwrap(),
            Query::Term(Term::Is(Is::Unread))
        );
        assert_eq!(
            parse("in:Archive").unwrap(),
            Query::Term(Term::In("Archive".into()))
        );
        assert_eq!(
            parse("larger:20K").unwrap(),
            Query::Term(Term::Larger(20 * 1024))
        );
        assert_eq!(
            parse("smaller:1M").unwrap(),
            Query::Term(Term::Smaller(1 << 20))
        );
        assert_eq!(
            parse("after:2025/10/03").unwrap(),
            Query::Term(Term::After(1_759_449_600_000))
        );
        assert_eq!(
            parse("before:2025-10-03").unwrap(),
            Query::Term(Term::Before(1_759_449_600_000))
        );
    }

    #[test]
    fn negation_or_and_groups() {
        assert_eq!(
            parse("a -b").unwrap(),
            Query::And(vec![
                words(Field::All, &["a"]),
                Query::Not(Box::new(words(Field::All, &["b"])))
            ])
        );
        assert_eq!(
            parse("a OR b c").unwrap(),
            Query::And(vec![
                Query::Or(vec![words(Field::All, &["a"]), words(Field::All, &["b"])]),
                words(Field::All, &["c"])
            ])
        );
        assert_eq!(
            parse("(a | b) -(c OR d)").unwrap(),
            Query::And(vec![
                Query::Or(vec![words(Field::All, &["a"]), words(Field::All, &["b"])]),
                Query::Not(Box::new(Query::Or(vec![
                    words(Field::All, &["c"]),
                    words(Field::All, &["d"])
                ])))
            ])
        );
        // A hyphen inside a word is part of it.
        assert_eq!(parse("e-mail").unwrap(), words(Field::All, &["e", "mail"]));
        // Lower-case "or" is a word, as in Gmail.
        assert_eq!(
            parse("this or that").unwrap(),
            Query::And(vec![
                words(Field::All, &["this"]),
                words(Field::All, &["or"]),
                words(Field::All, &["that"])
            ])
        );
    }

    #[test]
    fn bad_queries_are_errors_never_match_all() {
        for (q, want) in [
            ("", ParseError::Empty),
            ("   ", ParseError::Empty),
            ("label:work", ParseError::UnknownOperator("label".into())),
            ("\"open", ParseError::Unclosed),
            ("(a", ParseError::Parens("a ( is not closed")),
            ("a)", ParseError::Parens("a ) has no matching (")),
            ("a OR", ParseError::Dangling("OR")),
            ("OR a", ParseError::Dangling("OR")),
            ("-", ParseError::Dangling("-")),
            ("-spam", ParseError::OnlyNegations),
            ("from:", ParseError::Dangling("from:")),
        ] {
            assert_eq!(parse(q), Err(want), "{q:?}");
        }
        for q in [
            "is:important",
            "has:drive",
            "after:yesterday",
            "larger:lots",
            "'",
            "%",
            ";",
            "\\",
        ] {
            assert!(parse(q).is_err(), "{q:?}");
        }
        assert_eq!(parse(&"a ".repeat(65)), Err(ParseError::TooManyTerms));
        assert_eq!(parse(&"x".repeat(MAX_QUERY + 1)), Err(ParseError::TooLong));
        assert_eq!(
            parse(&format!("{}a{}", "(".repeat(9), ")".repeat(9))),
            Err(ParseError::Parens("parentheses are nested too deep"))
        );
    }

    #[test]
    fn unicode_is_normalized_like_the_index() {
        assert_eq!(parse("GRÜSSE").unwrap(), words(Field::All, &["grüsse"]));
        assert_eq!(parse("grüße").unwrap(), words(Field::All, &["grüsse"]));
        assert_eq!(
            parse("請求書").unwrap(),
            words(Field::All, &["請求", "求書"])
        );
        assert_eq!(parse("Счёт").unwrap(), words(Field::All, &["счёт"]));
    }
}
