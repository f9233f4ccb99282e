//! Smoke test: map, apply and imap under fork and spawn.

mp_process::test_support!();

use mp_pool::Pool;
use mp_process::StartMethod;

fn square(x: u64) -> u64 {
    x * x
}

#[test]
fn smoke() {
    for m in [StartMethod::Fork, StartMethod::Spawn] {
        let pool = Pool::builder()
            .processes(2)
            .start_method(m)
            .build()
            .unwrap();
        assert_eq!(
            pool.map(square, 0..10).unwrap(),
            (0..10).map(|x| x * x).collect::<Vec<_>>()
        );
        assert_eq!(pool.apply(square, 7).unwrap(), 49);
        let v: Vec<u64> = pool
            .imap(square, 0..100)
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(v.len(), 100);
        pool.close();
        pool.join().unwrap();
    }
}
