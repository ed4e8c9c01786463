use super::*;

fn meta(uid: u32) -> ImapMeta {
    ImapMeta {
        uid,
        flags: "\\Seen".into(),
        internal_date_ms: Some(1_700_000_000_000),
        size: None,
        ..ImapMeta::default()
    }
}

fn ex(raw: &[u8]) -> MessageRecord {
    extract(raw, &meta(1), &ExtractOptions::default())
}

#[test]
fn plain_message() {
    let raw = b"From: Joe <joe@example.com>\r\nTo: a@x.org, \"B\" <b@x.org>\r\nSubject: =?utf-8?q?Caf=C3=A9?=\r\nMessage-ID: <m1@x>\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000\r\n\r\nHello\r\n";
    let r = extract(raw, &meta(5), &ExtractOptions::default());
    assert_eq!(r.uid, 5);
    assert_eq!(r.subject.as_deref(), Some("Café"));
    assert_eq!(r.message_id.as_deref(), Some("m1@x"));
    assert_eq!(r.from, r#"[{"name":"Joe","address":"joe@example.com"}]"#);
    assert_eq!(
        r.to,
        r#"[{"name":null,"address":"a@x.org"},{"name":"B","address":"b@x.org"}]"#
    );
    assert_eq!(r.cc, "[]");
    assert_eq!(r.sent_at_ms, Some(1_700_000_000_000));
    assert_eq!(r.text_body.as_deref(), Some("Hello\r\n"));
    assert_eq!(r.snippet, "Hello");
    assert_eq!(r.html_body, None);
    assert_eq!(r.size, raw.len() as i64);
    assert_eq!(r.raw.as_deref(), Some(&raw[..]));
    assert!(r.is_seen());
    assert!(!r.parse_error && !r.truncated && !r.has_attachments);
}

#[test]
fn html_only_gets_text() {
    let r = ex(b"Content-Type: text/html\r\n\r\n<p>Hi <b>there</b></p>");
    assert!(r.html_body.unwrap().contains("<b>there</b>"));
    assert!(r.text_body.unwrap().contains("Hi there"));
    assert_eq!(r.snippet, "Hi there");
}

#[test]
fn nul_bytes_are_removed() {
    let r = ex(b"Subject: a\0b\r\n\r\nbo\0dy");
    assert_eq!(r.subject.as_deref(), Some("ab"));
    assert_eq!(r.text_body.as_deref(), Some("body"));
}

#[test]
fn garbage_never_panics() {
    for raw in [&b""[..], b"\xff\xfe\x00", b"\r\n\r\n", b":::\r\n"] {
        let r = ex(raw);
        assert_eq!(r.uid, 1);
    }
}

#[test]
fn headerless_bytes_are_a_parse_error_with_readable_text() {
    let r = ex(b"\r\njust some words, no headers at all");
    assert!(r.parse_error);
    assert!(r.text_body.unwrap().contains("just some words"));
    assert_eq!(r.snippet, "just some words, no headers at all");
    assert!(r.raw.is_some());
}

#[test]
fn threading_headers() {
    let r = ex(b"Message-ID: <c@x>\r\nIn-Reply-To: <b@x>\r\nReferences: <a@x>\r\n <b@x>\r\nSubject: Re: Fwd: Plan\r\n\r\nx");
    assert_eq!(r.in_reply_to.as_deref(), Some("b@x"));
    assert_eq!(r.references, vec!["a@x", "b@x"]);
    assert_eq!(r.subject_key, "plan");
    assert_eq!(
        r.thread_keys().collect::<Vec<_>>(),
        ["c@x", "b@x", "a@x", "b@x"]
    );
}

#[test]
fn attachments_and_limits() {
    let raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nbody\r\n\
--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename*=utf-8''..%2Fr%C3%A9sum%C3%A9.pdf\r\n\r\n0123456789\r\n\
--b\r\nContent-Type: image/png\r\nContent-ID: <img1@x>\r\nContent-Disposition: inline\r\n\r\nPNG\r\n--b--\r\n";
    let opts = ExtractOptions {
        attachment_max_bytes: 5,
        ..ExtractOptions::default()
    };
    let r = extract(raw, &meta(1), &opts);
    assert_eq!(r.attachments.len(), 2, "{:?}", r.attachments);
    let a = &r.attachments[0];
    assert_eq!(a.filename.as_deref(), Some("_résumé.pdf"));
    assert_eq!(a.size, 10);
    assert_eq!(a.content, None, "over the limit: not stored");
    assert!(!a.inline);
    let b = &r.attachments[1];
    assert_eq!(b.content_id.as_deref(), Some("img1@x"));
    assert!(b.inline);
    assert_eq!(b.content.as_deref(), Some(&b"PNG"[..]));
    assert!(r.has_attachments);
}

#[test]
fn oversized_message_keeps_headers_only() {
    let mut raw = b"Subject: big\r\nMessage-ID: <big@x>\r\n\r\n".to_vec();
    raw.extend(std::iter::repeat_n(b'a', 2000));
    let opts = ExtractOptions {
        max_message_size: 1024,
        ..ExtractOptions::default()
    };
    let m = ImapMeta {
        size: Some(1_000_000),
        ..meta(1)
    };
    let r = extract(&raw[..1024], &m, &opts);
    assert!(r.truncated);
    assert_eq!(r.subject.as_deref(), Some("big"));
    assert_eq!(r.text_body, None);
    assert_eq!(r.raw, None);
    assert_eq!(r.size, 1_000_000);
}

#[test]
fn raw_retention_limits() {
    let raw = b"Subject: s\r\n\r\nbody";
    let none = ExtractOptions {
        keep_raw: false,
        ..ExtractOptions::default()
    };
    assert_eq!(extract(raw, &meta(1), &none).raw, None);
    let small = ExtractOptions {
        raw_max_bytes: 4,
        ..ExtractOptions::default()
    };
    assert_eq!(extract(raw, &meta(1), &small).raw, None);
}

#[test]
fn deep_nesting_and_many_parts_do_not_blow_up() {
    let mut raw = Vec::new();
    for i in 0..300 {
        raw.extend(format!("Subject: level {i}\r\nContent-Type: message/rfc822\r\n\r\n").bytes());
    }
    raw.extend(b"Subject: core\r\n\r\ncore body");
    let r = ex(&raw);
    assert_eq!(r.subject.as_deref(), Some("level 0"));

    let mut raw = b"Content-Type: multipart/mixed; boundary=z\r\n\r\n".to_vec();
    for i in 0..3000 {
        raw.extend(
            format!("--z\r\nContent-Type: application/x-n; name=p{i}.bin\r\n\r\n{i}\r\n").bytes(),
        );
    }
    let r = ex(&raw); // unterminated: no closing boundary
    assert_eq!(r.attachments.len(), 3000);
}

#[test]
fn broken_multipart_text_is_the_body() {
    let r = ex(b"Subject: x\r\nContent-Type: multipart/mixed\r\n\r\nno boundary at all\r\n");
    assert_eq!(r.text_body.as_deref(), Some("no boundary at all\r\n"));
    assert_eq!(r.attachments.len(), 1);
    assert!(!r.has_attachments);
}

#[test]
fn legacy_multibyte_charsets_are_decoded() {
    // "日本語" in ISO-2022-JP (encoded word) and "テスト" in Shift_JIS (body).
    let mut raw = b"Subject: =?ISO-2022-JP?B?GyRCRnxLXDhsGyhC?=\r\nContent-Type: text/plain; charset=Shift_JIS\r\n\r\n".to_vec();
    raw.extend_from_slice(b"\x83\x65\x83\x58\x83\x67\r\n");
    let r = ex(&raw);
    assert_eq!(r.subject.as_deref(), Some("日本語"));
    assert_eq!(r.text_body.as_deref().map(str::trim_end), Some("テスト"));
}
