//! SNI and route lookups allocate nothing: counted with a wrapping global allocator.

// A counting allocator is unsafe by nature; it only forwards to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use portcullis::config::SniPolicy;
use portcullis::sni::{CertMapBuilder, DefaultKind, Rank};
use portcullis::testing::served as test_served;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One test only: the counter is global, and the harness allocates when it reports a
/// finished test, which would land in another test's count.
#[test]
fn lookups_do_not_allocate() {
    certificate_lookup();
    route_lookup();
}

fn certificate_lookup() {
    let base = test_served("base");
    let mut b = CertMapBuilder::new(SniPolicy::Default, SniPolicy::Reject);
    for i in 0..1000 {
        b.add(
            base.alias(&format!("c{i}")),
            &[format!("host{i}.example.com"), format!("*.zone{i}.example.com")],
            Rank::default(),
        );
    }
    let map = b.build(base.alias("default"), DefaultKind::Factory);
    let names = [
        "host7.example.com",
        "HOST7.Example.com",
        "host7.example.com.",
        "a.zone9.example.com",
        "unknown.test",
        "",
        "a.b.zone1.example.com",
    ];
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let mut served = 0;
    for _ in 0..1000 {
        for n in names {
            served += usize::from(map.lookup(Some(n)).served().is_some());
        }
        served += usize::from(map.lookup(None).served().is_some());
    }
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(after - before, 0, "lookups allocated");
    // host7 three times, zone9, "" (no SNI → default) and None → default; the rest rejected.
    assert_eq!(served, 6000);
}

fn route_lookup() {
    use portcullis::config::HostPattern;
    use portcullis::snapshot::RouteTable;
    let routes: Vec<Vec<HostPattern>> = (0..1000)
        .map(|i| {
            vec![
                HostPattern::Exact(format!("host{i}.example.com")),
                HostPattern::Wildcard(format!("zone{i}.example.com")),
            ]
        })
        .chain(std::iter::once(vec![HostPattern::Any]))
        .collect();
    let (table, shadowed) = RouteTable::new(routes.iter().map(Vec::as_slice));
    assert!(shadowed.is_empty());
    let names =
        ["host7.example.com", "HOST7.Example.com.", "a.zone9.example.com", "unknown.test", "a.b.zone1.example.com"];
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let mut hits = [0usize; 3];
    for _ in 0..1000 {
        for n in names {
            match table.lookup(n) {
                Some(7) => hits[0] += 1,
                Some(9) => hits[1] += 1,
                Some(1000) => hits[2] += 1,
                other => panic!("{n}: {other:?}"),
            }
        }
    }
    assert_eq!(ALLOCATIONS.load(Ordering::Relaxed) - before, 0, "route lookups allocated");
    // host7 twice, zone9 once, and the catch-all for the two others.
    assert_eq!(hits, [2000, 1000, 2000]);
}
