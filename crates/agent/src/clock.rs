//! The local clock, checked against the facilitator's before a payment is signed.
//!
//! A payment's authorization is valid until the local `now` plus the offer's timeout, and its spend is counted
//! on the local `now`'s day: a clock running ahead would sign authorizations that stay valid long after they
//! should, dated on a day whose cap is still free. So the 402 answer's `Date` header (RFC 9110 IMF-fixdate) is
//! compared with the local clock, and a difference over [`MAX_SKEW_SECS`] signs nothing. An answer without a
//! `Date` (or with one in another format) is signed as today: a device without the facilitator's word keeps
//! its own.

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

/// Unix seconds of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the one format an HTTP server sends.
pub fn parse_http_date(s: &str) -> Option<u64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [weekday, day, month, year, time, "GMT"] = parts[..] else {
        return None;
    };
    if !weekday.ends_with(',') || day.len() != 2 || year.len() != 4 {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? + 1;
    let (day, year): (u64, u64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<u64> = time
        .split(':')
        .map(|n| (n.len() == 2).then(|| n.parse().ok()).flatten())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms[..] else {
        return None;
    };
    if !(1..=31).contains(&day) || year < 1970 || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year, u64::try_from(month).ok()?, day)?;
    Some(days * 86_400 + h * 3_600 + m * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date from 1970 on (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let y = if month <= 2 { year - 1 } else { year };
    let (era, yoe) = (y / 400, y % 400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

/// Tests: the IMF-fixdate of `unix` seconds.
#[cfg(test)]
pub(crate) fn http_date(unix: u64) -> String {
    // H. Hinnant's `civil_from_days`.
    let z = unix / 86_400 + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    let secs = unix % 86_400;
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[usize::try_from(unix / 86_400 % 7).unwrap_or(0)],
        MONTHS[usize::try_from(month - 1).unwrap_or(0)],
        secs / 3_600,
        secs / 60 % 60,
        secs % 60
    )
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
        for bad in [
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
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
