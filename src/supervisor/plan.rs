//! The reload diff: which mailboxes to stop and start, from the old and new account lists
//! alone (pure).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::Key;
use crate::config::Account;

/// What a reload must do, worked out from the old and new account lists alone.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Plan {
    /// Mailboxes to stop.
    pub(super) stop: Vec<Key>,
    /// Mailboxes to start, by account id.
    pub(super) start: BTreeMap<String, Vec<String>>,
    /// Accounts whose endpoint is (re)built before their mailboxes start.
    pub(super) rebuild: BTreeSet<String>,
    /// Accounts whose endpoint goes away.
    pub(super) forget: Vec<String>,
}

pub(super) fn plan(old: &[Account], new: &[Account]) -> Plan {
    let mut p = Plan::default();
    let old_by_id: HashMap<&str, &Account> = old.iter().map(|a| (a.id.as_str(), a)).collect();
    let new_ids: BTreeSet<&str> = new.iter().map(|a| a.id.as_str()).collect();
    for a in old {
        if !new_ids.contains(a.id.as_str()) {
            p.stop
                .extend(a.mailboxes.iter().map(|m| (a.id.clone(), m.clone())));
            p.forget.push(a.id.clone());
        }
    }
    for a in new {
        match old_by_id.get(a.id.as_str()) {
            Some(o) if *o == a => {}
            Some(o) if same_but_mailboxes(o, a) => {
                let before: BTreeSet<&String> = o.mailboxes.iter().collect();
                let after: BTreeSet<&String> = a.mailboxes.iter().collect();
                p.stop.extend(
                    before
                        .difference(&after)
                        .map(|m| (a.id.clone(), (*m).clone())),
                );
                let added: Vec<String> = after.difference(&before).map(|m| (*m).clone()).collect();
                if !added.is_empty() {
                    p.start.insert(a.id.clone(), added);
                }
            }
            previous => {
                if let Some(o) = previous {
                    p.stop
                        .extend(o.mailboxes.iter().map(|m| (o.id.clone(), m.clone())));
                }
                p.rebuild.insert(a.id.clone());
                p.start.insert(a.id.clone(), a.mailboxes.clone());
            }
        }
    }
    p
}

/// Whether two accounts differ only in their mailbox lists.
fn same_but_mailboxes(a: &Account, b: &Account) -> bool {
    let mut b = b.clone();
    b.mailboxes.clone_from(&a.mailboxes);
    *a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(id: &str, mailboxes: &[&str]) -> Account {
        let toml = format!(
            "[[accounts]]\nid = \"{id}\"\nemail = \"{id}@example.com\"\nhost = \"127.0.0.1\"\n\
             tls = \"none\"\nport = 143\nusername = \"{id}\"\npassword = \"x\"\nmailboxes = [{}]\n",
            mailboxes
                .iter()
                .map(|m| format!("\"{m}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let config: crate::Config = toml::from_str(&toml).expect("test account parses");
        config.accounts.into_iter().next().expect("one account")
    }

    #[test]
    fn plan_touches_only_what_changed() {
        let a = account("a", &["INBOX", "Sent"]);
        let b = account("b", &["INBOX"]);
        let c = account("c", &["INBOX"]);
        let mut b2 = b.clone();
        b2.host = "localhost".into();
        let a2 = account("a", &["INBOX", "Archive"]);
        let p = plan(&[a, b, c.clone()], &[a2, b2, c]);
        assert_eq!(
            p.stop,
            vec![
                ("a".to_string(), "Sent".to_string()),
                ("b".to_string(), "INBOX".to_string())
            ]
        );
        assert_eq!(p.start.get("a"), Some(&vec!["Archive".to_string()]));
        assert_eq!(p.start.get("b"), Some(&vec!["INBOX".to_string()]));
        assert!(!p.start.contains_key("c"), "unchanged account untouched");
        assert_eq!(p.rebuild, BTreeSet::from(["b".to_string()]));
        let gone = plan(&[account("d", &["INBOX"])], &[]);
        assert_eq!(gone.forget, vec!["d".to_string()]);
        assert_eq!(gone.stop.len(), 1);
    }
}
