//! Value types of the protocol, each with a validating constructor.
//!
//! Wire values are bytes: client ids and echoed strings are kept exactly as they arrived.
//! Numbers that the protocol fixes to a decimal grammar are checked exactly, on their digits,
//! never through a lossy float.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// Why a field of a message is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FieldError {
    /// The server name is empty, too long, or holds bytes other than printable ASCII.
    #[error("bad server name")]
    ServerName,
    /// The client id is empty or holds white space.
    #[error("bad client id")]
    ClientId,
    /// The location is not ISO 6709 `[+-]D[.D][+-]D[.D]` within range.
    #[error("bad location")]
    Location,
    /// The client time is not `DIGITS[.DIGITS]` with at most 20 integer digits.
    #[error("bad client time")]
    ClientTime,
    /// The radius is not `DIGITS[.DIGITS]` in (0, 50].
    #[error("bad radius")]
    Radius,
    /// The item count is not `DIGITS` in 1..=20.
    #[error("bad max items")]
    MaxItems,
    /// The time difference is not `[+-]DIGITS.NNNNNNNNN`.
    #[error("bad time difference")]
    TimeDiff,
}

/// The protocol's white space: space, `\t`, `\n`, `\v`, `\f`, `\r`.
#[inline]
pub fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn all_digits(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(u8::is_ascii_digit)
}

/// Splits `DIGITS` or `DIGITS.DIGITS` into integer and fraction digits (fraction may be empty).
fn split_decimal(s: &[u8]) -> Option<(&[u8], &[u8])> {
    match s.iter().position(|&b| b == b'.') {
        None => all_digits(s).then_some((s, &[][..])),
        Some(dot) => {
            let (int, frac) = (&s[..dot], &s[dot + 1..]);
            (all_digits(int) && all_digits(frac)).then_some((int, frac))
        }
    }
}

fn strip_leading_zeros(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| b == b'0').count();
    &s[n..]
}

/// Compares the unsigned decimal `int.frac` with the whole number `limit`, exactly.
fn cmp_decimal(int: &[u8], frac: &[u8], limit: u64) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let int = strip_leading_zeros(int);
    let value = if int.len() > 19 { None } else { parse_u64(int) };
    match value {
        None => Ordering::Greater,
        Some(v) if v != limit => v.cmp(&limit),
        Some(_) if frac.iter().any(|&b| b != b'0') => Ordering::Greater,
        Some(_) => Ordering::Equal,
    }
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for &d in digits {
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(v)
}

/// Parses up to `len` digits of a fraction into nanoseconds, truncating after the ninth.
fn frac_nanos(frac: &[u8]) -> u32 {
    let mut n: u32 = 0;
    for i in 0..9 {
        let d = frac.get(i).map_or(0, |b| u32::from(b - b'0'));
        n = n * 10 + d;
    }
    n
}

fn lossy(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.write_str(&String::from_utf8_lossy(bytes))
}

// === ServerName ===

/// The name of a server of the herd: 1 to 64 bytes of printable, non-space ASCII.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerName(Box<str>);

impl ServerName {
    /// Longest accepted server name, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Validates a server name.
    ///
    /// # Errors
    /// [`FieldError::ServerName`] when empty, longer than [`Self::MAX_LEN`] or not printable ASCII.
    pub fn new(s: &str) -> Result<Self, FieldError> {
        Self::from_bytes(s.as_bytes())
    }

    /// Validates a server name given as bytes.
    ///
    /// # Errors
    /// As [`ServerName::new`].
    pub fn from_bytes(b: &[u8]) -> Result<Self, FieldError> {
        Self::check(b)?;
        let s = std::str::from_utf8(b).map_err(|_| FieldError::ServerName)?;
        Ok(Self(s.into()))
    }

