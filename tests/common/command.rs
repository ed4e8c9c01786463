//! What the scripted test servers share: reading a client's command line.

/// A client's command line as `(tag, COMMAND in upper case, the rest)`.
pub fn split_command(line: &str) -> (&str, String, &str) {
    let mut parts = line.splitn(3, ' ');
    (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("").to_ascii_uppercase(),
        parts.next().unwrap_or(""),
    )
}
