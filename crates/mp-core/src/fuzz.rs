//! Fuzzing entry points. **Not API**: hidden from the docs, exempt from semver, and may change
//! or go away in any release.
//!
//! Each function feeds untrusted bytes to one of the decoders that read what other processes
//! wrote, and ignores the result: the only failure is a panic, an abort, or undefined behaviour
//! (which the fuzzers' sanitizers catch). The `cargo fuzz` targets in `fuzz/fuzz_targets/` call
//! them, and `tests/fuzz_corpus.rs` replays the stored corpus through them on stable, so the
//! fuzzers and the replay run the same code. `seeds` makes valid inputs for the corpus.
//! See `docs/reliability.md`, "Fuzzing".

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Once;

use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use rkyv::util::AlignedVec;

use crate::message::{self, Serde, ALIGN};
use crate::region::{Layout, Region, HEADER_SIZE, KIND_BYTES, LAYOUT_VERSION, MAGIC};

/// The largest input a harness looks at (the corpus keeps files below this too).
pub const MAX_INPUT: usize = 64 * 1024;

/// Content kind of the valid region the handle harness installs in slot 0.
const HANDLE_KIND: u32 = 0x6675_7a7a; // "fuzz"

fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

/// A memfd holding `bytes`, at least `min_len` bytes long (zeros after them).
fn memfd_with(bytes: &[u8], min_len: u64) -> Option<OwnedFd> {
    let fd = memfd_create(
        c"mp-fuzz",
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )
    .ok()?;
    let mut done = 0;
    while done < bytes.len() {
        match nix::unistd::write(&fd, &bytes[done..]) {
            Ok(0) | Err(_) => return None,
            Ok(n) => done += n,
        }
    }
    let len = min_len.max(bytes.len() as u64);
    nix::unistd::ftruncate(&fd, i64::try_from(len).ok()?).ok()?;
    Some(fd)
}

