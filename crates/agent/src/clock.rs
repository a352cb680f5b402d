//! The local clock, checked against the facilitator's before a payment is signed.
//!
//! A payment's authorization is valid until the local `now` plus the offer's timeout, and its spend is counted
//! on the local `now`'s day: a clock running ahead would sign authorizations that stay valid long after they
//! should, dated on a day whose cap is still free. So the 402 answer's `Date` header (RFC 9110) is compared
//! with the local clock, and a difference over [`MAX_SKEW_SECS`] signs nothing. An answer without a `Date` (or
//! with one that does not parse) is signed as today: a device without the facilitator's word keeps its own.

/// The largest difference between the local clock and the facilitator's a payment is signed with.
pub const MAX_SKEW_SECS: u64 = 60;

/// Whether a payment may be signed at the local `now` given the facilitator's `Date` header; an error naming
/// the difference otherwise.
pub fn check(date: Option<&str>, now: u64) -> Result<(), String> {
    let Some((date, theirs)) = date.and_then(|d| Some((d, parse_http_date(d)?))) else {
        return Ok(());
    };
    let skew = now.abs_diff(theirs);
    if skew <= MAX_SKEW_SECS {
        return Ok(());
    }
    Err(format!(
        "the local clock is {skew} s {} the facilitator's (its Date: {date}), more than {MAX_SKEW_SECS} s: a \
         payment signed now would be dated wrongly (its authorization valid too long or not yet, its spend \
         counted on the wrong day); nothing was signed: set the clock (NTP) and send the request again",
        if now > theirs { "ahead of" } else { "behind" }
    ))
}

/// Unix seconds of an HTTP `Date` value (RFC 9110: an IMF-fixdate as servers send it, or the obsolete RFC 850
/// and asctime forms a recipient must also read), by the `httpdate` crate hyper uses.
pub fn parse_http_date(s: &str) -> Option<u64> {
    let at = httpdate::parse_http_date(s).ok()?;
    at.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// The IMF-fixdate of unix second `unix` (a test facilitator's `Date`).
#[cfg(test)]
pub(crate) fn http_date(unix: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_are_read_as_servers_write_them() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2028 23:59:59 GMT"),
            Some(1_835_481_599)
        );
        for t in [0, 784_111_777, 1_835_481_599, 1_796_000_000] {
            assert_eq!(parse_http_date(&http_date(t)), Some(t), "{}", http_date(t));
        }
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        // The obsolete forms a recipient must read too (RFC 9110 §5.6.7).
        for old in ["Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"] {
            assert_eq!(parse_http_date(old), Some(784_111_777), "{old}");
        }
        for bad in [
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Nov 1994 8:49:37 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_clock_off_by_more_than_a_minute_signs_nothing() {
        let now = 1_796_000_000;
        assert_eq!(check(None, now), Ok(()), "no Date: signed as today");
        assert_eq!(
            check(Some("yesterday"), now),
            Ok(()),
            "unreadable: as today"
        );
        assert_eq!(check(Some(&http_date(now - MAX_SKEW_SECS)), now), Ok(()));
        assert_eq!(check(Some(&http_date(now + MAX_SKEW_SECS)), now), Ok(()));
        let e = check(Some(&http_date(now - 3_600)), now).unwrap_err();
        assert!(e.contains("3600 s ahead of"), "{e}");
        let e = check(Some(&http_date(now + 61)), now).unwrap_err();
        assert!(e.contains("61 s behind"), "{e}");
    }
}