    /// Whether `b` is a valid server name, without making one (no allocation).
    ///
    /// # Errors
    /// As [`ServerName::new`].
    pub fn check(b: &[u8]) -> Result<(), FieldError> {
        let ok =
            !b.is_empty() && b.len() <= Self::MAX_LEN && b.iter().all(|c| c.is_ascii_graphic());
        if ok {
            Ok(())
        } else {
            Err(FieldError::ServerName)
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ServerName {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

// === ClientId ===

/// A client id: any non-empty run of bytes that are not protocol white space.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(Box<[u8]>);

impl ClientId {
    /// Validates a client id.
    ///
    /// # Errors
    /// [`FieldError::ClientId`] when empty or holding white space.
    pub fn new(b: &[u8]) -> Result<Self, FieldError> {
        if b.is_empty() || b.iter().any(|&c| is_space(c)) {
            return Err(FieldError::ClientId);
        }
        Ok(Self(b.into()))
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl FromStr for ClientId {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s.as_bytes())
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        lossy(&self.0, f)
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

// === Location ===

/// An ISO 6709 location: the text as the client sent it plus its parsed degrees.
#[derive(Clone, PartialEq)]
pub struct Location {
    text: Box<[u8]>,
    lat: f64,
    lon: f64,
}

/// Parses one signed coordinate `[+-]D[.D]` at the start of `s`; returns it and its length.
fn coordinate(s: &[u8], limit: u64) -> Option<(f64, usize)> {
    let sign = *s.first()?;
    if sign != b'+' && sign != b'-' {
        return None;
    }
    let body_len = s[1..]
        .iter()
        .position(|&b| b == b'+' || b == b'-')
        .unwrap_or(s.len() - 1);
    let body = &s[1..1 + body_len];
    let (int, frac) = split_decimal(body)?;
    if body.contains(&b'.') && frac.is_empty() {
        return None;
    }
    if cmp_decimal(int, frac, limit) == std::cmp::Ordering::Greater {
        return None;
    }
    let v = match fast_decimal(int, frac) {
        Some(v) => v,
        None => std::str::from_utf8(body).ok()?.parse().ok()?,
    };
    Some((if sign == b'-' { -v } else { v }, 1 + body_len))
}

/// Powers of ten that are exact in an `f64`.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The value of the decimal digits `int.frac` when it can be had without a general parser:
/// at most 19 digits whose whole number fits 53 bits (every coordinate with up to 15
/// significant digits). Then the digits as an integer and the power of ten are both exact
/// in an `f64`, and one division rounds correctly, so this is the very `f64` that
/// `str::parse` gives (Clinger's fast path); `None` otherwise.
fn fast_decimal(int: &[u8], frac: &[u8]) -> Option<f64> {
    if int.len() + frac.len() > 19 {
        return None;
    }
    let m = int
        .iter()
        .chain(frac)
        .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
    if m > 1 << 53 {
        return None;
    }
    // `m` < 2^53 is exact as an f64; `frac.len()` <= 19 indexes the table.
    Some(m as f64 / POW10[frac.len()])
}

impl Location {
    /// Parses and range-checks an ISO 6709 location.
    ///
    /// # Errors
    /// [`FieldError::Location`] when it does not follow the grammar or is out of range.
    pub fn parse(s: &[u8]) -> Result<Self, FieldError> {
        let (lat, lon) = Self::degrees(s)?;
        Ok(Self {
            text: s.into(),
            lat,
            lon,
        })
    }

    /// Validates an ISO 6709 location and returns its (latitude, longitude) without keeping
    /// the text (no allocation).
    ///
    /// # Errors
    /// As [`Location::parse`].
    pub fn degrees(s: &[u8]) -> Result<(f64, f64), FieldError> {
        let (lat, n) = coordinate(s, 90).ok_or(FieldError::Location)?;
        let (lon, m) = coordinate(&s[n..], 180).ok_or(FieldError::Location)?;
        if n + m != s.len() {
            return Err(FieldError::Location);
        }
        Ok((lat, lon))
    }

    /// Latitude in degrees, within [-90, 90].
    pub fn lat(&self) -> f64 {
        self.lat
    }

    /// Longitude in degrees, within [-180, 180].
    pub fn lon(&self) -> f64 {
        self.lon
    }

    /// The text exactly as the client sent it.
    pub fn as_bytes(&self) -> &[u8] {
        &self.text
    }
}

impl FromStr for Location {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s.as_bytes())
    }
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Location({}: {}, {})",
            String::from_utf8_lossy(&self.text),
            self.lat,
            self.lon
        )
    }
}

// === ClientTime ===

/// A client's POSIX time: exact seconds and nanoseconds, plus the text as sent.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientTime {
    secs: u128,
    nanos: u32,
    text: Box<[u8]>,
}

/// The exact value of a client time, without its text; orders records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TimeValue {
    /// Whole seconds since the epoch (up to 20 digits).
    pub secs: u128,
    /// Nanoseconds, with digits beyond the ninth truncated.
    pub nanos: u32,
}