/// The region header: `bytes[1..]` is the file behind a region handed to [`Region::from_fd`].
///
/// `bytes[0]` says what to repair first, so that the fuzzer also gets past the checks it
/// cannot guess (the repairs are what a hostile peer that knows the format would write):
/// bit 0 sets the magic, bit 1 the layout version, bit 2 this process's pid namespace, bit 3
/// recomputes the check; bits 4-5 pick the layout the caller expects (none, the header's own
/// kind, a named block's, the header's own fields); bit 6 makes the file as long as the header
/// says (when that is at most 1 MiB). A region that is accepted has its first and last payload
/// bytes read: the mapping must cover what the header promised. True when it was accepted.
pub fn region_header(bytes: &[u8]) -> bool {
    let Some((&mode, content)) = bytes.split_first() else {
        return false;
    };
    let mut file = content[..content.len().min(MAX_INPUT)].to_vec();
    let mut min_len = 0u64;
    let mut expect = None;
    if file.len() >= HEADER_SIZE {
        if mode & 1 != 0 {
            file[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        }
        if mode & 2 != 0 {
            file[8..12].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
        }
        if mode & 4 != 0 {
            file[40..48].copy_from_slice(&crate::ident::pid_namespace().to_le_bytes());
        }
        let (version, kind) = (le32(&file, 8), le32(&file, 12));
        let (size, align, pid_ns) = (le64(&file, 16), le64(&file, 24), le64(&file, 40));
        if mode & 8 != 0 {
            let check = crate::region::header_check(version, kind, size, align, pid_ns);
            file[32..40].copy_from_slice(&check.to_le_bytes());
        }
        expect = match (mode >> 4) & 3 {
            0 => None,
            1 => Some(Layout {
                kind,
                size: 1,
                align: 1,
            }),
            2 => Some(Layout {
                kind: KIND_BYTES,
                size: 1,
                align: 1,
            }),
            _ => Some(Layout { kind, size, align }),
        };
        if mode & 0x40 != 0 && size <= 1 << 20 {
            min_len = HEADER_SIZE as u64 + size;
        }
    }
    let Some(fd) = memfd_with(&file, min_len) else {
        return false;
    };
    let file_len = min_len.max(file.len() as u64);
    if let Ok(region) = Region::from_fd(fd, expect) {
        assert!(
            HEADER_SIZE as u64 + region.len() as u64 <= file_len,
            "a region of {} payload bytes accepted from a file of {file_len}",
            region.len()
        );
        let p = region.as_ptr();
        // SAFETY: `from_fd` mapped HEADER_SIZE + len bytes and `as_ptr` is the payload's first
        // byte, so offsets 0 and len - 1 (len >= 1) are inside the mapping. Volatile reads of
        // plain bytes: nobody else holds this memfd.
        unsafe {
            p.read_volatile();
            p.add(region.len() - 1).read_volatile();
        }
        return true;
    }
    false
}

/// A message enum with every shape of variant.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
pub enum Shape {
    /// No fields.
    Unit,
    /// Tuple fields.
    Point(i32, i32),
    /// Named fields, nested containers.
    Named {
        /// A string.
        name: String,
        /// Nested vectors of enums.
        parts: Vec<Part>,
        /// An optional float.
        weight: Option<f64>,
    },
}

/// The items of [`Shape::Named`].
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
pub enum Part {
    /// A character.
    Char(char),
    /// Bytes.
    Bytes(Vec<u8>),
    /// A wide, 16-aligned integer.
    Wide(u128),
    /// Nothing.
    Empty,
}

/// A record of many field types.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
pub struct Record {
    /// An id.
    pub id: u64,
    /// A flag.
    pub flag: bool,
    /// Labels.
    pub labels: Vec<String>,
    /// An optional shape.
    pub shape: Option<Shape>,
    /// A map.
    pub map: HashMap<String, Vec<u16>>,
    /// An ordered map.
    pub tree: BTreeMap<u32, String>,
}

/// How many message types [`message`] picks from.
pub const MESSAGE_TYPES: u8 = 12;

/// Checks and decodes `bytes[1..]` as the message type `bytes[0] % MESSAGE_TYPES` picks:
/// integers, strings, vectors, options, tuples, enums with nested containers, hash and
/// ordered maps, the [`Serde`] adapter (postcard inside), and region handles (decoding one
/// maps a descriptor of the installed table and checks its header). Both [`message::decode`]
/// (which copies misaligned bytes) and [`message::access`] on an aligned copy run.
pub fn message(bytes: &[u8]) {
    let Some((&which, body)) = bytes.split_first() else {
        return;
    };
    let body = &body[..body.len().min(MAX_INPUT)];
    let mut aligned = AlignedVec::<ALIGN>::with_capacity(body.len());
    aligned.extend_from_slice(body);
    fn both<T: crate::Message>(body: &[u8], aligned: &[u8]) {
        let _ = message::decode::<T>(body);
        if let Ok(a) = message::access::<T>(aligned) {
            let _ = message::deserialize::<T>(a);
        }
    }
    match which % MESSAGE_TYPES {
        0 => both::<u64>(body, &aligned),
        1 => both::<String>(body, &aligned),
        2 => both::<Vec<u8>>(body, &aligned),
        3 => {
            both::<Vec<String>>(body, &aligned);
            if let Ok(a) = message::access::<Vec<String>>(&aligned) {
                for s in message::deserialize_each::<String>(a.as_slice()) {
                    let _ = s;
                }
                let mut out: Vec<std::mem::MaybeUninit<String>> = (0..a.len())
                    .map(|_| std::mem::MaybeUninit::uninit())
                    .collect();
                if message::deserialize_into::<String>(a.as_slice(), &mut out).is_ok() {
                    for o in &mut out {
                        // SAFETY: `deserialize_into` returned Ok: every element is initialized,
                        // and each is dropped once, here.
                        unsafe { o.assume_init_drop() };
                    }
                }
            }
        }
        4 => both::<Option<Vec<u32>>>(body, &aligned),
        5 => both::<(u32, String, Option<bool>)>(body, &aligned),
        6 => both::<Shape>(body, &aligned),
        7 => both::<Vec<Shape>>(body, &aligned),
        8 => both::<Record>(body, &aligned),
        9 => {
            let _ = message::decode::<Serde<HashMap<String, Vec<i64>>>>(body);
            let _ = message::decode::<Serde<(String, Option<u32>, Vec<bool>)>>(body);
        }
        10 => {
            install_handle_table();
            both::<Option<Region>>(body, &aligned);
        }
        _ => {
            // Not `Vec<Region>`: rkyv 0.8's `Vec` deserializer leaks the elements already made
            // when a later one fails (docs/reliability.md, "Fuzzing"); tuples and options drop
            // them.
            install_handle_table();
            both::<(u8, crate::handle::RegionHandle, Option<Region>)>(body, &aligned);
        }
    }
}

/// Installs (once per process) the descriptor table region handles are decoded against: slot 0
/// a valid region of kind [`HANDLE_KIND`] (4096 bytes, aligned to 64), slot 1 a memfd of
/// garbage, slot 2 a memfd shorter than a header, slot 3 `/dev/null`.
fn install_handle_table() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mut fds = Vec::new();
        if let Ok(r) = Region::anonymous(HANDLE_KIND, 4096, 64) {
            if let Ok(fd) = r.dup_fd() {
                fds.push(fd);
            }
        }
        fds.extend(memfd_with(&[0xa5; 4096 + HEADER_SIZE], 0));
        fds.extend(memfd_with(&[1; 10], 0));
        if let Ok(f) = std::fs::File::open("/dev/null") {
            fds.push(OwnedFd::from(f));
        }
        debug_assert!(fds.iter().all(|f| f.as_raw_fd() >= 0));
        crate::handle::install(fds);
    });
}

