//! The status page at `/`: one HTML table row per mailbox (and, in cluster mode, its owner),
//! an import as a progress bar, reloaded by the browser every 5 s. No script.

use crate::status::{ImportProgress, MailboxState, MailboxStatus};

/// The HTML status page: one table row per mailbox, reloaded by the browser every 5 s.
pub fn status_page(mailboxes: &[MailboxStatus]) -> String {
    let idling = mailboxes
        .iter()
        .filter(|m| m.state == MailboxState::Idling)
        .count();
    // Cluster mode: who holds each mailbox.
    let cluster = mailboxes
        .iter()
        .any(|m| m.owner.is_some() || m.state == MailboxState::Elsewhere);
    let mut rows = String::new();
    for m in mailboxes {
        let opt = |v: Option<String>| v.map_or_else(|| "–".to_string(), |v| html_escape(&v));
        let owner = if cluster {
            format!("<td class=\"owner\">{}</td>", opt(m.owner.clone()))
        } else {
            String::new()
        };
        rows.push_str(&format!(
            "<tr class=\"mailbox\" data-account=\"{account}\" data-mailbox=\"{mailbox}\" \
             data-state=\"{state}\"><td>{account}</td><td>{mailbox}</td>\
             <td class=\"state {state}\">{state}</td><td>{since}</td><td>{uid}</td>\
             <td>{last_msg}</td><td>{err}</td><td>{reconnects}</td><td>{retry}</td>\
             <td>{import}</td>{owner}</tr>\n",
            account = html_escape(&m.account),
            mailbox = html_escape(&m.mailbox),
            state = m.state.as_str(),
            since = html_escape(&m.state_since),
            uid = opt(m.last_uid.map(|u| u.to_string())),
            last_msg = opt(m.last_message_at.clone()),
            err = opt(m.last_error.map(str::to_string)),
            reconnects = m.reconnects,
            retry = opt(m.next_retry_at.clone()),
            import = m
                .import
                .as_ref()
                .map_or_else(|| "–".to_string(), import_cell),
        ));
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="5">
<title>idlesync status</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: .3em .8em; border-bottom: 1px solid #ddd; text-align: left; }}
th {{ background: #f4f4f4; }}
.state {{ font-weight: 600; }}
.idling, .fetching {{ color: #17803d; }}
.connecting, .authenticating, .syncing {{ color: #2b5fb4; }}
.backoff {{ color: #b36b00; }}
.auth_failed, .failed, .stopping {{ color: #c0262d; }}
.elsewhere {{ color: #777; }}
.import {{ white-space: nowrap; }}
.import progress {{ display: block; width: 100%; min-width: 10em; }}
</style></head>
<body>
<h1>idlesync</h1>
<p id="summary">{idling} of {total} mailboxes idling. This page reloads every 5 s; <a href="/status">JSON</a>, <a href="/metrics">metrics</a>.</p>
<table id="mailboxes">
<thead><tr><th>account</th><th>mailbox</th><th>state</th><th>since</th><th>last UID</th><th>last message</th><th>last error</th><th>reconnects</th><th>next retry</th><th>import</th>{owner_head}</tr></thead>
<tbody>
{rows}</tbody></table>
</body></html>
"#,
        total = mailboxes.len(),
        owner_head = if cluster { "<th>owner</th>" } else { "" },
    )
}

/// An import's cell: a progress bar, stored/total, the rate, and whether it is over
/// (`done`: complete; `stopped`: abandoned below its total).
fn import_cell(i: &ImportProgress) -> String {
    let state = match (i.done, i.stored >= i.total) {
        (false, _) => "running",
        (true, true) => "done",
        (true, false) => "stopped",
    };
    format!(
        "<span class=\"import\" data-import=\"{state}\"><progress value=\"{value}\" \
         max=\"{max}\"></progress> {stored} / {total} · {rate}/s{note}</span>",
        value = i.stored.min(i.total),
        max = i.total.max(1),
        stored = i.stored,
        total = i.total,
        rate = i.rate_per_sec,
        note = if state == "running" {
            String::new()
        } else {
            format!(" · {state}")
        },
    )
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_escapes_names_and_lists_every_mailbox() {
        let m = |account: &str, mailbox: &str, state| MailboxStatus {
            account: account.into(),
            mailbox: mailbox.into(),
            state,
            state_since: "2026-01-01T00:00:00.000Z".into(),
            last_uid: Some(7),
            last_message_at: None,
            last_error: Some("tls"),
            error_class: Some("config_or_server"),
            reconnects: 2,
            next_retry_at: None,
            import: None,
            owner: None,
        };
        let page = status_page(&[
            m("a1", "INBOX", MailboxState::Idling),
            m("a<2>", "Sent \"x\"", MailboxState::AuthFailed),
        ]);
        assert!(page.contains(r#"data-account="a1" data-mailbox="INBOX" data-state="idling""#));
        assert!(
            page.contains("a&lt;2&gt;") && !page.contains("a<2>"),
            "{page}"
        );
        assert!(page.contains("Sent &quot;x&quot;"), "{page}");
        assert!(page.contains("1 of 2 mailboxes idling"), "{page}");
        assert!(!page.contains("<progress"), "no import, no bar: {page}");
        assert!(
            !page.contains("<th>owner</th>"),
            "single-node: no owner column"
        );

        // Cluster mode: each row names the replica holding the mailbox.
        let mut here = m("a1", "INBOX", MailboxState::Idling);
        here.owner = Some("r1".into());
        let mut there = m("a2", "INBOX", MailboxState::Elsewhere);
        there.owner = Some("r<2>".into());
        let page = status_page(&[here, there]);
        assert!(page.contains("<th>owner</th>"), "{page}");
        assert!(page.contains(r#"<td class="owner">r1</td>"#), "{page}");
        assert!(
            page.contains(r#"<td class="owner">r&lt;2&gt;</td>"#),
            "{page}"
        );
        assert!(page.contains(r#"data-state="elsewhere""#), "{page}");
    }

    #[test]
    fn page_shows_an_import_as_a_progress_bar_with_stored_total_and_rate() {
        let m = |import| MailboxStatus {
            state: MailboxState::Fetching,
            import: Some(import),
            ..MailboxStatus::new("a1", "INBOX")
        };
        let import = |stored, done| ImportProgress {
            stored,
            total: 10300,
            rate_per_sec: 42.5,
            started_at: "2026-01-01T00:00:00.000Z".into(),
            done,
        };
        let page = status_page(&[m(import(1500, false))]);
        assert!(
            page.contains(
                "<span class=\"import\" data-import=\"running\"><progress value=\"1500\" \
                 max=\"10300\"></progress> 1500 / 10300 · 42.5/s</span>"
            ),
            "{page}"
        );
        let page = status_page(&[m(import(1500, true))]);
        assert!(page.contains("data-import=\"stopped\""), "{page}");
        assert!(page.contains("1500 / 10300 · 42.5/s · stopped"), "{page}");
        let page = status_page(&[m(import(10300, true))]);
        assert!(page.contains("data-import=\"done\""), "{page}");
    }
}