impl TimeValue {
    /// Parses `DIGITS[.DIGITS]` with at most 20 integer digits.
    ///
    /// # Errors
    /// [`FieldError::ClientTime`] otherwise.
    pub fn parse(s: &[u8]) -> Result<Self, FieldError> {
        let (int, frac) = split_decimal(s).ok_or(FieldError::ClientTime)?;
        if int.len() > 20 || (s.contains(&b'.') && frac.is_empty()) {
            return Err(FieldError::ClientTime);
        }
        let secs = int
            .iter()
            .fold(0u128, |acc, &d| acc * 10 + u128::from(d - b'0'));
        Ok(Self {
            secs,
            nanos: frac_nanos(frac),
        })
    }

    /// The value in nanoseconds since the epoch.
    pub fn as_nanos(&self) -> i128 {
        // 20 digits of seconds times 1e9 stays below 1e29, far inside i128.
        i128::try_from(self.secs).unwrap_or(i128::MAX / 2) * 1_000_000_000 + i128::from(self.nanos)
    }
}

impl ClientTime {
    /// Parses a client time.
    ///
    /// # Errors
    /// [`FieldError::ClientTime`] when not `DIGITS[.DIGITS]` or over 20 integer digits.
    pub fn parse(s: &[u8]) -> Result<Self, FieldError> {
        let v = TimeValue::parse(s)?;
        Ok(Self {
            secs: v.secs,
            nanos: v.nanos,
            text: s.into(),
        })
    }

    /// The exact value.
    pub fn value(&self) -> TimeValue {
        TimeValue {
            secs: self.secs,
            nanos: self.nanos,
        }
    }

    /// The text exactly as the client sent it.
    pub fn as_bytes(&self) -> &[u8] {
        &self.text
    }
}

impl FromStr for ClientTime {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s.as_bytes())
    }
}

impl fmt::Debug for ClientTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientTime({})", String::from_utf8_lossy(&self.text))
    }
}

// === Timestamp ===

/// A server clock reading: nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// A timestamp from whole seconds and nanoseconds.
    pub fn from_parts(secs: u64, nanos: u32) -> Self {
        Self(
            secs.saturating_mul(1_000_000_000)
                .saturating_add(u64::from(nanos)),
        )
    }

    /// Nanoseconds since the epoch.
    pub fn as_nanos(self) -> u64 {
        self.0
    }

    /// This time plus `d`, saturating.
    pub fn plus(self, d: std::time::Duration) -> Self {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(ns))
    }

    /// `self - earlier`, or zero when `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> std::time::Duration {
        std::time::Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

// === TimeDiff ===

/// Server receive time minus client time, exact to the nanosecond.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeDiff(pub i128);

impl TimeDiff {
    /// `now - client`, computed with integers only.
    pub fn between(now: Timestamp, client: TimeValue) -> Self {
        Self(i128::from(now.0) - client.as_nanos())
    }

    /// Parses `[+-]DIGITS.NNNNNNNNN` (exactly nine decimals).
    ///
    /// # Errors
    /// [`FieldError::TimeDiff`] otherwise.
    pub fn parse(s: &[u8]) -> Result<Self, FieldError> {
        let (&sign, rest) = s.split_first().ok_or(FieldError::TimeDiff)?;
        let (int, frac) = split_decimal(rest).ok_or(FieldError::TimeDiff)?;
        if frac.len() != 9 || int.len() > 30 || (sign != b'+' && sign != b'-') {
            return Err(FieldError::TimeDiff);
        }
        let secs = int
            .iter()
            .try_fold(0i128, |acc, &d| {
                acc.checked_mul(10)?.checked_add(i128::from(d - b'0'))
            })
            .ok_or(FieldError::TimeDiff)?;
        let nanos = secs
            .checked_mul(1_000_000_000)
            .and_then(|v| v.checked_add(i128::from(frac_nanos(frac))))
            .ok_or(FieldError::TimeDiff)?;
        Ok(Self(if sign == b'-' { -nanos } else { nanos }))
    }