/// Valid inputs for the corpus, as `(target, bytes)`: real headers and real archives.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    // Region headers: a real anonymous region's file, read back.
    for (kind, size, align) in [
        (KIND_BYTES, 64u64, 64u64),
        (7, 1, 1),
        (HANDLE_KIND, 200, 16),
    ] {
        if let Ok(r) = Region::anonymous(kind, size, align) {
            let mut file = vec![0u8; HEADER_SIZE + size as usize];
            if nix::sys::uio::pread(r.fd(), &mut file, 0).is_ok() {
                let mut s = vec![0u8];
                s.extend_from_slice(&file);
                out.push(("region_header", s.clone()));
                s[0] = 0x4f; // repairs on, expect the header's own layout, full length
                out.push(("region_header", s));
            }
        }
    }
    let mut msg = |which: u8, bytes: Option<AlignedVec<ALIGN>>| {
        if let Some(b) = bytes {
            let mut s = vec![which];
            s.extend_from_slice(&b);
            out.push(("message", s));
        }
    };
    msg(0, message::encode(&0x0102_0304_0506_0708u64).ok());
    msg(1, message::encode(&String::from("hello, fuzzer")).ok());
    msg(2, message::encode(&vec![1u8, 2, 3, 4, 5]).ok());
    msg(
        3,
        message::encode(&vec![String::from("a"), String::from("longer than inline")]).ok(),
    );
    msg(4, message::encode(&Some(vec![1u32, 2, 3])).ok());
    msg(
        5,
        message::encode(&(7u32, String::from("seven"), Some(true))).ok(),
    );
    let named = Shape::Named {
        name: "named shape with a long name".into(),
        parts: vec![
            Part::Char('é'),
            Part::Bytes(vec![9; 20]),
            Part::Wide(u128::MAX / 3),
            Part::Empty,
        ],
        weight: Some(1.5),
    };
    msg(6, message::encode(&named).ok());
    msg(
        7,
        message::encode(&vec![Shape::Unit, Shape::Point(-1, 2), named.clone()]).ok(),
    );
    let record = Record {
        id: 42,
        flag: true,
        labels: vec!["x".into(), "a label of some length".into()],
        shape: Some(named),
        map: [("k1".to_string(), vec![1u16, 2]), ("k2".into(), vec![])]
            .into_iter()
            .collect(),
        tree: [
            (1u32, "one".to_string()),
            (2, "two".into()),
            (30, "thirty".into()),
        ]
        .into_iter()
        .collect(),
    };
    msg(8, message::encode(&record).ok());
    let map: HashMap<String, Vec<i64>> = [("a".to_string(), vec![-1i64, 5])].into_iter().collect();
    msg(9, message::encode(&Serde(map)).ok());
    let handle = |slot: u32, kind: u32, size: u64, align: u64| crate::handle::RegionHandle {
        slot,
        kind,
        size,
        align,
    };
    msg(
        10,
        message::encode(&Some(handle(0, HANDLE_KIND, 4096, 64))).ok(),
    );
    msg(
        11,
        message::encode(&(
            1u8,
            handle(2, 1, 1, 1),
            Some(handle(0, HANDLE_KIND, 4096, 64)),
        ))
        .ok(),
    );
    out
}

