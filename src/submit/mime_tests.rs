use super::*;
use mail_parser::{MessageParser, MimeHeaders};

fn mb(address: &str) -> Mailbox {
    Mailbox {
        name: None,
        address: address.to_string(),
    }
}

fn draft() -> Draft {
    Draft {
        from: Mailbox {
            name: Some("Ana Núñez".into()),
            address: "ana@a.test".into(),
        },
        to: vec![mb("bob@b.test")],
        cc: vec![mb("cy@c.test")],
        bcc: vec![mb("hidden@d.test")],
        reply_to: None,
        subject: "Quarterly numbers".into(),
        text: Some("Hello Bob".into()),
        html: None,
        attachments: vec![],
        headers: vec![],
        in_reply_to: None,
    }
}

fn parse(b: &Built) -> mail_parser::Message<'_> {
    MessageParser::default().parse(&b.bytes).expect("parses")
}

#[test]
fn plain_message_headers_and_envelope() {
    let b = build(&draft(), "s1.x@idlesync.test", 1_700_000_000).expect("builds");
    let m = parse(&b);
    assert_eq!(m.message_id(), Some("s1.x@idlesync.test"));
    assert_eq!(m.subject(), Some("Quarterly numbers"));
    let from = m.from().and_then(|a| a.first()).expect("from");
    assert_eq!(from.name(), Some("Ana Núñez"));
    assert_eq!(from.address(), Some("ana@a.test"));
    assert_eq!(m.body_text(0).as_deref(), Some("Hello Bob"));
    assert_eq!(
        b.recipients,
        vec!["bob@b.test", "cy@c.test", "hidden@d.test"]
    );
    assert_eq!(b.envelope_from, "ana@a.test");
    // Bcc is in the envelope only, never in the bytes.
    let text = String::from_utf8_lossy(&b.bytes);
    assert!(!text.to_ascii_lowercase().contains("bcc"), "{text}");
    assert!(!text.contains("hidden@d.test"));
    // Non-ASCII header text is RFC 2047-encoded: the bytes are ASCII.
    let head_end = text.find("\r\n\r\n").expect("header end");
    assert!(text[..head_end].is_ascii(), "{}", &text[..head_end]);
}

#[test]
fn reply_threading_headers_from_the_stored_message() {
    let mut d = draft();
    let refs: Vec<String> = (0..25).map(|i| format!("r{i}@x")).collect();
    d.in_reply_to = Some(Parent {
        message_id: Some("parent@x".into()),
        references: refs,
    });
    let b = build(&d, "reply@idlesync.test", 0).expect("builds");
    let m = parse(&b);
    assert_eq!(m.subject(), Some("Re: Quarterly numbers"));
    assert_eq!(m.in_reply_to().as_text(), Some("parent@x"));
    let got: Vec<&str> = m
        .references()
        .as_text_list()
        .expect("references")
        .iter()
        .map(|s| s.as_ref())
        .collect();
    assert_eq!(got.len(), MAX_REFERENCES);
    assert_eq!(got.last(), Some(&"parent@x"));
    assert_eq!(got.first(), Some(&"r6@x"), "the oldest are dropped");

    // "Re:" is not doubled, whatever its case.
    d.subject = "RE: Quarterly numbers".into();
    let b = build(&d, "reply2@idlesync.test", 0).expect("builds");
    assert_eq!(parse(&b).subject(), Some("RE: Quarterly numbers"));
}

#[test]
fn text_html_inline_image_and_attachment_structure() {
    let mut d = draft();
    d.html = Some("<p>Hi <img src=\"cid:logo1\"></p>".into());
    d.attachments = vec![
        Attachment {
            filename: "logo.png".into(),
            content_type: "image/png".into(),
            content: vec![0x89, b'P', b'N', b'G', 0, 1, 2],
            content_id: Some("logo1".into()),
        },
        Attachment {
            filename: "Größe Übersicht.pdf".into(),
            content_type: "application/pdf".into(),
            content: b"%PDF-1.4 \x00\xff".to_vec(),
            content_id: None,
        },
    ];
    let b = build(&d, "mixed@idlesync.test", 0).expect("builds");
    let text = String::from_utf8_lossy(&b.bytes);
    assert!(text.contains("multipart/mixed"));
    assert!(text.contains("multipart/alternative"));
    assert!(text.contains("multipart/related"));
    assert!(
        text.contains("filename*=utf-8''Gr%C3%B6%C3%9Fe%20%C3%9Cbersicht.pdf"),
        "RFC 2231 name: {text}"
    );
    let m = parse(&b);
    assert_eq!(m.body_text(0).as_deref(), Some("Hello Bob"));
    assert!(m.body_html(0).is_some_and(|h| h.contains("cid:logo1")));
    let pdf = m
        .attachments()
        .find(|a| a.content_type().is_some_and(|c| c.ctype() == "application"))
        .expect("pdf attachment");
    assert_eq!(pdf.attachment_name(), Some("Größe Übersicht.pdf"));
    assert_eq!(pdf.contents(), b"%PDF-1.4 \x00\xff");
    let logo = m
        .parts
        .iter()
        .find(|p| p.content_id() == Some("logo1"))
        .expect("inline image by contentId");
    assert_eq!(logo.contents(), &[0x89, b'P', b'N', b'G', 0, 1, 2]);
}

