//! Multi-row statement building: `VALUES` lists, `IN` lists, and splitting a batch so that one
//! statement stays under both backends' parameter limits (SQLite: 32,766) and a sane size.

/// Values per `IN (…)` or `VALUES` statement.
pub(super) const PER_STATEMENT: usize = 1000;

/// Splits `items` into runs of at most `max_rows` items and, past the first item of a run,
/// at most about `max_bytes` by `size`.
pub(super) fn runs<T>(
    items: &[T],
    max_rows: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, item) in items.iter().enumerate() {
        let s = size(item);
        if i > start && (i - start >= max_rows || bytes + s > max_bytes) {
            out.push(items.get(start..i).unwrap_or_default());
            start = i;
            bytes = 0;
        }
        bytes += s;
    }
    if start < items.len() {
        out.push(items.get(start..).unwrap_or_default());
    }
    out
}

/// `INSERT INTO table (cols) VALUES ($1, …), (…)` for `rows` rows, followed by `suffix`.
pub(super) fn insert_sql(table: &str, cols: &[&str], rows: usize, suffix: &str) -> String {
    let n = cols.len();
    let mut sql = format!("INSERT INTO {table} ({}) VALUES ", cols.join(", "));
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..n {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&(r * n + c + 1).to_string());
        }
        sql.push(')');
    }
    if !suffix.is_empty() {
        sql.push(' ');
        sql.push_str(suffix);
    }
    sql
}

/// `$first, $first+1, …` (`n` placeholders), for `IN (…)` lists.
pub(super) fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_by_rows_and_bytes() {
        let v = [1usize, 1, 1, 5, 1];
        let r = runs(&v, 2, 3, |x| *x);
        assert_eq!(r, vec![&[1, 1][..], &[1][..], &[5][..], &[1][..]]);
        assert!(runs::<usize>(&[], 2, 3, |x| *x).is_empty());
    }

    #[test]
    fn sql_shapes() {
        assert_eq!(
            insert_sql("t", &["a", "b"], 2, "RETURNING a"),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) RETURNING a"
        );
        assert_eq!(placeholders(2, 3), "$2, $3, $4");
    }
}
