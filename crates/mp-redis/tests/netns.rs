//! The traffic really crosses a network: the server in one network namespace, the workers and
//! the client (the `scale_out` example) in another, joined by a veth pair (`ip netns`, as
//! root). Skipped, with a message, where namespaces cannot be made (not root, no `ip`).

mod common;
use common::{die_with_parent, prefix, redis_binary, skip, watchdog};

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVER_IP: &str = "10.254.0.1";
const WORKER_IP: &str = "10.254.0.2";

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Two namespaces joined by veth; on drop, its processes are SIGKILLed by pid and reaped,
/// then the namespaces (and with them the veth pair) deleted.
struct Net {
    server_ns: String,
    worker_ns: String,
    veth: String,
    children: Vec<Child>,
}

impl Net {
    fn make() -> Option<Net> {
        let id = std::process::id();
        let net = Net {
            server_ns: format!("mpr{id}s"),
            worker_ns: format!("mpr{id}w"),
            veth: format!("mpr{id}a"),
            children: Vec::new(),
        };
        let peer = format!("mpr{id}b");
        let (s, w, a) = (&net.server_ns, &net.worker_ns, &net.veth);
        let ok = ip(&["netns", "add", s])
            && ip(&["netns", "add", w])
            && ip(&[
                "link", "add", a, "netns", s, "type", "veth", "peer", "name", &peer, "netns", w,
            ])
            && ip(&["-n", s, "addr", "add", &format!("{SERVER_IP}/30"), "dev", a])
            && ip(&[
                "-n",
                w,
                "addr",
                "add",
                &format!("{WORKER_IP}/30"),
                "dev",
                &peer,
            ])
            && ip(&["-n", s, "link", "set", a, "up"])
            && ip(&["-n", w, "link", "set", &peer, "up"])
            && ip(&["-n", s, "link", "set", "lo", "up"])
            && ip(&["-n", w, "link", "set", "lo", "up"]);
        ok.then_some(net)
    }

    fn spawn(&mut self, ns: &str, program: &[&str]) {
        let child = die_with_parent(&mut Command::new("ip"))
            .args(["netns", "exec", ns])
            .args(program)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("ip netns exec");
        self.children.push(child);
    }

    fn run(&self, ns: &str, program: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(program)
            .stdin(Stdio::null())
            .output()
            .expect("ip netns exec")
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in &mut self.children {
            // SAFETY: kill(2) on our own unreaped child's pid (`ip netns exec` execs the
            // program, so this is the program itself).
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
        ip(&["netns", "del", &self.server_ns]);
        ip(&["netns", "del", &self.worker_ns]);
    }
}

fn example() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("examples").join("scale_out");
    p.is_file().then_some(p)
}

#[test]
fn server_and_workers_in_separate_network_namespaces() {
    let (Some(redis), Some(bin)) = (redis_binary(), example()) else {
        skip("needs redis-server on PATH and the scale_out example (cargo test builds it)");
        return;
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let Some(mut net) = Net::make() else {
        eprintln!("skipped: could not make network namespaces and a veth pair here");
        return;
    };
    watchdog(120, move || {
        let (sns, wns) = (net.server_ns.clone(), net.worker_ns.clone());
        let redis = redis.display().to_string();
        net.spawn(
            &sns,
            &[
                &redis,
                "--bind",
                SERVER_IP,
                "--port",
                "6379",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--loglevel",
                "warning",
            ],
        );
        let url = format!("redis://{SERVER_IP}:6379/0");
        // Reachable from the workers' namespace (and only through the veth pair).
        let probe = format!("exec 3<>/dev/tcp/{SERVER_IP}/6379");
        let t0 = Instant::now();
        while !net.run(&wns, &["bash", "-c", &probe]).status.success() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "the server never answered"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let pre = prefix("netns");
        let bin = bin.display().to_string();
        net.spawn(
            &wns,
            &[
                &bin,
                "--mp-worker",
                &url,
                "--mp-workers",
                "2",
                "--mp-prefix",
                &pre,
            ],
        );
        let out = net.run(&wns, &[&bin, &url, &pre]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("sum of squares below 1000: 332833500"),
            "{text}"
        );
        assert!(text.contains("workers: 2"), "{text}");
        // The bytes went through the server's end of the veth pair.
        let stats = format!("/sys/class/net/{}/statistics/rx_bytes", net.veth);
        let rx = net.run(&sns, &["cat", &stats]);
        let rx: u64 = String::from_utf8_lossy(&rx.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        assert!(rx > 10_000, "only {rx} bytes reached the server's veth");
    });
}
