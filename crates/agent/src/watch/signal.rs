//! What the radio says, read from a line of text: a plain level (`-97`, `-97 dBm`) or a modem's AT answer
//! (3GPP TS 27.007: `+CSQ`, `+CESQ`, `+CREG`/`+CGREG`/`+CEREG`, `+COPS`), and the tracker that turns a stream
//! of readings into a reason to move: the level below a threshold for `after` readings in a row, or the
//! network refusing the attach (registration denied), with the network the modem sees if it said so.
//!
//! Pure: the watch loop feeds it lines from a file, stdin or a command; nothing here reads or waits.

use esim402_core::esim::plmn::Plmn;

/// One reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// A signal level in dBm.
    Dbm(i32),
    /// The modem does not know the level (`+CSQ: 99,99`).
    Unknown,
    /// Registered (home or roaming).
    Registered,
    /// Registration denied: the network refused the attach.
    Denied,
    /// Not registered, searching or not (no verdict yet).
    Searching,
    /// The network the modem sees or is on (`+COPS` numeric).
    Network(Plmn),
    /// Nothing to read (`OK`, an echo, a blank line).
    Nothing,
}

/// Why a line could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unreadable signal line {0:?} (want dBm like -97, or +CSQ/+CESQ/+CREG/+CGREG/+CEREG/+COPS)"
)]
pub struct Unreadable(pub String);

fn ints(fields: &str) -> Vec<Option<i64>> {
    fields
        .split(',')
        .map(|f| f.trim().trim_matches('"').parse().ok())
        .collect()
}

/// A `+COPS` numeric operator (`"26201"`, `"310260"`) as a PLMN. Five digits are MCC + 2-digit MNC; six are
/// MCC + 3-digit MNC (the modem prints the MNC with its assigned length).
fn numeric_plmn(s: &str) -> Option<Plmn> {
    let s = s.trim().trim_matches('"');
    if !(5..=6).contains(&s.len()) || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Plmn::parse(&format!("{}-{}", &s[..3], &s[3..])).ok()
}

/// Read one line.
pub fn parse_line(line: &str) -> Result<Reading, Unreadable> {
    let t = line.trim();
    let bad = || Unreadable(t.chars().take(80).collect());
    if t.is_empty() || t == "OK" || t.starts_with("AT") || t.starts_with("at") {
        return Ok(Reading::Nothing);
    }
    if let Some(rest) = t.strip_prefix("+CSQ:") {
        // rssi 0..=31 → -113 + 2·rssi dBm; 99 unknown.
        return match ints(rest).first().copied().flatten() {
            Some(99) => Ok(Reading::Unknown),
            Some(r @ 0..=31) => Ok(Reading::Dbm(-113 + 2 * r as i32)),
            _ => Err(bad()),
        };
    }
    if let Some(rest) = t.strip_prefix("+CESQ:") {
        // rxlev,ber,rscp,ecno,rsrq,rsrp: the best-known of RSRP (LTE), RSCP (UMTS), RXLEV (GSM).
        let f = ints(rest);
        if f.len() != 6 {
            return Err(bad());
        }
        let level = match (f[5], f[2], f[0]) {
            (Some(rsrp @ 0..=97), _, _) => Some(-141 + rsrp as i32),
            (_, Some(rscp @ 0..=96), _) => Some(-121 + rscp as i32),
            (_, _, Some(rxlev @ 0..=63)) => Some(-111 + rxlev as i32),
            _ => None,
        };
        return Ok(level.map_or(Reading::Unknown, Reading::Dbm));
    }
    for prefix in ["+CREG:", "+CGREG:", "+CEREG:", "+C5GREG:"] {
        if let Some(rest) = t.strip_prefix(prefix) {
            // The read answer is `<n>,<stat>[,…]`, the unsolicited one `<stat>[,"<lac>",…]`: a second field
            // that is a bare number means the first is <n>.
            let fields: Vec<&str> = rest.split(',').map(str::trim).collect();
            let stat_field = match fields.get(1) {
                Some(f) if !f.starts_with('"') && f.parse::<i64>().is_ok() => fields[1],
                _ => fields[0],
            };
            return match stat_field.parse::<i64>() {
                Ok(1 | 5 | 6 | 7 | 9 | 10) => Ok(Reading::Registered),
                Ok(3) => Ok(Reading::Denied),
                Ok(0 | 2 | 4 | 8) => Ok(Reading::Searching),
                _ => Err(bad()),
            };
        }
    }
    if let Some(rest) = t.strip_prefix("+COPS:") {
        // `<mode>[,<format>,<oper>[,<AcT>]]`; format 2 is numeric.
        let fields: Vec<&str> = rest.split(',').map(str::trim).collect();
        return match (fields.get(1), fields.get(2)) {
            (Some(&"2"), Some(oper)) => numeric_plmn(oper).map(Reading::Network).ok_or_else(bad),
            _ => Ok(Reading::Nothing),
        };
    }
    let level = t
        .strip_suffix("dBm")
        .or_else(|| t.strip_suffix("dbm"))
        .unwrap_or(t)
        .trim();
    level.parse::<i32>().map(Reading::Dbm).map_err(|_| bad())
}

