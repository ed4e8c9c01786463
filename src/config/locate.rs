//! Finding the line and key of a problem in the file's text.

use std::path::Path;

use super::{ConfigError, Seg};

/// Turns (key path, message) pairs into errors with the line of each key.
pub(super) fn locate(
    path: &Path,
    text: &str,
    problems: Vec<(Vec<Seg<'_>>, String)>,
) -> Vec<ConfigError> {
    let tree = toml::de::DeTable::parse(text).ok();
    problems
        .into_iter()
        .map(|(path_segs, message)| {
            let line = tree.as_ref().and_then(|t| {
                let root = toml::de::DeValue::Table(t.get_ref().clone());
                span_of(&root, &path_segs).map(|start| line_of(text, start))
            });
            ConfigError {
                file: path.to_path_buf(),
                line,
                key: render_key(&path_segs),
                message,
            }
        })
        .collect()
}

pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

pub(super) fn span_of(root: &toml::de::DeValue<'_>, path: &[Seg<'_>]) -> Option<usize> {
    let mut cur = root;
    let mut start = None;
    for seg in path {
        let next = match seg {
            Seg::Key(k) => cur.get(*k),
            Seg::Index(i) => cur.get(*i),
        };
        match next {
            Some(v) => {
                start = Some(v.span().start);
                cur = v.get_ref();
            }
            None => break,
        }
    }
    start
}

pub(super) fn render_key(path: &[Seg<'_>]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// The dotted path of the key at `offset`, such as `accounts[1].port`: the deepest key whose
/// name or value spans it; else (a syntax error, where the parser dropped the key) the key
/// named on that line, inside the table of the nearest key before it.
pub(super) fn key_at(text: &str, offset: usize, named: &str) -> Option<String> {
    /// The deepest containing path, and the nearest (start, path, is_table) before `offset`.
    struct Found<'a> {
        containing: Option<Vec<Seg<'a>>>,
        before: Option<(usize, Vec<Seg<'a>>, bool)>,
    }
    fn visit<'a>(
        path: &[Seg<'a>],
        span: std::ops::Range<usize>,
        is_table: bool,
        offset: usize,
        found: &mut Found<'a>,
    ) {
        if span.contains(&offset)
            && found
                .containing
                .as_ref()
                .is_none_or(|b| b.len() < path.len())
        {
            found.containing = Some(path.to_vec());
        }
        if span.start <= offset && found.before.as_ref().is_none_or(|b| b.0 <= span.start) {
            found.before = Some((span.start, path.to_vec(), is_table));
        }
    }
    fn walk<'a>(
        v: &'a toml::de::DeValue<'a>,
        offset: usize,
        path: &mut Vec<Seg<'a>>,
        found: &mut Found<'a>,
    ) {
        match v {
            toml::de::DeValue::Table(t) => {
                for (k, child) in t.iter() {
                    path.push(Seg::Key(k.get_ref().as_ref()));
                    let is_table = matches!(child.get_ref(), toml::de::DeValue::Table(_));
                    visit(path, k.span(), is_table, offset, found);
                    visit(path, child.span(), is_table, offset, found);
                    walk(child.get_ref(), offset, path, found);
                    path.pop();
                }
            }
            toml::de::DeValue::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    path.push(Seg::Index(i));
                    let is_table = matches!(child.get_ref(), toml::de::DeValue::Table(_));
                    visit(path, child.span(), is_table, offset, found);
                    walk(child.get_ref(), offset, path, found);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    // Recoverable: a syntax error (a duplicate key, say) still gives the tree around it.
    let (tree, _) = toml::de::DeTable::parse_recoverable(text);
    let root = toml::de::DeValue::Table(tree.into_inner());
    let mut found = Found {
        containing: None,
        before: None,
    };
    walk(&root, offset, &mut Vec::new(), &mut found);
    if let Some(p) = found.containing {
        return Some(render_key(&p));
    }
    if named.is_empty() {
        return None;
    }
    let (_, mut parent, is_table) = found.before?;
    if !is_table {
        parent.pop();
    }
    parent.push(Seg::Key(named));
    Some(render_key(&parent))
}

/// The dotted key on the line of a non-UTF-8 byte at `offset` (empty when none is found). The
/// bytes before `offset` are valid UTF-8, so a lossy decode keeps every offset up to it.
pub(super) fn key_of_bad_byte(bytes: &[u8], offset: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let start = offset.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |p| p + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let named = line.split_once('=').map_or("", |(k, _)| k.trim());
    key_at(&text, start, named).unwrap_or_else(|| named.to_string())
}

/// Best effort: the key named at the error's position (`key = …` on that line).
pub(super) fn key_of_error(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return String::new();
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |p| p + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    if let Some((k, _)) = line.split_once('=') {
        return k.trim().to_string();
    }
    // unknown-field errors name the key in their message.
    e.message()
        .split('`')
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;

    #[test]
    fn a_non_utf8_byte_names_its_key_and_line() {
        let text = b"[storage]\nurl = \"sqlite://x.db\"\n\n[[accounts]]\nid = \"a1\"\nemail = \"a\xdc@example.com\"\nhost = \"127.0.0.1\"\n";
        let e = Config::parse(Path::new("t.toml"), text).unwrap_err();
        let first = &e.0[0];
        assert_eq!(first.line, Some(6), "{e}");
        assert_eq!(first.key, "accounts[0].email", "{e}");
    }
}
