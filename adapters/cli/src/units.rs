//! Human units on the command line: sizes (`250KiB`, `1MB`) and rates (`1MB/s`, `0`).

use bytesize::ByteSize;

/// Parses a size such as `1MB`, `250KiB` or `4096`.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty size".into());
    }
    t.parse::<ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("invalid size `{s}`: {e}"))
}

/// Parses a rate such as `1MB/s`, `250KiB/s` or `0` (unlimited), in bytes per second.
pub(crate) fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let size = t.strip_suffix("/s").unwrap_or(t);
    parse_size(size).map_err(|_| {
        format!("invalid rate `{s}`: expected a size per second such as 1MB/s, 250KiB/s or 0")
    })
}

/// Formats bytes for people.
pub(crate) fn human(bytes: u64) -> String {
    ByteSize(bytes).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_sizes() {
        assert_eq!(parse_rate("1MB/s"), Ok(1_000_000));
        assert_eq!(parse_rate("250KiB/s"), Ok(256_000));
        assert_eq!(parse_rate("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_rate("fast").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_rate("-1MB/s").is_err());
    }
}