#[test]
fn line_breaks_in_any_header_are_refused() {
    type Change = Box<dyn Fn(&mut Draft)>;
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|d| d.subject = "Hi\r\nBcc: victim@x.test".into()),
            "subject",
        ),
        (Box::new(|d| d.subject = "Hi\nX: y".into()), "subject"),
        (
            Box::new(|d| d.to[0].name = Some("Bob\r\nBcc: v@x.test".into())),
            "to[0].name",
        ),
        (
            Box::new(|d| d.cc[0].address = "cy@c.test\r\n".into()),
            "cc[0].address",
        ),
        (
            Box::new(|d| d.headers = vec![("X-Tag".into(), "a\r\nBcc: v@x.test".into())]),
            "headers.X-Tag",
        ),
        (
            Box::new(|d| {
                d.attachments = vec![Attachment {
                    filename: "a\r\n.txt".into(),
                    content_type: "text/plain".into(),
                    content: vec![],
                    content_id: None,
                }]
            }),
            "attachments[0].filename",
        ),
    ];
    for (change, field) in cases {
        let mut d = draft();
        change(&mut d);
        let err = build(&d, "x@y", 0).expect_err(field);
        assert_eq!(
            err,
            MimeError::HeaderInjection {
                field: field.into()
            }
        );
    }
}

#[test]
fn addresses_headers_types_and_counts_are_checked() {
    let mut d = draft();
    d.to = vec![mb("not an address")];
    assert!(
        matches!(build(&d, "x@y", 0), Err(MimeError::BadAddress { field }) if field == "to[0].address")
    );
    let mut d = draft();
    d.from = mb("<ana@a.test>");
    assert!(matches!(
        build(&d, "x@y", 0),
        Err(MimeError::BadAddress { .. })
    ));
    let mut d = draft();
    d.headers = vec![("Bcc".into(), "v@x.test".into())];
    assert!(matches!(
        build(&d, "x@y", 0),
        Err(MimeError::ReservedHeader { .. })
    ));
    d.headers = vec![("Content-Type".into(), "text/html".into())];
    assert!(matches!(
        build(&d, "x@y", 0),
        Err(MimeError::ReservedHeader { .. })
    ));
    d.headers = vec![("Bad Name".into(), "v".into())];
    assert!(matches!(
        build(&d, "x@y", 0),
        Err(MimeError::BadHeaderName { .. })
    ));
    let mut d = draft();
    d.attachments = vec![Attachment {
        filename: "a".into(),
        content_type: "text".into(),
        content: vec![],
        content_id: None,
    }];
    assert!(matches!(
        build(&d, "x@y", 0),
        Err(MimeError::BadContentType { .. })
    ));

    let mut d = draft();
    d.to = (0..98).map(|i| mb(&format!("u{i}@b.test"))).collect();
    assert!(build(&d, "x@y", 0).is_ok(), "100 recipients are allowed");
    d.to.push(mb("one-more@b.test"));
    assert_eq!(
        build(&d, "x@y", 0).err(),
        Some(MimeError::TooManyRecipients { count: 101 })
    );
    let mut d = draft();
    d.to.clear();
    d.cc.clear();
    d.bcc.clear();
    assert_eq!(build(&d, "x@y", 0).err(), Some(MimeError::NoRecipients));
}

#[test]
fn extra_headers_are_written_and_duplicates_sent_once() {
    let mut d = draft();
    d.headers = vec![("X-Campaign".into(), "spring".into())];
    d.cc = vec![mb("BOB@b.test")];
    let b = build(&d, "x@y", 0).expect("builds");
    assert_eq!(b.recipients, vec!["bob@b.test", "hidden@d.test"]);
    let m = parse(&b);
    assert_eq!(
        m.header("X-Campaign").and_then(|h| h.as_text()),
        Some("spring")
    );
}

#[test]
fn an_overlong_attachment_name_is_refused() {
    let mut d = draft();
    d.attachments = vec![Attachment {
        filename: "é".repeat(200),
        content_type: "text/plain".into(),
        content: vec![],
        content_id: None,
    }];
    assert!(
        matches!(build(&d, "x@y", 0), Err(MimeError::TooLong { field }) if field == "attachments[0].filename")
    );
}
