//! `mp-faults`: the fault campaign (run it with `cargo xtask faults`).
//!
//! Each scenario is a real multi-process program that keeps one role of a primitive busy in a
//! loop, hits it with a fault at a random moment (`SIGKILL`, or `SIGSTOP` for a random time and
//! then `SIGCONT`), and checks what the others see: nobody hangs, every acknowledged message is
//! received exactly once and intact, and a call blocked on a dead peer returns a typed error
//! within a second. Rounds are seeded: a failure prints the command line that replays it.
//!
//! ```text
//! mp-faults [--rounds N] [--seed S] [--filter NAME] [--round R] [--json PATH] [--list]
//! ```

mod common;
mod exhaust;
mod garbage;
mod harness;
mod more;
mod others;
mod queue;
mod roles;
mod sync;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use harness::{Fault, Rng, Round, Tally, Watchdog};

/// A scenario: a role, the fault it takes, and the program that checks the others.
struct Scenario {
    name: &'static str,
    fault: Fault,
    run: fn(&mut Round<'_>, Fault) -> Result<(), String>,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "lock_holder",
        fault: Fault::Kill,
        run: sync::lock_holder,
    },
    Scenario {
        name: "lock_holder_frozen",
        fault: Fault::Stop,
        run: sync::lock_holder,
    },
    Scenario {
        name: "rlock_holder",
        fault: Fault::Kill,
        run: sync::rlock_holder,
    },
    Scenario {
        name: "semaphore_waiter",
        fault: Fault::Kill,
        run: sync::semaphore_waiter,
    },
    Scenario {
        name: "semaphore_waiter_frozen",
        fault: Fault::Stop,
        run: sync::semaphore_waiter,
    },
    Scenario {
        name: "event_waiter",
        fault: Fault::Kill,
        run: sync::event_waiter,
    },
    Scenario {
        name: "event_waiter_frozen",
        fault: Fault::Stop,
        run: sync::event_waiter,
    },
    Scenario {
        name: "condition_notifier",
        fault: Fault::Kill,
        run: sync::condition_notifier,
    },
    Scenario {
        name: "condition_notifier_frozen",
        fault: Fault::Stop,
        run: sync::condition_notifier,
    },
    Scenario {
        name: "condition_waiter",
        fault: Fault::Kill,
        run: roles::condition_waiter,
    },
    Scenario {
        name: "event_setter",
        fault: Fault::Kill,
        run: roles::event_setter,
    },
    Scenario {
        name: "barrier_party",
        fault: Fault::Kill,
        run: sync::barrier_party,
    },
    Scenario {
        name: "queue_producer",
        fault: Fault::Kill,
        run: queue::queue_producer,
    },
    Scenario {
        name: "queue_producer_many",
        fault: Fault::Kill,
        run: queue::queue_producer_many,
    },
    Scenario {
        name: "queue_producer_big",
        fault: Fault::Kill,
        run: queue::queue_producer_big,
    },
    Scenario {
        name: "queue_consumer",
        fault: Fault::Kill,
        run: queue::queue_consumer,
    },
    Scenario {
        name: "queue_consumer_many",
        fault: Fault::Kill,
        run: queue::queue_consumer_many,
    },
    Scenario {
        name: "queue_get_ref_holder",
        fault: Fault::Kill,
        run: queue::queue_get_ref_holder,
    },
    Scenario {
        name: "pipe_sender",
        fault: Fault::Kill,
        run: others::pipe_sender,
    },
    Scenario {
        name: "pipe_receiver",
        fault: Fault::Kill,
        run: roles::pipe_receiver,
    },
    Scenario {
        name: "pool_worker",
        fault: Fault::Kill,
        run: others::pool_worker,
    },
    Scenario {
        name: "pool_worker_result",
        fault: Fault::Kill,
        run: roles::pool_worker_result,
    },
    Scenario {
        name: "pool_parent",
        fault: Fault::Kill,
        run: others::pool_parent,
    },
    Scenario {
        name: "manager_server",
        fault: Fault::Kill,
        run: others::manager_server,
    },
    Scenario {
        name: "forkserver",
        fault: Fault::Kill,
        run: others::forkserver,
    },
    Scenario {
        name: "joinable_task_done",
        fault: Fault::Kill,
        run: more::joinable_task_done,
    },
    Scenario {
        name: "manager_client",
        fault: Fault::Kill,
        run: more::manager_client,
    },
    Scenario {
        name: "listener_handshake",
        fault: Fault::Kill,
        run: more::listener_handshake,
    },
    Scenario {
        name: "spawn_child_early",
        fault: Fault::Kill,
        run: more::spawn_child_early,
    },
    Scenario {
        name: "fd_exhaustion",
        fault: Fault::Exhaustion("RLIMIT_NOFILE"),
        run: more::fd_exhaustion,
    },
    Scenario {
        name: "tmpfs_exhaustion",
        fault: Fault::Exhaustion("small tmpfs"),
        run: exhaust::tmpfs_exhaustion,
    },
    Scenario {
        name: "nproc_exhaustion",
        fault: Fault::Exhaustion("RLIMIT_NPROC"),
        run: exhaust::nproc_exhaustion,
    },
    Scenario {
        name: "queue_garbage",
        fault: Fault::Garbage,
        run: garbage::queue_garbage,
    },
    Scenario {
        name: "pipe_garbage",
        fault: Fault::Garbage,
        run: garbage::pipe_garbage,
    },
    Scenario {
        name: "lock_garbage",
        fault: Fault::Garbage,
        run: garbage::lock_garbage,
    },
    Scenario {
        name: "header_garbage",
        fault: Fault::Garbage,
        run: garbage::header_garbage,
    },
];

