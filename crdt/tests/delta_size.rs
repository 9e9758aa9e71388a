//! Delta size grows with the number of changes, not with the state: a 1-change
//! delta against a 100,000-entry state encodes in under 1 KiB.

use std::time::Duration;

use shoal_crdt::{NTP64, Replica, ServiceSpec, codec};

#[test]
fn one_change_in_a_large_state_encodes_under_one_kib() {
    const ENTRIES: u64 = 100_000;
    let mut a = Replica::new("node-a".parse().unwrap(), Duration::from_secs(1));
    let mut b = Replica::new("node-b".parse().unwrap(), Duration::from_secs(1));
    for index in 0..ENTRIES {
        let now = NTP64::from(Duration::from_micros(index));
        a.put_service(
            now,
            format!("service-{index}").parse().unwrap(),
            ServiceSpec::new("/images/app"),
        )
        .unwrap();
    }
    let now = NTP64::from(Duration::from_secs(1));
    let full = a.delta_for(&b.summary());
    assert_eq!(full.entry_count() as u64, ENTRIES);
    b.apply_delta(now, a.node(), &full).unwrap();
    assert_eq!(b.digest(), a.digest());

    let mut spec = ServiceSpec::new("/images/app");
    spec.replicas = 3;
    let eager = a
        .put_service(now, "service-7".parse().unwrap(), spec)
        .unwrap();
    let pulled = a.delta_for(&b.summary());
    assert_eq!(pulled, eager, "the pulled delta is exactly the one change");
    let bytes = codec::encode_delta(&pulled);
    let full_bytes = codec::encode_delta(&full).len();
    eprintln!(
        "1-change delta: {} bytes; full state: {full_bytes} bytes",
        bytes.len()
    );
    assert!(bytes.len() < 1024, "{} bytes", bytes.len());
    b.apply_delta(now, a.node(), &codec::decode_delta(&bytes, 1024).unwrap())
        .unwrap();
    assert_eq!(b.digest(), a.digest());
}
