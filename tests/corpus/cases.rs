//! The corpus: at least 40 hostile, broken or merely unusual messages, each with what the
//! database must hold for it. Large ones are generated here.
//!
//! The harness config these expectations assume: `max_message_size = 200000`,
//! `attachment_max_bytes = 50000`, `raw_max_bytes = 150000`.

use anyhow::{ensure, Result};

use super::harness::Stored;

pub const STORAGE: &str =
    "max_message_size = 200000\nattachment_max_bytes = 50000\nraw_max_bytes = 150000";

/// How a case reaches the mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// IMAP APPEND.
    Append,
    /// Straight into `Maildir/new` (APPEND refuses NUL). Found by its Message-ID.
    Maildir,
}

/// One expected attachment row.
#[derive(Debug, Clone, Default)]
pub struct Att {
    pub filename: Option<&'static str>,
    pub content_type: &'static str,
    pub size: i64,
    pub content_id: Option<&'static str>,
    pub inline: bool,
    pub stored: bool,
}

/// What must be stored. `None` means "not checked" for the Option<Option<…>> and Option<…>
/// fields; the booleans, Message-ID, subject and attachment count are always checked.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    pub subject: Option<String>,
    pub message_id: Option<String>,
    pub from: Option<&'static str>,
    pub to: Option<&'static str>,
    pub cc: Option<&'static str>,
    pub bcc: Option<&'static str>,
    pub sender: Option<&'static str>,
    pub reply_to: Option<&'static str>,
    pub in_reply_to: Option<Option<&'static str>>,
    pub references: Option<&'static str>,
    pub sent_at: Option<Option<i64>>,
    /// Substrings of the text body; `Some(&[])` means the text body is NULL.
    pub text: Option<Vec<String>>,
    /// Substrings of the HTML body; `Some(&[])` means NULL.
    pub html: Option<Vec<&'static str>>,
    pub snippet: Option<String>,
    pub parse_error: bool,
    pub truncated: bool,
    pub has_attachments: bool,
    /// The raw bytes are kept (and equal what was delivered, line ends as CRLF).
    pub raw_kept: bool,
    /// Compare raw byte for byte (off where Dovecot rewrites bytes, e.g. NUL).
    pub raw_exact: bool,
    /// Expected attachments; `attachment_count` is checked even when this is empty.
    pub attachments: Vec<Att>,
    pub attachment_count: usize,
}

/// A corpus entry.
pub struct Case {
    pub name: &'static str,
    pub raw: Vec<u8>,
    pub delivery: Delivery,
    pub expect: Expect,
}

const DATE: &str = "Tue, 14 Nov 2023 22:13:20 +0000";
const DATE_MS: i64 = 1_700_000_000_000;

/// Usual headers for case `n`: From, To, Subject, Message-ID, Date, MIME-Version.
fn head(n: &str, extra: &str) -> String {
    format!(
        "From: Corpus <corpus@example.test>\r\nTo: rcpt@example.test\r\nSubject: case {n}\r\n\
         Message-ID: <{n}@corpus.test>\r\nDate: {DATE}\r\nMIME-Version: 1.0\r\n{extra}"
    )
}

