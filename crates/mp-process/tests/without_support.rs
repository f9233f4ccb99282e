//! A test binary without `test_support!()`: spawn and forkserver are refused with a clear
//! error instead of re-running the binary's tests; fork still works.

use mp_process::{Error, Process, StartMethod};

fn one(_: ()) -> u8 {
    1
}

#[test]
fn spawn_needs_init_or_test_support() {
    for m in [StartMethod::Spawn, StartMethod::ForkServer] {
        match Process::new(one, ()).start_method(m).start() {
            Err(e @ Error::NotInitialized { .. }) => {
                assert!(e.to_string().contains("init()"), "{e}")
            }
            other => panic!("{m}: {other:?}"),
        }
    }
    let mut c = Process::new(one, ())
        .start_method(StartMethod::Fork)
        .start()
        .unwrap();
    assert_eq!(c.join().unwrap(), 1);
}