/// The command line.
struct Options {
    rounds: u64,
    seed: u64,
    filter: Option<String>,
    round: Option<u64>,
    json: Option<String>,
    list: bool,
}

fn parse() -> Result<Options, String> {
    let mut o = Options {
        rounds: 100,
        seed: 1,
        filter: None,
        round: None,
        json: None,
        list: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--rounds" => {
                o.rounds = value("--rounds")?
                    .parse()
                    .map_err(|e| format!("--rounds: {e}"))?
            }
            "--seed" => {
                o.seed = value("--seed")?
                    .parse()
                    .map_err(|e| format!("--seed: {e}"))?
            }
            "--round" => {
                o.round = Some(
                    value("--round")?
                        .parse()
                        .map_err(|e| format!("--round: {e}"))?,
                )
            }
            "--filter" => o.filter = Some(value("--filter")?),
            "--json" => o.json = Some(value("--json")?),
            "--list" => o.list = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

fn main() {
    // A child started by spawn or forkserver (the pool's workers, the fork server) runs here.
    mp::init();
    let opts = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mp-faults: {e}");
            std::process::exit(2);
        }
    };
    let chosen: Vec<&Scenario> = SCENARIOS
        .iter()
        .filter(|s| {
            opts.filter
                .as_ref()
                .is_none_or(|f| s.name.contains(f.as_str()))
        })
        .collect();
    if opts.list {
        for s in &chosen {
            println!("{} ({})", s.name, s.fault.name());
        }
        return;
    }
    if chosen.is_empty() {
        eprintln!("mp-faults: no scenario matches the filter (--list shows them)");
        std::process::exit(2);
    }
    let watchdog = Watchdog::start(Duration::from_secs(30));
    let mut results = Vec::new();
    let mut failed = false;
    for s in chosen {
        let started = Instant::now();
        let mut tally = Tally::default();
        let rounds: Vec<u64> = match opts.round {
            Some(r) => vec![r],
            None => (0..opts.rounds).collect(),
        };
        for n in rounds {
            let replay = format!(
                "cargo xtask faults --seed {} --filter {} --round {n}",
                opts.seed, s.name
            );
            watchdog.arm(replay.clone());
            let rng = Rng::for_round(opts.seed, s.name, n);
            let before = tally.failures.len();
            {
                let mut round = Round::new(rng, n, &mut tally);
                if let Err(e) = (s.run)(&mut round, s.fault) {
                    round.wrong(format!("setup: {e}"));
                }
            }
            tally.rounds += 1;
            for f in &tally.failures[before..] {
                eprintln!("faults: {}: {f}\n        replay: {replay}", s.name);
            }
            watchdog.disarm();
        }
        let bad = tally.hangs + tally.lost + tally.duplicated + tally.torn + tally.wrong_errors;
        failed |= bad > 0;
        eprintln!(
            "faults: {:<28} {:>5} rounds  {} in {:.1} s",
            s.name,
            tally.rounds,
            if bad == 0 {
                "ok".to_string()
            } else {
                format!("{bad} FINDINGS")
            },
            started.elapsed().as_secs_f64()
        );
        results.push((s, tally));
    }
    let table = table(&results);
    println!("{table}");
    // The findings again after the table, a few per scenario: a log cut in the middle (as CI's
    // is) still shows what went wrong.
    for (s, t) in &results {
        for f in t.failures.iter().take(3) {
            println!("finding: {}: {f}", s.name);
        }
        if t.failures.len() > 3 {
            println!("finding: {}: and {} more", s.name, t.failures.len() - 3);
        }
    }
    if let Some(path) = &opts.json {
        if let Err(e) = std::fs::write(path, json(&results, opts.seed)) {
            eprintln!("mp-faults: write {path}: {e}");
            std::process::exit(2);
        }
    }
    if failed {
        std::process::exit(1);
    }
}

/// The Markdown table of the campaign.
fn table(results: &[(&Scenario, Tally)]) -> String {
    let mut s = String::from(
        "| scenario | fault | rounds | hangs | lost | duplicated | torn | wrong errors | slowest recovery |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (sc, t) in results {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} ms |",
            sc.name,
            sc.fault.name(),
            t.rounds,
            t.hangs,
            t.lost,
            t.duplicated,
            t.torn,
            t.wrong_errors,
            t.slowest_recovery.as_secs_f64() * 1e3
        );
    }
    s
}

/// The campaign as JSON (`target/faults/report.json`).
fn json(results: &[(&Scenario, Tally)], seed: u64) -> String {
    let esc = |x: &str| {
        x.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let mut s = format!("{{\"seed\":{seed},\"scenarios\":[");
    for (i, (sc, t)) in results.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let failures: Vec<String> = t
            .failures
            .iter()
            .map(|f| format!("\"{}\"", esc(f)))
            .collect();
        let _ = write!(
            s,
            "{{\"name\":\"{}\",\"fault\":\"{}\",\"rounds\":{},\"hangs\":{},\"lost\":{},\"duplicated\":{},\"torn\":{},\"wrong_errors\":{},\"slowest_recovery_ms\":{:.3},\"failures\":[{}]}}",
            sc.name,
            sc.fault.name(),
            t.rounds,
            t.hangs,
            t.lost,
            t.duplicated,
            t.torn,
            t.wrong_errors,
            t.slowest_recovery.as_secs_f64() * 1e3,
            failures.join(",")
        );
    }
    s.push_str("]}\n");
    s
}