/// When to move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// A level below this (dBm) is weak.
    pub below_dbm: i32,
    /// This many weak readings in a row trigger a move (≥ 1).
    pub after: u32,
}

/// A reason to move the SIM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// The level stayed below the threshold.
    Weak {
        /// The last level.
        dbm: i32,
    },
    /// The network refused the attach; `seen` is the network the modem last reported, if any.
    Denied {
        /// The visible network.
        seen: Option<Plmn>,
    },
}

/// Turns readings into triggers (one per condition: a streak is reset once it fired).
#[derive(Debug, Clone)]
pub struct Tracker {
    thresholds: Thresholds,
    weak_streak: u32,
    seen: Option<Plmn>,
}

impl Tracker {
    /// A tracker with nothing seen yet.
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            weak_streak: 0,
            seen: None,
        }
    }

    /// Feed one reading; a trigger if this one completes a condition.
    pub fn observe(&mut self, reading: Reading) -> Option<Trigger> {
        match reading {
            Reading::Dbm(dbm) if dbm < self.thresholds.below_dbm => {
                self.weak_streak += 1;
                if self.weak_streak >= self.thresholds.after.max(1) {
                    self.weak_streak = 0;
                    return Some(Trigger::Weak { dbm });
                }
            }
            Reading::Dbm(_) | Reading::Registered => self.weak_streak = 0,
            Reading::Denied => {
                self.weak_streak = 0;
                return Some(Trigger::Denied {
                    seen: self.seen.clone(),
                });
            }
            Reading::Network(p) => self.seen = Some(p),
            Reading::Unknown | Reading::Searching | Reading::Nothing => {}
        }
        None
    }

    /// Forget streaks (after a move: the new SIM starts afresh).
    pub fn reset(&mut self) {
        self.weak_streak = 0;
        self.seen = None;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn plmn(s: &str) -> Plmn {
        Plmn::parse(s).unwrap()
    }

    #[test]
    fn levels_and_at_answers() {
        assert_eq!(parse_line("-97"), Ok(Reading::Dbm(-97)));
        assert_eq!(parse_line(" -110 dBm "), Ok(Reading::Dbm(-110)));
        assert_eq!(parse_line("+CSQ: 31,99"), Ok(Reading::Dbm(-51)));
        assert_eq!(parse_line("+CSQ: 3,0"), Ok(Reading::Dbm(-107)));
        assert_eq!(parse_line("+CSQ: 99,99"), Ok(Reading::Unknown));
        assert_eq!(
            parse_line("+CESQ: 99,99,255,255,20,30"),
            Ok(Reading::Dbm(-111)),
            "RSRP 30 → -111 dBm"
        );
        assert_eq!(
            parse_line("+CESQ: 40,0,255,255,255,255"),
            Ok(Reading::Dbm(-71)),
            "GSM only"
        );
        assert_eq!(
            parse_line("+CESQ: 99,99,255,255,255,255"),
            Ok(Reading::Unknown)
        );
        assert_eq!(parse_line("OK"), Ok(Reading::Nothing));
        assert_eq!(parse_line("AT+CSQ"), Ok(Reading::Nothing));
        assert_eq!(parse_line(""), Ok(Reading::Nothing));
        assert!(parse_line("+CSQ: 45,0").is_err());
        assert!(parse_line("+CESQ: 1,2").is_err());
        assert!(parse_line("loud").is_err());
    }

    #[test]
    fn registration_read_and_unsolicited_forms() {
        assert_eq!(parse_line("+CEREG: 0,3"), Ok(Reading::Denied));
        assert_eq!(parse_line("+CREG: 3"), Ok(Reading::Denied));
        assert_eq!(
            parse_line("+CEREG: 3,\"00C3\",\"0001A2B3\",7"),
            Ok(Reading::Denied),
            "unsolicited with location"
        );
        assert_eq!(
            parse_line("+CGREG: 2,5,\"1A\",\"2B\""),
            Ok(Reading::Registered)
        );
        assert_eq!(parse_line("+CEREG: 1"), Ok(Reading::Registered));
        assert_eq!(parse_line("+CREG: 0,2"), Ok(Reading::Searching));
        assert!(parse_line("+CREG: x").is_err());
    }

    #[test]
    fn operators_keep_their_mnc_length() {
        assert_eq!(
            parse_line("+COPS: 0,2,\"26201\",7"),
            Ok(Reading::Network(plmn("262-01")))
        );
        assert_eq!(
            parse_line("+COPS: 0,2,\"310260\",7"),
            Ok(Reading::Network(plmn("310-260")))
        );
        assert_eq!(
            parse_line("+COPS: 0,0,\"T-Mobile\",7"),
            Ok(Reading::Nothing),
            "alphanumeric format: nothing we can place"
        );
        assert_eq!(parse_line("+COPS: 0"), Ok(Reading::Nothing));
        assert!(parse_line("+COPS: 0,2,\"2620\"").is_err());
    }

    #[test]
    fn a_weak_streak_triggers_once_and_a_good_reading_resets_it() {
        let mut t = Tracker::new(Thresholds {
            below_dbm: -105,
            after: 3,
        });
        assert_eq!(t.observe(Reading::Dbm(-110)), None);
        assert_eq!(t.observe(Reading::Dbm(-110)), None);
        assert_eq!(t.observe(Reading::Dbm(-90)), None, "reset");
        assert_eq!(t.observe(Reading::Dbm(-110)), None);
        assert_eq!(
            t.observe(Reading::Unknown),
            None,
            "unknown keeps the streak"
        );
        assert_eq!(t.observe(Reading::Dbm(-106)), None);
        assert_eq!(
            t.observe(Reading::Dbm(-111)),
            Some(Trigger::Weak { dbm: -111 })
        );
        assert_eq!(
            t.observe(Reading::Dbm(-111)),
            None,
            "fired once, counting anew"
        );
        assert_eq!(
            t.observe(Reading::Dbm(-105)),
            None,
            "at the threshold is not below it"
        );
    }

    #[test]
    fn a_denied_attach_carries_the_network_seen() {
        let mut t = Tracker::new(Thresholds {
            below_dbm: -105,
            after: 1,
        });
        assert_eq!(
            t.observe(Reading::Denied),
            Some(Trigger::Denied { seen: None })
        );
        assert_eq!(t.observe(Reading::Network(plmn("262-01"))), None);
        assert_eq!(
            t.observe(Reading::Denied),
            Some(Trigger::Denied {
                seen: Some(plmn("262-01"))
            })
        );
        t.reset();
        assert_eq!(
            t.observe(Reading::Denied),
            Some(Trigger::Denied { seen: None })
        );
    }
}
