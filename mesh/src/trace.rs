//! W3C Trace Context (`traceparent`): every hop that sends a request upstream — the router, the
//! mesh client for invocations — keeps the incoming trace and becomes a new parent span.

use http::HeaderValue;
use rand::Rng;

/// The trace id and flags of a `traceparent` valid by W3C Trace Context (§3.2): 2-digit
/// lower-case hex version other than `ff`; trace id (32) and parent id (16) lower-case hex,
/// not all zeros; 2-digit flags. Version `00` has exactly these four fields; a later version
/// may carry more after a `-`, and only its sampled flag is kept (§3.3 "versioning").
pub fn parse_traceparent(v: &[u8]) -> Option<(&[u8], u8)> {
    fn hex(b: &[u8]) -> bool {
        b.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    }
    let v = v.trim_ascii();
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let (version, trace, parent, flags) = (&v[..2], &v[3..35], &v[36..52], &v[53..55]);
    let valid = hex(version)
        && version != b"ff"
        && hex(trace)
        && trace.iter().any(|&c| c != b'0')
        && hex(parent)
        && parent.iter().any(|&c| c != b'0')
        && hex(flags);
    if !valid {
        return None;
    }
    let flags = u8::from_str_radix(std::str::from_utf8(flags).ok()?, 16).ok()?;
    if version == b"00" {
        (v.len() == 55).then_some((trace, flags))
    } else {
        (v.len() == 55 || v[55] == b'-').then_some((trace, flags & 0x01))
    }
}

/// W3C trace context: keep the trace id of a valid `traceparent` and make this hop a new
/// parent span; start a new trace when it is absent or invalid. Returns the header and whether
/// the incoming trace was kept. Written into a fixed buffer (no `format!`: this runs per
/// request).
pub fn next_traceparent(
    incoming: Option<&HeaderValue>,
) -> Result<(HeaderValue, bool), http::header::InvalidHeaderValue> {
    // "00-" trace(32) "-" span(16) "-" flags(2)
    let mut out = [0u8; 55];
    out[..3].copy_from_slice(b"00-");
    out[35] = b'-';
    out[52] = b'-';
    let mut rng = rand::rng();
    let span: u64 = rng.random::<u64>().max(1);
    put_hex(&mut out[36..52], u128::from(span));
    let kept = incoming.and_then(|v| parse_traceparent(v.as_bytes()));
    let flags = match kept {
        Some((trace, flags)) => {
            out[3..35].copy_from_slice(trace);
            flags
        }
        None => {
            let trace: u128 = rng.random::<u128>().max(1);
            put_hex(&mut out[3..35], trace);
            0x01
        }
    };
    put_hex(&mut out[53..], u128::from(flags));
    // Every byte is a lower-case hex digit or '-'.
    Ok((HeaderValue::from_bytes(&out)?, kept.is_some()))
}

/// Lower-case hex of `v`, right-aligned and zero-padded to `dst.len()` digits.
pub fn put_hex(dst: &mut [u8], mut v: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for d in dst.iter_mut().rev() {
        *d = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next(incoming: &'static str) -> (String, bool) {
        let v = HeaderValue::from_static(incoming);
        let (out, kept) = next_traceparent(Some(&v)).expect("valid header value");
        (out.to_str().expect("ascii").to_owned(), kept)
    }

    fn assert_well_formed(out: &str) {
        assert_eq!(out.len(), 55, "{out}");
        let parts: Vec<&str> = out.split('-').collect();
        assert_eq!(parts.len(), 4, "{out}");
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len()),
            ("00", 32, 16),
            "{out}"
        );
        for p in &parts[1..] {
            assert!(
                p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{out}"
            );
        }
        assert_ne!(parts[1], "0".repeat(32), "{out}");
        assert_ne!(parts[2], "0".repeat(16), "{out}");
    }

    #[test]
    fn traceparent_keeps_the_trace_and_makes_a_new_span() {
        let (out, kept) = next("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert!(kept);
        assert_well_formed(&out);
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{out}"
        );
        assert!(out.ends_with("-01"), "{out}");
        assert_ne!(&out[36..52], "00f067aa0ba902b7");
        // Flags of version 00 pass unchanged; a later version keeps only "sampled" and its
        // extra fields are dropped.
        let (out, kept) = next("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert!(kept && out.ends_with("-00"), "{out}");
        let (out, kept) = next("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-what");
        assert!(
            kept && out.starts_with("00-4bf92f35") && out.ends_with("-01"),
            "{out}"
        );
        assert_well_formed(&out);
    }

    #[test]
    fn an_invalid_traceparent_starts_a_new_trace() {
        for invalid in [
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01extra",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b70-1",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let (out, kept) = next(invalid);
            assert!(!kept, "{invalid} was propagated as {out}");
            assert_well_formed(&out);
            assert!(out.ends_with("-01"), "{out}");
            assert!(
                !out.contains("4bf92f3577b34da6a3ce929d0e0e473"),
                "{invalid} -> {out}"
            );
        }
        let (out, kept) = next_traceparent(None).expect("valid header value");
        assert!(!kept);
        assert_well_formed(out.to_str().expect("ascii"));
    }
}