/// A harness of a fuzz target: runs one input; a panic is the only failure.
pub type Harness = fn(&[u8]);

/// `fuzz/corpus/<target>/` of the repository, from a crate's `CARGO_MANIFEST_DIR` (every crate
/// lives at `crates/<name>`).
pub fn corpus_dir(manifest_dir: &str, target: &str) -> std::path::PathBuf {
    std::path::Path::new(manifest_dir)
        .join("../../fuzz/corpus")
        .join(target)
}

/// Runs `run` on every input, each under `catch_unwind`; returns the names of those that
/// panicked.
fn panics<'a>(run: Harness, inputs: impl Iterator<Item = (String, &'a [u8])>) -> Vec<String> {
    let mut failed = Vec::new();
    for (name, bytes) in inputs {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(bytes))).is_err() {
            failed.push(name);
        }
    }
    failed
}

/// The corpus replay of a crate's `tests/fuzz_corpus.rs`: every file of each target's corpus
/// directory goes through the target's harness. Panics (failing the test) naming every file
/// that panicked, or when a target has no corpus.
pub fn replay_corpus(manifest_dir: &str, targets: &[(&str, Harness)]) {
    for &(target, run) in targets {
        let dir = corpus_dir(manifest_dir, target);
        let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (the corpus lives in the repository)",
                    dir.display()
                )
            })
            .map(|e| e.expect("read_dir entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: no corpus files", dir.display());
        let inputs: Vec<(String, Vec<u8>)> = files
            .iter()
            .map(|p| {
                let bytes = std::fs::read(p).expect("read a corpus file");
                (p.display().to_string(), bytes)
            })
            .collect();
        let failed = panics(run, inputs.iter().map(|(n, b)| (n.clone(), b.as_slice())));
        assert!(failed.is_empty(), "{target}: panicked on {failed:#?}");
        eprintln!("{target}: {} corpus files replayed", files.len());
    }
}

/// Runs the seeds made now (`seeds`, as a crate's `seeds()` returns them) through their
/// targets' harnesses, so a change of format cannot leave the stored seeds stale unnoticed.
/// Panics when a target has no seed or a seed panicked.
pub fn replay_seeds(seeds: &[(&'static str, Vec<u8>)], targets: &[(&str, Harness)]) {
    for &(target, run) in targets {
        let mine: Vec<(String, &[u8])> = seeds
            .iter()
            .enumerate()
            .filter(|(_, (t, _))| *t == target)
            .map(|(i, (_, b))| (format!("{target} seed {i}"), b.as_slice()))
            .collect();
        assert!(!mine.is_empty(), "{target} has no seeds");
        let failed = panics(run, mine.into_iter());
        assert!(failed.is_empty(), "panicked on {failed:?}");
    }
}

/// (Re)writes the seed files (`seed-NN`) of each target's corpus directory when
/// `MP_WRITE_FUZZ_SEEDS` is set; does nothing otherwise.
pub fn write_seeds(manifest_dir: &str, seeds: Vec<(&'static str, Vec<u8>)>) {
    if std::env::var_os("MP_WRITE_FUZZ_SEEDS").is_none() {
        return;
    }
    let mut n = std::collections::HashMap::<&str, usize>::new();
    for (target, bytes) in seeds {
        let dir = corpus_dir(manifest_dir, target);
        std::fs::create_dir_all(&dir).expect("create the corpus directory");
        let i = n.entry(target).or_default();
        std::fs::write(dir.join(format!("seed-{i:02}")), bytes).expect("write a seed");
        *i += 1;
    }
}
