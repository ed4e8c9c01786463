//! A flags request checked (#19): `seen`, `flagged`, `answered` and other flags or keywords as
//! IMAP atoms, none reserved, none both added and removed.

use super::action_view::FlagsPatch;
use super::ApiError;

/// Flags that are not a client's to set through this call: deletion has its own call, and
/// `\Recent` is the server's.
const RESERVED: &[&str] = &["\\deleted", "\\recent"];
/// Longest flag or keyword accepted.
const MAX_FLAG: usize = 200;
/// Most flags in one request.
const MAX_FLAGS: usize = 50;

/// The `{"add", "remove"}` of a flags request, checked.
pub(super) fn flag_params(p: &FlagsPatch) -> Result<String, ApiError> {
    let mut add: Vec<String> = Vec::new();
    let mut remove: Vec<String> = Vec::new();
    for (flag, on) in [
        ("\\Seen", p.seen),
        ("\\Flagged", p.flagged),
        ("\\Answered", p.answered),
    ] {
        match on {
            Some(true) => add.push(flag.into()),
            Some(false) => remove.push(flag.into()),
            None => {}
        }
    }
    for (field, list, out) in [
        ("addFlags", &p.add_flags, &mut add),
        ("removeFlags", &p.remove_flags, &mut remove),
    ] {
        let list = list.as_deref().unwrap_or_default();
        if list.len() > MAX_FLAGS {
            return Err(ApiError::bad_request(
                field,
                format!("at most {MAX_FLAGS} flags"),
            ));
        }
        for (i, f) in list.iter().enumerate() {
            check_flag(f).map_err(|why| ApiError::bad_request(&format!("{field}[{i}]"), why))?;
            out.push(f.clone());
        }
    }
    if add.is_empty() && remove.is_empty() {
        return Err(ApiError::bad_request(
            "body",
            "nothing to change: give seen, flagged, answered, addFlags or removeFlags",
        ));
    }
    let lower =
        |v: &[String]| -> Vec<String> { v.iter().map(|f| f.to_ascii_lowercase()).collect() };
    if let Some(both) = lower(&add).iter().find(|f| lower(&remove).contains(f)) {
        return Err(ApiError::bad_request(
            "removeFlags",
            format!("{both} is both added and removed"),
        ));
    }
    Ok(serde_json::json!({ "add": add, "remove": remove }).to_string())
}

/// A flag or keyword IMAP can carry as an atom: `\Seen`-style system flags (not `\Deleted`
/// or `\Recent`) and keywords such as `$Label1` or `Work`.
fn check_flag(f: &str) -> Result<(), String> {
    let body = f.strip_prefix('\\').unwrap_or(f);
    if body.is_empty() || f.len() > MAX_FLAG {
        return Err(format!("must be 1 to {MAX_FLAG} characters"));
    }
    if RESERVED.contains(&f.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "{f} cannot be set here (use DELETE to delete mail)"
        ));
    }
    if let Some(c) = body
        .chars()
        .find(|c| !c.is_ascii_graphic() || "(){%*\"\\]".contains(*c))
    {
        return Err(format!("{c:?} is not allowed in a flag"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn flags_are_checked_and_named() {
        let p = FlagsPatch {
            seen: Some(true),
            add_flags: Some(vec!["$Label1".into()]),
            remove_flags: Some(vec!["\\Flagged".into()]),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_str(&flag_params(&p).unwrap()).unwrap();
        assert_eq!(v["add"], serde_json::json!(["\\Seen", "$Label1"]));
        assert_eq!(v["remove"], serde_json::json!(["\\Flagged"]));
        for bad in ["", "a b", "x)", "\\Deleted", "\\recent", "é", "a\r\nb"] {
            let p = FlagsPatch {
                add_flags: Some(vec!["ok".into(), bad.into()]),
                ..Default::default()
            };
            let e = flag_params(&p).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(
                e.message.starts_with("addFlags[1]"),
                "{bad:?}: {}",
                e.message
            );
        }
        assert!(
            flag_params(&FlagsPatch::default()).is_err(),
            "nothing to change"
        );
        let both = FlagsPatch {
            seen: Some(true),
            remove_flags: Some(vec!["\\SEEN".into()]),
            ..Default::default()
        };
        assert!(flag_params(&both).is_err());
    }
}