    /// Appends the wire form (`+0.263873386`) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.push(if self.0 < 0 { b'-' } else { b'+' });
        let abs = self.0.unsigned_abs();
        let secs = abs / 1_000_000_000;
        let nanos = abs % 1_000_000_000;
        push_u128(out, secs);
        out.push(b'.');
        let mut digits = [b'0'; 9];
        let mut n = nanos;
        for slot in digits.iter_mut().rev() {
            *slot = b'0' + (n % 10) as u8;
            n /= 10;
        }
        out.extend_from_slice(&digits);
    }
}

/// Appends the decimal digits of `v`.
pub(crate) fn push_u128(out: &mut Vec<u8>, mut v: u128) {
    let mut buf = [0u8; 40];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

impl fmt::Display for TimeDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut v = Vec::with_capacity(24);
        self.write_to(&mut v);
        lossy(&v, f)
    }
}

// === RadiusKm ===

/// A WHATSAT radius in kilometres, 0 < r ≤ 50.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RadiusKm(f64);

impl RadiusKm {
    /// Parses `DIGITS[.DIGITS]`, exactly range checked.
    ///
    /// # Errors
    /// [`FieldError::Radius`] when malformed, zero or above 50.
    pub fn parse(s: &[u8]) -> Result<Self, FieldError> {
        let (int, frac) = split_decimal(s).ok_or(FieldError::Radius)?;
        if s.contains(&b'.') && frac.is_empty() {
            return Err(FieldError::Radius);
        }
        let zero = int.iter().chain(frac).all(|&b| b == b'0');
        if zero || cmp_decimal(int, frac, 50) == std::cmp::Ordering::Greater {
            return Err(FieldError::Radius);
        }
        let text = std::str::from_utf8(s).map_err(|_| FieldError::Radius)?;
        let v: f64 = text.parse().map_err(|_| FieldError::Radius)?;
        Ok(Self(v))
    }

    /// Builds a radius from kilometres.
    ///
    /// # Errors
    /// [`FieldError::Radius`] when not in (0, 50].
    pub fn from_km(km: f64) -> Result<Self, FieldError> {
        if km > 0.0 && km <= 50.0 {
            Ok(Self(km))
        } else {
            Err(FieldError::Radius)
        }
    }

    /// Kilometres.
    pub fn km(self) -> f64 {
        self.0
    }

    /// Metres, as Places services take it.
    pub fn metres(self) -> f64 {
        self.0 * 1000.0
    }
}

impl FromStr for RadiusKm {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s.as_bytes())
    }
}

// === MaxItems ===

/// How many places a WHATSAT wants: 1 to 20.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MaxItems(u8);

impl MaxItems {
    /// The largest allowed count.
    pub const MAX: u8 = 20;

    /// Parses `DIGITS` in 1..=20 (leading zeros allowed).
    ///
    /// # Errors
    /// [`FieldError::MaxItems`] otherwise.
    pub fn parse(s: &[u8]) -> Result<Self, FieldError> {
        if !all_digits(s) {
            return Err(FieldError::MaxItems);
        }
        let digits = strip_leading_zeros(s);
        let v = if digits.len() > 2 {
            None
        } else {
            parse_u64(digits)
        };
        match v {
            Some(n @ 1..=20) => Ok(Self(u8::try_from(n).map_err(|_| FieldError::MaxItems)?)),
            _ => Err(FieldError::MaxItems),
        }
    }

    /// Builds a count.
    ///
    /// # Errors
    /// [`FieldError::MaxItems`] when not in 1..=20.
    pub fn new(n: u8) -> Result<Self, FieldError> {
        if (1..=Self::MAX).contains(&n) {
            Ok(Self(n))
        } else {
            Err(FieldError::MaxItems)
        }
    }

    /// The count.
    pub fn get(self) -> usize {
        usize::from(self.0)
    }
}

