//! The grammar of the search box, case by case.

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