fn base(n: &str) -> Expect {
    Expect {
        subject: Some(format!("case {n}")),
        message_id: Some(format!("{n}@corpus.test")),
        from: Some(r#"[{"name":"Corpus","address":"corpus@example.test"}]"#),
        to: Some(r#"[{"name":null,"address":"rcpt@example.test"}]"#),
        sent_at: Some(Some(DATE_MS)),
        raw_kept: true,
        raw_exact: true,
        ..Expect::default()
    }
}

fn text(parts: &[&str]) -> Option<Vec<String>> {
    Some(parts.iter().map(|s| s.to_string()).collect())
}

fn case(name: &'static str, raw: impl Into<Vec<u8>>, expect: Expect) -> Case {
    Case {
        name,
        raw: raw.into(),
        delivery: Delivery::Append,
        expect,
    }
}

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for (i, c) in data.chunks(3).enumerate() {
        if i > 0 && i % 19 == 0 {
            out.push_str("\r\n");
        }
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= c.len() {
                out.push(T[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// multipart/mixed with a short text part followed by `parts` (each a full MIME part).
fn mixed(n: &str, parts: &[String]) -> String {
    let mut s = head(n, "Content-Type: multipart/mixed; boundary=\"BB\"\r\n\r\n");
    s.push_str("--BB\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nsee attached\r\n");
    for p in parts {
        s.push_str("--BB\r\n");
        s.push_str(p);
        s.push_str("\r\n");
    }
    s.push_str("--BB--\r\n");
    s
}

pub fn all() -> Vec<Case> {
    let mut v = Vec::new();

    v.push(case(
        "plain",
        format!("{}\r\nHello, plain world.\r\n", head("plain", "")),
        Expect {
            text: text(&["Hello, plain world."]),
            html: Some(vec![]),
            snippet: Some("Hello, plain world.".into()),
            ..base("plain")
        },
    ));

    v.push(case(
        "rfc2047-subject-and-names",
        "From: =?utf-8?b?SsO8cmdlbiBNw7xsbGVy?= <jm@example.test>\r\nTo: =?iso-8859-1?q?Ren=E9?= <rene@example.test>\r\n\
         Subject: =?utf-8?q?Caf=C3=A9_=E2=98=95?= =?utf-8?b?IOKAkyDDqXTDqQ==?=\r\nMessage-ID: <rfc2047@corpus.test>\r\n\
         Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n\r\nbody\r\n",
        Expect {
            subject: Some("Café ☕ – été".into()),
            from: Some(r#"[{"name":"Jürgen Müller","address":"jm@example.test"}]"#),
            to: Some(r#"[{"name":"René","address":"rene@example.test"}]"#),
            ..base("rfc2047")
        },
    ));

    v.push(case(
        "latin1-quoted-printable",
        format!(
            "{}Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nD=E9j=E0 vu, na=EFve =\r\nfa=E7ade.\r\n",
            head("latin1", "")
        ),
        Expect {
            text: text(&["Déjà vu, naïve façade."]),
            ..base("latin1")
        },
    ));

    let mut cp = head(
        "cp1252",
        "Content-Type: text/plain; charset=windows-1252\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
    )
    .into_bytes();
    cp.extend(b"\x93smart quotes\x94 \x96 and \x80 5\r\n");
    v.push(case(
        "windows-1252-8bit",
        cp,
        Expect {
            text: text(&["\u{201c}smart quotes\u{201d} \u{2013} and \u{20ac} 5"]),
            ..base("cp1252")
        },
    ));

    let mut unk = head(
        "unknown-charset",
        "Content-Type: text/plain; charset=x-klingon\r\n\r\n",
    )
    .into_bytes();
    unk.extend(b"qapla\xff\xfe batlh\r\n");
    v.push(case(
        "unknown-charset",
        unk,
        Expect {
            text: text(&["qapla", "batlh"]),
            ..base("unknown-charset")
        },
    ));

    let mut bad = head(
        "bad-utf8",
        "Content-Type: text/plain; charset=utf-8\r\n\r\n",
    )
    .into_bytes();
    bad.extend(b"ok \xc3\x28 broken \xe2\x82 end\r\n");
    v.push(case(
        "invalid-utf8-body",
        bad,
        Expect {
            text: text(&["ok ", "broken", "end", "\u{fffd}"]),
            ..base("bad-utf8")
        },
    ));

    let mut raw8 = b"From: Corpus <corpus@example.test>\r\nSubject: r\xe9sum\xe9 \xff raw\r\nMessage-ID: <raw8bit@corpus.test>\r\n\r\nx\r\n".to_vec();
    raw8.truncate(raw8.len());
    v.push(case(
        "raw-8bit-subject",
        raw8,
        Expect {
            subject: None,
            message_id: Some("raw8bit@corpus.test".into()),
            sent_at: Some(None),
            raw_kept: true,
            raw_exact: true,
            ..Expect::default()
        },
    ));

    let mut koi = head("koi8r", "Content-Type: text/plain; charset=koi8-r\r\n\r\n").into_bytes();
    koi.extend(b"\xf0\xd2\xc9\xd7\xc5\xd4\r\n");
    v.push(case(
        "koi8-r",
        koi,
        Expect {
            text: text(&["Привет"]),
            ..base("koi8r")
        },
    ));

    v.push(case(
        "html-only",
        format!(
            "{}Content-Type: text/html; charset=utf-8\r\n\r\n<html><head><style>p{{color:red}}</style></head><body><p>Hi <b>there</b>,</p><p>second &amp; last</p></body></html>\r\n",
            head("html-only", "")
        ),
        Expect {
            text: text(&["Hi there", "second & last"]),
            html: Some(vec!["<b>there</b>"]),
            ..base("html-only")
        },
    ));

    v.push(case(
        "alternative",
        format!(
            "{}Content-Type: multipart/alternative; boundary=alt\r\n\r\n--alt\r\nContent-Type: text/plain\r\n\r\nplain version\r\n--alt\r\nContent-Type: text/html\r\n\r\n<p>html version</p>\r\n--alt--\r\n",
            head("alternative", "")
        ),
        Expect {
            text: text(&["plain version"]),
            html: Some(vec!["<p>html version</p>"]),
            snippet: Some("plain version".into()),
            ..base("alternative")
        },
    ));

    let png_bytes = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR fake image bytes";
    let png = b64(png_bytes);
    v.push(case(
        "related-inline-image",
        format!(
            "{}Content-Type: multipart/related; boundary=rel\r\n\r\n--rel\r\nContent-Type: text/html\r\n\r\n<p>look <img src=\"cid:logo@x\"></p>\r\n--rel\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\nContent-ID: <logo@x>\r\nContent-Disposition: inline\r\n\r\n{png}\r\n--rel--\r\n",
            head("related", "")
        ),
        Expect {
            html: Some(vec!["cid:logo@x"]),
            attachments: vec![Att {
                filename: None,
                content_type: "image/png",
                size: png_bytes.len() as i64,
                content_id: Some("logo@x"),
                inline: true,
                stored: true,
            }],
            attachment_count: 1,
            ..base("related")
        },
    ));

    v.push(case(
        "rfc2231-filename",
        mixed(
            "rfc2231",
            &["Content-Type: application/pdf\r\nContent-Disposition: attachment;\r\n filename*0*=utf-8''R%C3%A9sum%C3%A9%20;\r\n filename*1=\"final.pdf\"\r\n\r\n%PDF".into()],
        ),
        Expect {
            has_attachments: true,
            attachments: vec![Att {
                filename: Some("Résumé final.pdf"),
                content_type: "application/pdf",
                size: 4,
                stored: true,
                ..Att::default()
            }],
            attachment_count: 1,
            ..base("rfc2231")
        },
    ));

    v.push(case(
        "rfc2047-filename",
        mixed(
            "rfc2047-name",
            &["Content-Type: text/csv; name=\"=?utf-8?b?0L7RgtGH0ZHRgi5jc3Y=?=\"\r\nContent-Disposition: attachment\r\n\r\na,b\r\n1,2".into()],
        ),
        Expect {
            has_attachments: true,
            attachments: vec![Att {
                filename: Some("отчёт.csv"),
                content_type: "text/csv",
                size: 8,
                stored: true,
                ..Att::default()
            }],
            attachment_count: 1,
            ..base("rfc2047-name")
        },
    ));

    v.push(case(
        "path-traversal-filename",
        mixed(
            "traversal",
            &["Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"../../etc/passwd\"\r\n\r\nroot".into(),
              "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"C:\\\\Windows\\\\evil.dll\"\r\n\r\nMZ".into()],
        ),
        Expect {
            has_attachments: true,
            attachments: vec![
                Att {
                    filename: Some("_.._etc_passwd"),
                    content_type: "application/octet-stream",
                    size: 4,
                    stored: true,
                    ..Att::default()
                },
                Att {
                    filename: Some("C:_Windows_evil.dll"),
                    content_type: "application/octet-stream",
                    size: 2,
                    stored: true,
                    ..Att::default()
                },
            ],
            attachment_count: 2,
            ..base("traversal")
        },
    ));

    v.push(case(
        "control-and-bidi-filename",
        mixed(
            "ctrl-name",
            &["Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename*=utf-8''inv%07oice%E2%80%AEfdp.exe\r\n\r\nMZ".into()],
        ),
        Expect {
            has_attachments: true,
            attachments: vec![Att {
                filename: Some("invoicefdp.exe"),
                content_type: "application/octet-stream",
                size: 2,
                stored: true,
                ..Att::default()
            }],
            attachment_count: 1,
            ..base("ctrl-name")
        },
    ));

    let big_att: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    v.push(case(
        "attachment-over-limit",
        mixed(
            "big-att",
            &[format!("Content-Type: application/zip; name=big.zip\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=big.zip\r\n\r\n{}", b64(&big_att)),
              format!("Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=nul.bin\r\n\r\n{}", b64(b"\0\0bin\0ary\0"))],
        ),
        Expect {
            has_attachments: true,
            attachments: vec![
                Att {
                    filename: Some("big.zip"),
                    content_type: "application/zip",
                    size: 60_000,
                    stored: false,
                    ..Att::default()
                },
                Att {
                    filename: Some("nul.bin"),
                    content_type: "application/octet-stream",
                    size: 10,
                    stored: true,
                    ..Att::default()
                },
            ],
            attachment_count: 2,
            ..base("big-att")
        },
    ));

    let many: Vec<String> = (0..2000)
        .map(|i| format!("Content-Type: application/x-p; name=p{i}\r\n\r\n{i}"))
        .collect();
    v.push(case(
        "two-thousand-parts",
        mixed("many-parts", &many),
        Expect {
            has_attachments: true,
            attachment_count: 2000,
            raw_kept: true,
            ..base("many-parts")
        },
    ));

    let mut deep = head("deep", "");
    for i in 0..200 {
        deep.push_str(&format!(
            "Content-Type: message/rfc822\r\n\r\nSubject: level {i}\r\nMessage-ID: <level{i}@deep>\r\n"
        ));
    }
    deep.push_str("\r\ninnermost body\r\n");
    v.push(case(
        "deep-rfc822-nesting",
        deep,
        Expect {
            has_attachments: true,
            attachment_count: 1,
            ..base("deep")
        },
    ));

    v.push(case(
        "forwarded-message",
        mixed(
            "forward",
            &["Content-Type: message/rfc822\r\nContent-Disposition: attachment; filename=orig.eml\r\n\r\nFrom: a@b.c\r\nSubject: original\r\n\r\noriginal body".into()],
        ),
        Expect {
            has_attachments: true,
            attachments: vec![Att {
                filename: Some("orig.eml"),
                content_type: "message/rfc822",
                size: 47,
                stored: true,
                ..Att::default()
            }],
            attachment_count: 1,
            ..base("forward")
        },
    ));

    v.push(case(
        "unterminated-boundary",
        format!(
            "{}Content-Type: multipart/mixed; boundary=open\r\n\r\n--open\r\nContent-Type: text/plain\r\n\r\nfirst part\r\n--open\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=a.txt\r\n\r\nnever closed",
            head("unterminated", "")
        ),
        Expect {
            text: text(&["first part"]),
            has_attachments: true,
            attachments: vec![Att {
                filename: Some("a.txt"),
                content_type: "text/plain",
                size: 12,
                stored: true,
                ..Att::default()
            }],
            attachment_count: 1,
            ..base("unterminated")
        },
    ));

    v.push(case(
        "multipart-without-boundary",
        format!(
            "{}Content-Type: multipart/mixed\r\n\r\nno boundary parameter at all\r\n",
            head("no-boundary", "")
        ),
        Expect {
            text: text(&["no boundary parameter at all"]),
            attachment_count: 1,
            ..base("no-boundary")
        },
    ));

    v.push(case(
        "boundary-never-appears",
        format!(
            "{}Content-Type: multipart/alternative; boundary=ghost\r\n\r\nthe preamble is all there is\r\n",
            head("ghost", "")
        ),
        Expect {
            text: text(&["the preamble is all there is"]),
            attachment_count: 1,
            ..base("ghost")
        },
    ));

    let huge_subject = "S".repeat(100_000);
    v.push(case(
        "100k-subject",
        format!(
            "From: Corpus <corpus@example.test>\r\nSubject: {huge_subject}\r\nMessage-ID: <huge-subject@corpus.test>\r\nDate: {DATE}\r\n\r\nbody\r\n"
        ),
        Expect {
            subject: Some(huge_subject.clone()),
            message_id: Some("huge-subject@corpus.test".into()),
            sent_at: Some(Some(DATE_MS)),
            raw_kept: true,
            raw_exact: true,
            ..Expect::default()
        },
    ));

    let mut many_headers = head("many-headers", "");
    for i in 0..5000 {
        many_headers.push_str(&format!("X-Junk-{i}: {i}\r\n"));
    }
    many_headers.push_str("\r\nafter five thousand headers\r\n");
    v.push(case(
        "5000-headers",
        many_headers,
        Expect {
            text: text(&["after five thousand headers"]),
            ..base("many-headers")
        },
    ));

    let long_line = "word".repeat(25_000);
    v.push(case(
        "100k-single-line",
        format!("{}\r\n{long_line}\r\n", head("long-line", "")),
        Expect {
            snippet: Some("word".repeat(50)),
            ..base("long-line")
        },
    ));

    v.push(case(
        "no-message-id",
        format!("From: a@example.test\r\nSubject: case no-mid\r\nDate: {DATE}\r\n\r\nx\r\n"),
        Expect {
            subject: Some("case no-mid".into()),
            message_id: None,
            from: Some(r#"[{"name":null,"address":"a@example.test"}]"#),
            raw_kept: true,
            raw_exact: true,
            ..Expect::default()
        },
    ));

    v.push(case(
        "no-date",
        "From: a@example.test\r\nSubject: case no-date\r\nMessage-ID: <no-date@corpus.test>\r\n\r\nx\r\n",
        Expect {
            subject: Some("case no-date".into()),
            message_id: Some("no-date@corpus.test".into()),
            sent_at: Some(None),
            raw_kept: true,
            raw_exact: true,
            ..Expect::default()
        },
    ));

    v.push(case(
        "no-from",
        format!("Subject: case no-from\r\nMessage-ID: <no-from@corpus.test>\r\nDate: {DATE}\r\n\r\nx\r\n"),
        Expect {
            subject: Some("case no-from".into()),
            message_id: Some("no-from@corpus.test".into()),
            from: Some("[]"),
            raw_kept: true,
            raw_exact: true,
            ..Expect::default()
        },
    ));

    v.push(case(
        "no-headers-at-all",
        "\r\nthis is not an email, just words\r\n",
        Expect {
            parse_error: true,
            text: text(&["this is not an email, just words"]),
            snippet: Some("this is not an email, just words".into()),
            from: Some("[]"),
            raw_kept: true,
            raw_exact: true,
            ..Expect::default()
        },
    ));

    v.push(case(
        "headers-only",
        format!("Subject: case headers-only\r\nMessage-ID: <headers-only@corpus.test>\r\nDate: {DATE}\r\n"),
        Expect {
            subject: Some("case headers-only".into()),
            message_id: Some("headers-only@corpus.test".into()),
            snippet: Some(String::new()),
            raw_kept: true,
            raw_exact: true,
            ..Expect::default()
        },
    ));

    v.push(case(
        "garbage-date",
        format!(
            "{}\r\nx\r\n",
            head("garbage-date", "").replace(DATE, "sometime last week-ish")
        ),
        Expect {
            sent_at: Some(None),
            ..base("garbage-date")
        },
    ));

    v.push(case(
        "group-syntax",
        format!(
            "{}\r\nx\r\n",
            head("group", "").replace("To: rcpt@example.test", "To: undisclosed-recipients:;")
        ),
        Expect {
            to: None,
            ..base("group")
        },
    ));

    v.push(case(
        "malformed-addresses",
        format!(
            "{}\r\nx\r\n",
            head("bad-addr", "").replace(
                "To: rcpt@example.test",
                "To: <<<@@>>>, \"unterminated <x@y, ,,,"
            )
        ),
        Expect {
            to: None,
            ..base("bad-addr")
        },
    ));

    v.push(case(
        "all-address-headers",
        format!(
            "From: F <f@example.test>\r\nSender: S <s@example.test>\r\nReply-To: R <r@example.test>, r2@example.test\r\n\
             To: T <t@example.test>\r\nCc: C1 <c1@example.test>, c2@example.test\r\nBcc: B <b@example.test>\r\n\
             Subject: case addresses\r\nMessage-ID: <addresses@corpus.test>\r\nDate: {DATE}\r\n\r\nx\r\n"
        ),
        Expect {
            subject: Some("case addresses".into()),
            message_id: Some("addresses@corpus.test".into()),
            from: Some(r#"[{"name":"F","address":"f@example.test"}]"#),
            sender: Some(r#"[{"name":"S","address":"s@example.test"}]"#),
            reply_to: Some(r#"[{"name":"R","address":"r@example.test"},{"name":null,"address":"r2@example.test"}]"#),
            to: Some(r#"[{"name":"T","address":"t@example.test"}]"#),
            cc: Some(r#"[{"name":"C1","address":"c1@example.test"},{"name":null,"address":"c2@example.test"}]"#),
            bcc: Some(r#"[{"name":"B","address":"b@example.test"}]"#),
            sent_at: Some(Some(DATE_MS)),
            raw_kept: true,
            raw_exact: true,
            ..Expect::default()
        },
    ));

    let long_mid = "m".repeat(5000);
    v.push(case(
        "5000-char-message-id",
        format!("Subject: case long-mid\r\nMessage-ID: <{long_mid}@x>\r\n\r\nx\r\n"),
        Expect {
            subject: Some("case long-mid".into()),
            message_id: Some("m".repeat(512)),
            raw_kept: true,
            raw_exact: true,
            ..Expect::default()
        },
    ));

    let mut refs = String::from("References:");
    for i in 0..500 {
        refs.push_str(&format!(" <r{i}@refs>\r\n"));
    }
    v.push(case(
        "500-references",
        format!(
            "{}In-Reply-To: <r499@refs>\r\n{refs}\r\nx\r\n",
            head("refs", "")
        ),
        Expect {
            in_reply_to: Some(Some("r499@refs")),
            ..base("refs")
        },
    ));

    v.push(case(
        "broken-base64",
        format!(
            "{}Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\nSGVsbG8g!!!d29y**bGQ=\r\n====\r\n",
            head("bad-b64", "")
        ),
        Expect {
            ..base("bad-b64")
        },
    ));

    v.push(case(
        "broken-quoted-printable",
        format!(
            "{}Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nbad =ZZ escape and soft=\r\nbreak and trailing =",
            head("bad-qp", "")
        ),
        Expect {
            text: text(&["bad", "escape"]),
            ..base("bad-qp")
        },
    ));

    v.push(case(
        "bare-lf",
        head("bare-lf", "").replace("\r\n", "\n") + "\nline one\nline two\n",
        Expect {
            text: text(&["line one\r\nline two"]),
            raw_exact: false,
            ..base("bare-lf")
        },
    ));

    let mut nul = head("nul", "")
        .replace("Subject: case nul", "Subject: case \0nul")
        .into_bytes();
    nul.extend(b"\r\nbody with \0 NUL \0 bytes\r\n");
    v.push(Case {
        name: "nul-bytes-maildir",
        raw: nul,
        delivery: Delivery::Maildir,
        // Dovecot hands NUL out as 0x80 (invalid UTF-8), so it arrives as U+FFFD; real NUL
        // bytes are covered by `nul_bytes_are_stripped_before_the_database`.
        expect: Expect {
            subject: Some("case \u{fffd}nul".into()),
            text: text(&["body with", "bytes"]),
            raw_exact: false,
            ..base("nul")
        },
    });

    let mut nul2 = head("nul-headers", "").into_bytes();
    nul2.extend(b"X-Evil: \0\0\0\r\nContent-Type: text/html\r\n\r\n<p>\0html\0</p>\r\n");
    v.push(Case {
        name: "nul-in-html-maildir",
        raw: nul2,
        delivery: Delivery::Maildir,
        expect: Expect {
            html: Some(vec!["html"]),
            raw_exact: false,
            ..base("nul-headers")
        },
    });

    let mut huge = head("over-max", "Content-Type: text/plain\r\n\r\n");
    let line = "x".repeat(998) + "\r\n";
    while huge.len() < 300_000 {
        huge.push_str(&line);
    }
    v.push(case(
        "over-max-message-size",
        huge,
        Expect {
            truncated: true,
            raw_kept: false,
            text: Some(vec![]),
            ..base("over-max")
        },
    ));

    let mut over_raw = head("over-raw", "Content-Type: text/plain\r\n\r\n");
    let line = "y".repeat(78) + "\r\n";
    while over_raw.len() < 170_000 {
        over_raw.push_str(&line);
    }
    v.push(case(
        "over-raw-limit",
        over_raw,
        Expect {
            raw_kept: false,
            text: text(&["yyyy"]),
            ..base("over-raw")
        },
    ));

    let mut binary = head(
        "binary-cte",
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: binary\r\n\r\n",
    )
    .into_bytes();
    binary.extend(b"\x01\x02 control \x1b[31m chars \x7f\r\n");
    v.push(case(
        "binary-control-chars",
        binary,
        Expect {
            text: text(&["control", "chars"]),
            ..base("binary-cte")
        },
    ));

    v.push(case(
        "text-attachment",
        mixed(
            "text-att",
            &["Content-Type: text/plain; name=notes.txt\r\nContent-Disposition: attachment; filename=notes.txt\r\n\r\nmy notes".into()],
        ),
        Expect {
            text: text(&["see attached"]),
            has_attachments: true,
            attachments: vec![Att {
                filename: Some("notes.txt"),
                content_type: "text/plain",
                size: 8,
                stored: true,
                ..Att::default()
            }],
            attachment_count: 1,
            ..base("text-att")
        },
    ));

    v.push(case(
        "unknown-content-type",
        format!(
            "{}Content-Type: foo/bar\r\n\r\nwhat is this\r\n",
            head("foo-bar", "")
        ),
        Expect {
            // Not text: an attachment of unknown type, not a body.
            text: Some(vec![]),
            has_attachments: true,
            attachment_count: 1,
            ..base("foo-bar")
        },
    ));

    v.push(case(
        "html-script-snippet",
        format!(
            "{}Content-Type: text/html\r\n\r\n<script>alert('x')</script><p>Visible   text\r\n here</p>\r\n",
            head("script", "")
        ),
        Expect {
            html: Some(vec!["<script>"]),
            text: text(&["Visible"]),
            ..base("script")
        },
    ));

    v.push(case(
        "attachment-only",
        format!(
            "{}Content-Type: application/pdf; name=only.pdf\r\nContent-Disposition: attachment; filename=only.pdf\r\n\r\n%PDF-1.4",
            head("att-only", "")
        ),
        Expect {
            text: Some(vec![]),
            html: Some(vec![]),
            snippet: Some(String::new()),
            has_attachments: true,
            attachments: vec![Att {
                filename: Some("only.pdf"),
                content_type: "application/pdf",
                size: 8,
                stored: true,
                ..Att::default()
            }],
            attachment_count: 1,
            ..base("att-only")
        },
    ));

    v.push(case(
        "encoded-word-garbage",
        format!(
            "{}\r\nx\r\n",
            head("ew-garbage", "").replace(
                "Subject: case ew-garbage",
                "Subject: =?utf-8?b?!!!?= =?x-unknown?q?abc?= =?utf-8?q?ok?="
            )
        ),
        Expect {
            subject: None,
            ..base("ew-garbage")
        },
    ));

    v.push(case(
        "absurd-date-year-9999",
        format!(
            "{}\r\nx\r\n",
            head("future", "").replace(DATE, "Fri, 31 Dec 9999 23:59:59 +0000")
        ),
        Expect {
            // Outside 1900..=3000 the Date is treated as missing.
            sent_at: Some(None),
            ..base("future")
        },
    ));

    v
}

/// Compares a stored row with what `case` expects.
pub fn check(case: &Case, s: &Stored) -> Result<()> {
    let e = &case.expect;
    let n = case.name;
    if let Some(subject) = &e.subject {
        ensure!(
            s.subject.as_deref() == Some(subject.as_str()),
            "{n}: subject {:?}",
            s.subject
                .as_deref()
                .map(|x| x.chars().take(80).collect::<String>())
        );
    }
    ensure!(
        s.message_id == e.message_id,
        "{n}: message_id {:?}",
        s.message_id
    );
    for (what, want, got) in [
        ("from", e.from, &s.from),
        ("to", e.to, &s.to),
        ("cc", e.cc, &s.cc),
        ("bcc", e.bcc, &s.bcc),
        ("sender", e.sender, &s.sender),
        ("reply_to", e.reply_to, &s.reply_to),
        ("references", e.references, &s.references),
    ] {
        if let Some(want) = want {
            ensure!(got == want, "{n}: {what} {got}");
        }
        ensure!(
            serde_json::from_str::<serde_json::Value>(got).is_ok_and(|v| v.is_array()),
            "{n}: {what} is not a JSON array: {got}"
        );
    }
    if let Some(irt) = e.in_reply_to {
        ensure!(
            s.in_reply_to.as_deref() == irt,
            "{n}: in_reply_to {:?}",
            s.in_reply_to
        );
    }
    if let Some(sent) = e.sent_at {
        ensure!(s.sent_at == sent, "{n}: sent_at {:?}", s.sent_at);
    }
    ensure!(s.received_at.is_some(), "{n}: INTERNALDATE missing");
    if let Some(parts) = &e.text {
        match (&s.text_body, parts.is_empty()) {
            (None, true) => {}
            (Some(t), false) => {
                for p in parts {
                    ensure!(
                        t.contains(p.as_str()),
                        "{n}: text lacks {p:?}: {:?}",
                        t.chars().take(200).collect::<String>()
                    );
                }
            }
            (t, _) => anyhow::bail!(
                "{n}: text body {:?}",
                t.as_ref().map(|t| t.chars().take(200).collect::<String>())
            ),
        }
    }
    if let Some(parts) = &e.html {
        match (&s.html_body, parts.is_empty()) {
            (None, true) => {}
            (Some(h), false) => {
                for p in parts {
                    ensure!(h.contains(p), "{n}: html lacks {p:?}: {h:?}");
                }
            }
            (h, _) => anyhow::bail!("{n}: html body {h:?}"),
        }
    }
    if let Some(snippet) = &e.snippet {
        ensure!(&s.snippet == snippet, "{n}: snippet {:?}", s.snippet);
    }
    ensure!(s.snippet.chars().count() <= 200, "{n}: snippet too long");
    ensure!(
        s.parse_error == e.parse_error,
        "{n}: parse_error {}",
        s.parse_error
    );
    ensure!(s.truncated == e.truncated, "{n}: truncated {}", s.truncated);
    ensure!(
        s.has_attachments == e.has_attachments,
        "{n}: has_attachments {}",
        s.has_attachments
    );
    ensure!(s.thread_id.is_some(), "{n}: no thread");
    ensure!(
        s.flags.is_empty() || s.flags.starts_with('\\') || s.flags.starts_with('$'),
        "{n}: flags {:?}",
        s.flags
    );
    match (&s.raw, e.raw_kept) {
        (Some(raw), true) => {
            ensure!(
                raw.len() as i64 == s.size,
                "{n}: raw {} bytes but RFC822.SIZE {}",
                raw.len(),
                s.size
            );
            if e.raw_exact {
                ensure!(
                    raw == &crlf(&case.raw),
                    "{n}: raw differs from what was delivered"
                );
            }
        }
        (None, false) => {}
        (raw, _) => anyhow::bail!("{n}: raw kept = {}", raw.is_some()),
    }
    ensure!(
        s.attachments.len() == e.attachment_count,
        "{n}: {} attachments: {:?}",
        s.attachments.len(),
        s.attachments.iter().take(3).collect::<Vec<_>>()
    );
    for (i, (want, got)) in e.attachments.iter().zip(&s.attachments).enumerate() {
        ensure!(
            got.filename.as_deref() == want.filename,
            "{n}: attachment {i} filename {:?}",
            got.filename
        );
        ensure!(
            got.content_type == want.content_type,
            "{n}: attachment {i} type {}",
            got.content_type
        );
        ensure!(
            got.size == want.size,
            "{n}: attachment {i} size {}",
            got.size
        );
        ensure!(
            got.content_id.as_deref() == want.content_id,
            "{n}: attachment {i} cid {:?}",
            got.content_id
        );
        ensure!(
            got.inline == want.inline,
            "{n}: attachment {i} inline {}",
            got.inline
        );
        ensure!(
            got.stored == want.stored,
            "{n}: attachment {i} stored {}",
            got.stored
        );
        ensure!(
            got.content.is_some() == want.stored,
            "{n}: attachment {i} content presence"
        );
        if let Some(c) = &got.content {
            ensure!(
                c.len() as i64 == got.size,
                "{n}: attachment {i} content length {}",
                c.len()
            );
        }
    }
    Ok(())
}

/// Line ends as Dovecot returns them: CRLF.
pub fn crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut prev = 0u8;
    for &b in raw {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}
