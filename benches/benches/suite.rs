//! The criterion bench of mp-benches: every workload × implementation × placement of
//! [`mp_benches::workloads`], with ids `<workload>/<implementation>/<placement>`. Run it
//! through `cargo xtask bench`, which adds CPython and the report.

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use mp_benches::{workloads, PerIter};

fn suite(c: &mut Criterion) {
    for w in workloads() {
        if w.impls.is_empty() {
            continue;
        }
        let mut group = c.benchmark_group(w.group);
        match w.per_iter {
            PerIter::Time => {}
            PerIter::Elements(n) => {
                group.throughput(Throughput::Elements(n));
            }
            PerIter::Bytes(n) => {
                group.throughput(Throughput::Bytes(n));
            }
        }
        if w.heavy {
            group.sample_size(10);
            group.sampling_mode(SamplingMode::Flat);
        }
        for &(name, measure) in &w.impls {
            for &placement in w.placements {
                group.bench_with_input(
                    BenchmarkId::new(name, placement.name()),
                    &placement,
                    |b, &p| b.iter_custom(|iters| measure(iters, p)),
                );
            }
        }
        group.finish();
    }
}

// `criterion_group!` generates an undocumented `pub fn benches`.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::suite);
}

fn main() {
    // Children started with the spawn and forkserver methods re-run this binary: let them play
    // their part before criterion parses the command line.
    mp_process::init();
    // `suite --mp-worker URL ...`: a worker of the redis workload (never returns).
    mp_redis::init();
    group::benches();
    Criterion::default().configure_from_args().final_summary();
}
