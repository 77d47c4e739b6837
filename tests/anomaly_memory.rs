//! The failed-authentication tracker's memory is fixed: growing from 100,000 to 1,000,000
//! distinct failing sources adds (almost) nothing to the process's resident set. Its own test
//! binary, so no other test allocates while RSS is measured.
use portcullis::anomaly::Tracker;

/// Resident set size in bytes, from /proc/self/statm (pages).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm.split_whitespace().nth(1).expect("resident").parse().expect("pages");
    pages * 4096
}

#[test]
fn a_million_distinct_failing_sources_fit_in_fixed_memory() {
    let mut t = Tracker::new(10_000, 20);
    let mut key = String::with_capacity(32);
    let mut fill = |t: &mut Tracker, range: std::ops::Range<u32>| {
        for i in range {
            use std::fmt::Write as _;
            key.clear();
            let _ = write!(key, "ip:10.{}.{}.{}", i >> 16, (i >> 8) & 0xff, i & 0xff);
            t.record(&key, "bad_signature", 0, u64::from(i));
        }
    };
    fill(&mut t, 0..100_000);
    let before = rss();
    fill(&mut t, 100_000..1_000_000);
    let after = rss();
    assert!(t.len() <= 10_000, "{}", t.len());
    let grown = after.saturating_sub(before);
    assert!(grown < 5 * 1024 * 1024, "RSS grew {grown} bytes");
}
