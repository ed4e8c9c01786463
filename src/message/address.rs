//! Address lists as the JSON the web app reads: `[{"name":..,"address":..}]`.

use mail_parser::Address;
use serde::{Deserialize, Serialize};

/// One mailbox of an address list. Groups are flattened into their members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addr {
    /// Display name, decoded (RFC 2047).
    pub name: Option<String>,
    /// `local@domain`.
    pub address: Option<String>,
}

/// The JSON text of an address header; `[]` when it is absent.
pub fn json(addr: Option<&Address<'_>>) -> String {
    to_json(&list(addr))
}

/// The mailboxes of an address header.
pub fn list(addr: Option<&Address<'_>>) -> Vec<Addr> {
    addr.map(|a| {
        a.iter()
            .map(|a| Addr {
                name: a.name().map(super::text::clean),
                address: a.address().map(super::text::clean),
            })
            .collect()
    })
    .unwrap_or_default()
}

/// Serializes a list; never fails (`[]` in the impossible case).
pub fn to_json(list: &[Addr]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".into())
}

/// Parses stored JSON; anything unreadable is an empty list.
pub fn from_json(s: &str) -> Vec<Addr> {
    serde_json::from_str(s).unwrap_or_default()
}
