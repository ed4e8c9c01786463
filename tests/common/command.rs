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

/// The first UID a `UID FETCH <from>:* …` asks for (`rest` is what follows `UID`); 1 when it
/// cannot be read.
pub fn fetch_from(rest: &str) -> usize {
    rest.split_whitespace()
        .nth(1)
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}
