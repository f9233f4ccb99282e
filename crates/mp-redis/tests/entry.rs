//! The `--mp-worker URL` entry of a real program (the `scale_out` example, which `cargo test`
//! builds): its workers serve its own client; and a pool of *another* build (this test
//! binary) is refused by them, naming both build ids.

mod common;
use common::{die_with_parent, prefix, skip, watchdog, Purge, Server};

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use mp_redis::{Cluster, Error};

/// `target/<profile>/examples/scale_out`, beside this test binary's `deps/`.
fn example() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("examples").join("scale_out");
    p.is_file().then_some(p)
}

/// A worker process of the example, SIGKILLed and reaped on drop.
struct Workers(Child);

impl Drop for Workers {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own unreaped child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn triple(x: u64) -> u64 {
    3 * x
}

#[test]
fn mp_worker_flag_serves_the_same_binary_and_refuses_another_build() {
    let Some(s) = Server::any() else { return };
    let Some(bin) = example() else {
        skip("the scale_out example is not built (cargo test builds it)");
        return;
    };
    watchdog(120, move || {
        let pre = prefix("entry");
        let _purge = Purge(s.url.clone(), pre.clone());
        let _workers = Workers(
            die_with_parent(&mut Command::new(&bin))
                .args([
                    "--mp-worker",
                    &s.url,
                    "--mp-workers",
                    "2",
                    "--mp-prefix",
                    &pre,
                ])
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let out = Command::new(&bin).args([&s.url, &pre]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // 0² + 1² + ... + 999²
        assert!(
            text.contains("sum of squares below 1000: 332833500"),
            "{text}"
        );
        assert!(text.contains("workers: 2"), "{text}");
        // This test binary is another build than the example's workers.
        let c = Cluster::builder(&s.url).prefix(&pre).connect().unwrap();
        match c.pool().unwrap().apply(triple, 1) {
            Err(e @ Error::WrongBuild { .. }) => {
                let mine: String = mp_process::symbol::image_id()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                let text = e.to_string();
                assert!(text.contains(&mine), "{text}");
                let Error::WrongBuild { worker_build, .. } = &e else {
                    unreachable!()
                };
                assert_ne!(worker_build, &mine);
                assert!(!worker_build.is_empty());
            }
            other => panic!("{other:?}"),
        }
    });
}
