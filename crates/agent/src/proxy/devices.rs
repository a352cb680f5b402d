//! Devices: the id a device is known by (a header's value or its source address, which names its state directory,
//! so never a path), and the lock that serves one request of a device at a time (a payment and its retry must not
//! race), kept only while the device has a request in progress.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Mutex;

/// A device id as given: 1–64 letters, digits and `._:-` (a source address qualifies).
pub fn device_id(raw: &str) -> Option<String> {
    ((1..=64).contains(&raw.len())
        && !raw.bytes().all(|b| b == b'.')
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b)))
    .then(|| raw.to_owned())
}

/// The most devices with a request in progress at once (a backstop: the connection cap keeps it far lower).
pub(super) const MAX_BUSY_DEVICES: usize = 4_096;

/// The lock serialising `device`'s requests, from `devices`, which holds only devices with a request in progress
/// or waiting: an entry nobody else holds is dropped (taking a fresh one later is the same: nobody holds the
/// old). Before, every device id ever seen (any header value, with `--device-header`) stayed in the map for
/// good. `None`: [`MAX_BUSY_DEVICES`] devices are busy.
pub(super) fn device_lock(
    devices: &mut HashMap<String, Arc<Mutex<()>>>,
    device: &str,
) -> Option<Arc<Mutex<()>>> {
    if let Some(lock) = devices.get(device) {
        return Some(lock.clone());
    }
    devices.retain(|_, lock| Arc::strong_count(lock) > 1);
    if devices.len() >= MAX_BUSY_DEVICES {
        return None;
    }
    Some(devices.entry(device.to_owned()).or_default().clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    /// Fix: the proxy keeps a lock only for devices with a request in progress: ever new device ids leave
    /// nothing behind. Before, every id ever seen stayed in the map.
    #[test]
    fn only_busy_devices_are_tracked() {
        let mut devices = HashMap::new();
        for n in 0..100 {
            let lock = device_lock(&mut devices, &format!("d{n}")).unwrap();
            drop(lock);
        }
        assert!(devices.len() <= 1, "{}", devices.len());
        let busy = device_lock(&mut devices, "busy").unwrap();
        let again = device_lock(&mut devices, "busy").unwrap();
        assert!(Arc::ptr_eq(&busy, &again), "one lock per device while busy");
        for n in 0..10 {
            drop(device_lock(&mut devices, &format!("e{n}")));
        }
        assert!(devices.contains_key("busy"));
        assert!(devices.len() <= 2, "{}", devices.len());
    }

    #[test]
    fn device_ids() {
        assert_eq!(device_id("pump-17"), Some("pump-17".into()));
        assert_eq!(device_id("127.0.0.1"), Some("127.0.0.1".into()));
        assert_eq!(
            device_id("../etc"),
            None,
            "no path separators: it names a directory"
        );
        assert_eq!(device_id(""), None);
        assert_eq!(device_id(".."), None);
        assert_eq!(device_id(&"a".repeat(65)), None);
    }
}
