//! Small helpers: durations on the command line, the wall clock as a POSIX time, quantiles.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parses `500ms`, `2s`, `1.5s`, `1m`, `100us` or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("bad duration {s:?}: expected e.g. 500ms, 5s, 1m"))?;
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "bad duration unit {unit:?} in {s:?} (ns, us, ms, s, m, h)"
            ))
        }
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("bad duration {s:?}: {e}"))
}

/// The wall clock as nanoseconds since the epoch (0 before 1970).
pub(crate) fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Appends `nanos` since the epoch as a POSIX time with nine decimals (`1520023934.918963997`).
pub(crate) fn write_posix(nanos: u128, out: &mut Vec<u8>) {
    write_u128(nanos / 1_000_000_000, out);
    out.push(b'.');
    let mut digits = [b'0'; 9];
    let mut rest = nanos % 1_000_000_000;
    for slot in digits.iter_mut().rev() {
        // `rest % 10` is a single digit, so the narrowing cannot lose anything.
        *slot = b'0' + u8::try_from(rest % 10).unwrap_or(0);
        rest /= 10;
    }
    out.extend_from_slice(&digits);
}

/// Appends the decimal digits of `v` without allocating.
pub(crate) fn write_u128(mut v: u128, out: &mut Vec<u8>) {
    let mut buf = [0u8; 40];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + u8::try_from(v % 10).unwrap_or(0);
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// The nearest-rank `q` quantile (0 < q ≤ 1) of sorted samples; `None` when empty.
pub(crate) fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    // The rank is at most `len`, which fits a usize; the float only rounds the index.
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Microseconds as a float, for printing.
pub(crate) fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_and_without_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn posix_time_has_nine_decimals() {
        let mut out = Vec::new();
        write_posix(1_520_023_934_000_000_007, &mut out);
        assert_eq!(out, b"1520023934.000000007");
    }

    #[test]
    fn quantiles_use_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&v, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(quantile(&v, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(quantile(&v, 1.0), Some(Duration::from_millis(100)));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
