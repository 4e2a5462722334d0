//! SNI lookup with 1, 10,000 and 100,000 certificates: exact hits, wildcard hits and
//! misses (the fallback). Goal: ≤ 100 ns per lookup, no allocation (the allocation part
//! is asserted by tests/alloc.rs).

use criterion::{BenchmarkId, Criterion, black_box, criterion_group, criterion_main};
use portcullis::config::SniPolicy;
use portcullis::sni::{CertMap, CertMapBuilder, DefaultKind, Rank};
use portcullis::testing::served as test_served;

fn map(n: usize) -> CertMap {
    let base = test_served("base");
    let mut b = CertMapBuilder::new(SniPolicy::Default, SniPolicy::Default);
    for i in 0..n {
        // Half exact names, half wildcards, as a large multi-tenant store would have.
        let name = if i % 2 == 0 {
            format!("host{i}.tenant{}.example.com", i % 97)
        } else {
            format!("*.tenant{i}.example.com")
        };
        b.add(base.alias(&format!("c{i}")), &[name], Rank::default());
    }
    b.build(base.alias("default"), DefaultKind::Factory)
}

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("sni_lookup");
    for n in [1usize, 10_000, 100_000] {
        let m = map(n);
        let exact = "host0.tenant0.example.com".to_string();
        let wild = format!("www.tenant{}.example.com", if n > 1 { n - 1 } else { 1 });
        group.bench_with_input(BenchmarkId::new("exact", n), &exact, |b, name| {
            b.iter(|| black_box(m.lookup(Some(black_box(name)))).served().is_some())
        });
        group.bench_with_input(BenchmarkId::new("wildcard", n), &wild, |b, name| {
            b.iter(|| black_box(m.lookup(Some(black_box(name)))).served().is_some())
        });
        group.bench_with_input(BenchmarkId::new("miss", n), &"unknown.example.org", |b, name| {
            b.iter(|| black_box(m.lookup(Some(black_box(name)))).served().is_some())
        });
        group.bench_with_input(BenchmarkId::new("mixed_case", n), &"HOST0.Tenant0.Example.COM", |b, name| {
            b.iter(|| black_box(m.lookup(Some(black_box(name)))).served().is_some())
        });
    }
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
