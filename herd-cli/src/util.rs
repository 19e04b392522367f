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

/// `--timeout`: a duration as [`parse_duration`] reads it, more than zero (a zero bound would
/// fail every wait at once).
pub(crate) fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("{s:?}: a timeout must be more than 0"));
    }
    Ok(d)
}

/// A server address given on the command line, `HOST:PORT`: a port from 1 to 65535 and a host
/// that is an IPv4 address, a bracketed IPv6 address (`[::1]:12000`) or a host name. Checked
/// here, before anything connects, so `--server 127.0.0.1` is a usage error (exit 64); a host
/// name is not resolved here (a name that does not resolve fails at connect, exit 2).
pub(crate) fn parse_server_addr(s: &str) -> Result<String, String> {
    const FORM: &str = "expected HOST:PORT, e.g. 127.0.0.1:12000 or [::1]:12000";
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} has no port: {FORM}"));
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("bad port {port:?} in {s:?}: a port is 1 to 65535")),
    }
    let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else if host.contains(':') {
        // A bare IPv6 address (`::1:12000`) is ambiguous: the brackets say where the port is.
        false
    } else if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        host.parse::<std::net::Ipv4Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    };
    if !host_ok {
        return Err(format!("bad host {host:?} in {s:?}: {FORM}"));
    }
    Ok(s.to_owned())
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
    fn server_addresses_need_a_host_and_a_port() {
        for ok in [
            "127.0.0.1:12000",
            "[::1]:1",
            "localhost:65535",
            "herd-1.example:80",
        ] {
            assert_eq!(parse_server_addr(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "127.0.0.1",
            "127.0.0.1:",
            "127.0.0.1:0",
            "127.0.0.1:65536",
            "127.0.0.1:port",
            ":12000",
            "::1:12000",
            "[nope]:1",
            "300.1.1.1:1",
            "1.2.3:1",
            "a b:1",
            "",
        ] {
            assert!(parse_server_addr(bad).is_err(), "{bad}");
        }
        assert!(parse_timeout("0s").is_err());
        assert_eq!(parse_timeout("2s"), Ok(Duration::from_secs(2)));
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