impl FromStr for MaxItems {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_follow_the_iso_6709_subset() {
        for ok in [
            "+34.068930-118.445127",
            "+34.06893-118.445127",
            "+34-118",
            "-90+180",
            "+90.000-180.0",
            "+0-0",
        ] {
            assert!(Location::parse(ok.as_bytes()).is_ok(), "{ok}");
        }
        for bad in [
            "34.0-118.0",
            "+.5-118",
            "+34.-118",
            "+34",
            "+90.0001+0",
            "+0+180.00001",
            "+34-118-1",
            "++34-118",
            "+34-118 ",
            "+0x1-118",
            "+1e5-118",
            "+34.5.5-118",
        ] {
            assert!(Location::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        let l = Location::parse(b"-33.5+151.25").unwrap();
        assert_eq!((l.lat(), l.lon()), (-33.5, 151.25));
    }

    #[test]
    fn client_times_are_exact_and_truncated_past_nanos() {
        let t = ClientTime::parse(b"1520023934.918963997").unwrap().value();
        assert_eq!((t.secs, t.nanos), (1520023934, 918963997));
        let t = ClientTime::parse(b"1589876543.1234567").unwrap().value();
        assert_eq!(t.nanos, 123456700);
        let t = ClientTime::parse(b"1.1234567899999").unwrap().value();
        assert_eq!(t.nanos, 123456789);
        assert!(ClientTime::parse(b"99999999999999999999").is_ok());
        for bad in [
            "",
            "-1",
            "+1",
            "1e9",
            "1.",
            ".5",
            "123456789012345678901",
            "1.2.3",
        ] {
            assert!(ClientTime::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn diff_has_sign_and_nine_decimals() {
        let now = Timestamp::from_parts(1520023935, 182837383);
        let t = ClientTime::parse(b"1520023934.918963997").unwrap().value();
        assert_eq!(TimeDiff::between(now, t).to_string(), "+0.263873386");
        let t = ClientTime::parse(b"1520023936.682837383").unwrap().value();
        assert_eq!(TimeDiff::between(now, t).to_string(), "-1.500000000");
        let t = ClientTime::parse(b"1520023935.182837383999")
            .unwrap()
            .value();
        assert_eq!(TimeDiff::between(now, t).to_string(), "+0.000000000");
        let far = ClientTime::parse(b"99999999999999999999.5")
            .unwrap()
            .value();
        assert_eq!(
            TimeDiff::between(Timestamp(0), far).to_string(),
            "-99999999999999999999.500000000"
        );
        for s in ["+0.263873386", "-1.500000000", "+0.000000000"] {
            assert_eq!(TimeDiff::parse(s.as_bytes()).unwrap().to_string(), s);
        }
    }

    #[test]
    fn radius_and_items_are_range_checked_exactly() {
        for ok in ["50", "50.000", "0.001", "10", "007"] {
            assert!(RadiusKm::parse(ok.as_bytes()).is_ok(), "{ok}");
        }
        for bad in [
            "0",
            "0.0",
            "50.0000000000000000001",
            "51",
            "-1",
            "1.",
            ".5",
            "1e1",
            "",
        ] {
            assert!(RadiusKm::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        for ok in ["1", "20", "05"] {
            assert!(MaxItems::parse(ok.as_bytes()).is_ok(), "{ok}");
        }
        for bad in ["0", "21", "-1", "1.0", "", "100000000000000000000000"] {
            assert!(MaxItems::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_fast_coordinate_parse_gives_the_standard_parse() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..200_000 {
            let r = next();
            let int_len = 1 + (r % 3) as usize;
            let frac_len = ((r >> 8) % 18) as usize;
            let digits: Vec<u8> = (0..int_len + frac_len)
                .map(|i| b'0' + ((next() >> (i % 8)) % 10) as u8)
                .collect();
            let (int, frac) = digits.split_at(int_len);
            let text = format!(
                "{}.{}",
                std::str::from_utf8(int).unwrap(),
                std::str::from_utf8(frac).unwrap()
            );
            let want: f64 = text.parse().unwrap();
            if let Some(got) = super::fast_decimal(int, frac) {
                assert_eq!(got.to_bits(), want.to_bits(), "{text}");
            }
        }
        assert_eq!(super::fast_decimal(b"34", b"068930"), Some(34.06893));
        assert_eq!(super::fast_decimal(b"1", b"00000000000000000001"), None);
    }
}
