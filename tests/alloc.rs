//! SNI lookups allocate nothing: counted with a wrapping global allocator.

// A counting allocator is unsafe by nature; it only forwards to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use portcullis::config::SniPolicy;
use portcullis::sni::{CertMapBuilder, DefaultKind, Rank, test_served};

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

#[test]
fn lookup_does_not_allocate() {
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
    let names =
        ["host7.example.com", "HOST7.Example.com", "a.zone9.example.com", "unknown.test", "", "a.b.zone1.example.com"];
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
    // host7 twice, zone9, "" (no SNI → default) and None → default; the rest rejected.
    assert_eq!(served, 5000);
}
