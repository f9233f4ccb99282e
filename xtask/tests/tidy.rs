//! The tidy test (after rust-analyzer's), run by `cargo test --workspace` and so by `.ci/run`:
//! (1) no Rust file under `crates/`, `xtask/`, `benches/`, `faults/`, `fuzz/` (but `target/`,
//! `tests/`) passes [`MAX_FILE_LINES`] lines; (2) no function outside test code passes
//! [`MAX_FN_LINES`]; (3) docs/architecture.md's crate table agrees with the manifests; (4)
//! every library lints `missing_docs`; (5) no `debug_state` or `#[doc(hidden)] pub fn` in
//! `crates/*/src`; (6) no import cycle between a crate's top-level modules; (7) no benchmark
//! figures in the doc comments of `crates/*/src`. Known violations are [`EXCEPTIONS`], each
//! with its reason; one that matches nothing any more fails the test as stale.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// The longest a source file may be.
const MAX_FILE_LINES: usize = 800;
/// The longest a function may be, its `fn` line to its closing brace.
const MAX_FN_LINES: usize = 120;

/// The known violations: the rule, the path from the workspace root, what in the file (the
/// function, the figure, the modules of a cycle; empty for a whole file), and why.
#[rustfmt::skip]
const EXCEPTIONS: &[(&str, &str, &str, &str)] = &[
    ("fn-length", "benches/src/lib.rs", "workloads",
     "the suite's list of workloads: one entry per workload, data rather than logic"),
];

/// The violations found so far: rule, path, line, item, message.
#[derive(Default)]
struct Tidy(Vec<(&'static str, String, usize, String, String)>);

impl Tidy {
    fn report(&mut self, rule: &'static str, path: &str, line: usize, item: &str, message: String) {
        self.0.push((rule, path.into(), line, item.into(), message));
    }

    /// The violations no exception covers, then the stale exceptions, one message each.
    fn failures(self) -> Vec<String> {
        let mut used = vec![false; EXCEPTIONS.len()];
        let mut out = Vec::new();
        for (rule, path, line, item, message) in self.0 {
            let key = (rule, path.as_str(), item.as_str());
            match EXCEPTIONS.iter().position(|e| (e.0, e.1, e.2) == key) {
                Some(i) => used[i] = true,
                None => out.push(format!("{path}:{line}: [{rule}] {message}")),
            }
        }
        for ((rule, path, item, why), _) in EXCEPTIONS.iter().zip(used).filter(|e| !e.1) {
            let fix = "the violation is gone: remove the entry";
            out.push(format!(
                "{path}: [{rule}] stale exception {item:?} ({why}): {fix}"
            ));
        }
        out
    }
}

#[test]
fn tidy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut tidy = Tidy::default();
    let sources = load_sources(&root);
    for file in &sources {
        check_lengths(file, &mut tidy);
        if file.rel.starts_with("crates/") && file.rel.contains("/src/") {
            check_hidden_helpers(file, &mut tidy);
            check_bench_figures(file, &mut tidy);
        }
    }
    let members = workspace_members(&root);
    check_crate_table(&root, &members, &mut tidy);
    check_missing_docs_lint(&root, &members, &mut tidy);
    for m in &members {
        check_module_cycles(&sources, &m.dir, &mut tidy);
    }
    let failures = tidy.failures();
    assert!(failures.is_empty(), "tidy:\n{}", failures.join("\n"));
}

// --- Reading the sources --------------------------------------------------------------------------

/// A Rust file: path from the root, text, text with literals, comments and `#[cfg(test)] mod`
/// blocks blanked (newlines kept), and whether it is test code (named by `#[cfg(test)] mod x;`).
struct Source {
    rel: String,
    raw: String,
    code: String,
    is_test: bool,
}

/// Every Rust source file under the directories the rules cover.
fn load_sources(root: &Path) -> Vec<Source> {
    let mut paths = Vec::new();
    for top in ["crates", "xtask", "benches", "faults", "fuzz"] {
        walk(&root.join(top), &mut paths);
    }
    paths.sort();
    let mut test_files = BTreeSet::new();
    let mut files = Vec::new();
    for path in paths {
        let raw = read(&path);
        let (code, test_mods) = strip_test_mods(&blank_literals(&raw));
        // `mod x;` in `a/lib.rs` or `a/mod.rs` is `a/x.rs`; in `a/b.rs`, `a/b/x.rs`.
        let dir = path.with_extension("");
        let flat = ["lib", "main", "mod"].iter().any(|s| dir.ends_with(s));
        let base = if flat {
            dir.parent().unwrap_or(root)
        } else {
            &dir
        };
        test_files.extend(test_mods.iter().map(|n| base.join(format!("{n}.rs"))));
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        files.push(Source {
            rel,
            raw,
            code,
            is_test: false,
        });
    }
    for f in &mut files {
        f.is_test = test_files.contains(&root.join(&f.rel));
    }
    files
}

/// Collects the `.rs` files under `dir`, skipping `target/`, `tests/` and hidden directories.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in entries(dir) {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() && name != "target" && name != "tests" && !name.starts_with('.') {
            walk(&path, out);
        } else if path.is_file() && name.ends_with(".rs") {
            out.push(path);
        }
    }
}

fn entries(dir: &Path) -> impl Iterator<Item = fs::DirEntry> {
    fs::read_dir(dir).into_iter().flatten().flatten()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text with every comment, string and char literal replaced by spaces (newlines kept),
/// so that braces and words inside them do not count.
fn blank_literals(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let after_ident = i > 0 && is_ident(b[i - 1]);
        if b[i..].starts_with(b"//") {
            i += count_while(&b[i..], |c| c != b'\n');
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() && (i == start || depth > 0) {
                let (open, close) = (b[i..].starts_with(b"/*"), b[i..].starts_with(b"*/"));
                depth += i32::from(open) - i32::from(close);
                i += if open || close { 2 } else { 1 };
            }
        } else if let Some(end) = raw_string_end(b, i).filter(|_| !after_ident) {
            i = end;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else if let Some(end) = char_end(src, i) {
            i = end;
        } else {
            i += 1;
            continue;
        }
        blank_range(&mut out, start, i);
    }
    String::from_utf8(out).unwrap_or_default()
}

fn blank_range(out: &mut [u8], from: usize, to: usize) {
    let to = to.min(out.len());
    for c in out[from..to].iter_mut().filter(|c| **c != b'\n') {
        *c = b' ';
    }
}

fn count_while(b: &[u8], f: impl Fn(u8) -> bool) -> usize {
    b.iter().take_while(|&&c| f(c)).count()
}

/// Where a raw string literal (`r"…"`, `r#"…"#`, `br#"…"#`) starting at `i` ends, if one does.
fn raw_string_end(b: &[u8], i: usize) -> Option<usize> {
    let j = i + usize::from(matches!(b.get(i), Some(b'b' | b'c')));
    let hashes = count_while(b.get(j + 1..)?, |c| c == b'#');
    let open = j + 1 + hashes;
    if b.get(j) != Some(&b'r') || b.get(open) != Some(&b'"') {
        return None;
    }
    let close = format!("\"{}", "#".repeat(hashes));
    let rest = &b[open + 1..];
    let found = |w: &[u8]| w == close.as_bytes();
    let at = rest.windows(close.len()).position(found)?;
    Some(open + 1 + at + close.len())
}

/// Where a char literal starting at `i` ends; `None` if `i` is no quote or starts a lifetime.
fn char_end(src: &str, i: usize) -> Option<usize> {
    let b = src.as_bytes();
    if b.get(i) != Some(&b'\'') {
        return None;
    }
    if b.get(i + 1) == Some(&b'\\') {
        return Some(i + 3 + b[i + 2..].iter().position(|&c| c == b'\'')?);
    }
    let close = i + 1 + src.get(i + 1..)?.chars().next()?.len_utf8();
    (b.get(close) == Some(&b'\'')).then_some(close + 1)
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn ident_at(s: &str, i: usize) -> &str {
    let rest = s.get(i..).unwrap_or("");
    &rest[..count_while(rest.as_bytes(), is_ident)]
}

fn skip_ws(s: &str, i: usize) -> usize {
    i + count_while(&s.as_bytes()[i.min(s.len())..], |c| c.is_ascii_whitespace())
}

/// The position after whitespace and outer attributes (`#[…]`) from `i`.
fn skip_attrs(s: &str, mut i: usize) -> usize {
    loop {
        i = skip_ws(s, i);
        let open = skip_ws(s, i + 1);
        if s.as_bytes().get(i) != Some(&b'#') || s.as_bytes().get(open) != Some(&b'[') {
            return i;
        }
        match matching(s, open) {
            Some(end) => i = end + 1,
            None => return s.len(),
        }
    }
}

/// The position of the bracket that closes the one at `open` (`{`, `[` or `(`).
fn matching(s: &str, open: usize) -> Option<usize> {
    let b = s.as_bytes();
    // In ASCII `}` and `]` come two after their openers, `)` one.
    let (o, c) = (b[open], b[open] + if b[open] == b'(' { 1 } else { 2 });
    let mut depth = 0usize;
    for (k, &ch) in b.iter().enumerate().skip(open) {
        depth += usize::from(ch == o);
        depth -= usize::from(ch == c);
        if depth == 0 {
            return Some(k);
        }
    }
    None
}

/// Positions of `word` in `s` as a whole identifier.
fn find_words<'a>(s: &'a str, word: &'a str) -> impl Iterator<Item = usize> + 'a {
    let b = s.as_bytes();
    let ends = move |i: usize| b.get(i + word.len()).is_none_or(|&c| !is_ident(c));
    let starts = move |i: usize| i == 0 || !is_ident(b[i - 1]);
    let whole = move |m: &(usize, &str)| starts(m.0) && ends(m.0);
    s.match_indices(word).filter(whole).map(|m| m.0)
}

fn squeeze(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// Whether the attribute at `i` reads `attr` (whitespace ignored).
fn attr_at(s: &str, i: usize, attr: &str) -> bool {
    let end = s.len().min(i + 2 * attr.len());
    squeeze(s.get(i..end).unwrap_or(&s[i..])).starts_with(attr)
}

fn line_of(s: &str, pos: usize) -> usize {
    let before = &s.as_bytes()[..pos.min(s.len())];
    1 + before.iter().filter(|&&c| c == b'\n').count()
}

/// `blank` with every `#[cfg(test)] mod x { … }` blanked, and the names of `#[cfg(test)] mod x;`.
fn strip_test_mods(blank: &str) -> (String, Vec<String>) {
    let mut out = blank.as_bytes().to_vec();
    let mut names = Vec::new();
    let test_attr = |i| attr_at(blank, i, "#[cfg(test)]") || attr_at(blank, i, "#[cfg(all(test,");
    for (at, _) in blank.match_indices('#').filter(|m| test_attr(m.0)) {
        let j = skip_attrs(blank, at);
        if ident_at(blank, j) != "mod" {
            continue;
        }
        let name_at = skip_ws(blank, j + 3);
        let name = ident_at(blank, name_at);
        let after = skip_ws(blank, name_at + name.len());
        match blank.as_bytes().get(after) {
            Some(b';') => names.push(name.to_string()),
            Some(b'{') => {
                let end = matching(blank, after).map_or(blank.len(), |e| e + 1);
                blank_range(&mut out, at, end);
            }
            _ => {}
        }
    }
    (String::from_utf8(out).unwrap_or_default(), names)
}

// --- Rules 1 and 2: file and function lengths -----------------------------------------------------

fn check_lengths(file: &Source, tidy: &mut Tidy) {
    let lines = file.raw.lines().count();
    if lines > MAX_FILE_LINES {
        let msg = format!("{lines} lines, more than {MAX_FILE_LINES}: split the file along a seam");
        tidy.report("file-length", &file.rel, MAX_FILE_LINES + 1, "", msg);
    }
    let long = |f: &(&str, usize, usize)| f.2 > MAX_FN_LINES && !file.is_test;
    for (name, line, lines) in functions(&file.code).into_iter().filter(long) {
        let msg = format!("fn {name} is {lines} lines, more than {MAX_FN_LINES}: split it");
        tidy.report("fn-length", &file.rel, line, name, msg);
    }
}

/// Every `fn name … { … }` in blanked code as (name, line of `fn`, lines up to the closing
/// brace); declarations without a body, `fn(…)` pointer types and `fn $name` are skipped.
fn functions(code: &str) -> Vec<(&str, usize, usize)> {
    let (b, mut out, mut line, mut seen) = (code.as_bytes(), Vec::new(), 1, 0);
    for at in find_words(code, "fn") {
        let name_at = skip_ws(code, at + 2);
        let name = ident_at(code, name_at);
        if name.is_empty() {
            continue;
        }
        // The body is the first `{` outside parentheses and brackets, unless a `;` comes first.
        let (mut depth, mut k) = (0i32, name_at + name.len());
        while k < b.len() && !(depth == 0 && matches!(b[k], b'{' | b';')) {
            depth += i32::from(matches!(b[k], b'(' | b'['));
            depth -= i32::from(matches!(b[k], b')' | b']'));
            k += 1;
        }
        let body = (b.get(k) == Some(&b'{')).then_some(k);
        if let Some(end) = body.and_then(|k| matching(code, k)) {
            // Lines counted on from the last function found, not from the start every time.
            (line, seen) = (line + code[seen..at].matches('\n').count(), at);
            out.push((name, line, code[at..end].matches('\n').count() + 1));
        }
    }
    out
}

// --- Rule 5: no hidden helpers in the public API --------------------------------------------------

fn check_hidden_helpers(file: &Source, tidy: &mut Tidy) {
    let code = &file.code;
    for at in find_words(code, "debug_state") {
        let msg = "`debug_state`: a type's state is its `Debug`, not a hidden method".into();
        let line = line_of(code, at);
        tidy.report("hidden-helper", &file.rel, line, "debug_state", msg);
    }
    for (at, name) in hidden_pub_fns(code) {
        let msg = format!("`#[doc(hidden)] pub fn {name}`: document it, or make it private");
        tidy.report("hidden-helper", &file.rel, line_of(code, at), name, msg);
    }
}

/// Every `#[doc(hidden)]` on a `pub fn` (plain `pub`, any qualifiers), with the fn's name.
fn hidden_pub_fns(code: &str) -> Vec<(usize, &str)> {
    let pub_fn = |mut j: usize| -> Option<&str> {
        let after_pub = skip_ws(code, j + 3);
        if ident_at(code, j) != "pub" || code.as_bytes().get(after_pub) == Some(&b'(') {
            return None;
        }
        j = after_pub;
        while matches!(ident_at(code, j), "const" | "async" | "unsafe" | "extern") {
            j = skip_ws(code, j + ident_at(code, j).len());
        }
        (ident_at(code, j) == "fn").then(|| ident_at(code, skip_ws(code, j + 2)))
    };
    let mut out = Vec::new();
    let hidden = |m: &(usize, &str)| attr_at(code, m.0, "#[doc(hidden)]");
    for (at, _) in code.match_indices('#').filter(hidden) {
        out.extend(pub_fn(skip_attrs(code, at)).map(|name| (at, name)));
    }
    out
}

// --- Rule 7: no benchmark figures in API docs -----------------------------------------------------

fn check_bench_figures(file: &Source, tidy: &mut Tidy) {
    for (n, (raw, code)) in file.raw.lines().zip(file.code.lines()).enumerate() {
        let text = raw.trim_start();
        let doc = (text.starts_with("///") || text.starts_with("//!")) && code.trim().is_empty();
        if let Some(figure) = bench_figure(text).filter(|_| doc) {
            let msg = format!("{figure:?} in API docs: figures go to docs/benchmarks.md");
            tidy.report("bench-figure", &file.rel, n + 1, &figure, msg);
        }
    }
}

/// The first speed figure in a line of docs: a number and `ns` or `µs`, a rate (`5 M/s`, `3
/// GB/s`) or a ratio (`11x`, `3×`, `4 times faster`). Not `ms` or `s` (timeouts, intervals),
/// nor ` × ` between spaces (a formula: `4 × processes`).
fn bench_figure(line: &str) -> Option<String> {
    let words: Vec<&str> = line
        .split_whitespace()
        .map(|w| w.trim_matches(['(', '`', '~', ',', '.', ';', ')']))
        .collect();
    let number = |w: &str| {
        let digits = |c: char| c.is_ascii_digit() || ".,-".contains(c);
        w.starts_with(|c: char| c.is_ascii_digit()) && w.chars().all(digits)
    };
    let rate = |w: &str| w.ends_with("/s") && w.len() <= 12 && w.starts_with(char::is_alphabetic);
    for (i, w) in words.iter().enumerate() {
        let next = |k: usize| words.get(i + k).copied().unwrap_or("");
        if w.strip_suffix(['x', '×']).is_some_and(number) {
            return Some(w.to_string());
        }
        let unit = match (next(1), next(2)) {
            _ if !number(w) => continue,
            ("ns" | "µs" | "μs", _) => next(1).to_string(),
            (u, _) if rate(u) => u.to_string(),
            ("k" | "K" | "M" | "G", u) if rate(u) => format!("{} {u}", next(1)),
            ("times", "faster" | "slower") => format!("times {}", next(2)),
            _ => continue,
        };
        return Some(format!("{w} {unit}"));
    }
    None
}

// --- Rules 3 and 4: the crate table and the missing_docs lint, against the manifests --------------

/// A workspace member: its directory (`crates/mp-core`), package name, the mp crates of its
/// `[dependencies]` (target-specific ones too) with their lines, and its manifest.
struct Member {
    dir: String,
    name: String,
    mp_deps: BTreeMap<String, usize>,
    toml: Vec<TomlEntry>,
}

/// One `key = value` line of a TOML file: its table, line, key and value.
type TomlEntry = (String, usize, String, String);

/// The `key = value` lines of a TOML file (as Cargo manifests write them: one per line).
fn toml_entries(text: &str) -> Vec<TomlEntry> {
    let mut table = String::new();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split(" #").next().unwrap_or("").trim();
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = header.trim().to_string();
        } else if let Some((key, value)) = line.split_once('=').filter(|_| !line.starts_with('#')) {
            let key = key.trim().trim_matches('"').to_string();
            out.push((table.clone(), n + 1, key, value.trim().to_string()));
        }
    }
    out
}

/// The members of the root `Cargo.toml` (`members = [...]`, `dir/*` globs expanded).
fn workspace_members(root: &Path) -> Vec<Member> {
    let toml = toml_entries(&read(&root.join("Cargo.toml")));
    let is_list = |e: &&TomlEntry| e.0 == "workspace" && e.2 == "members";
    let list = toml.iter().find(is_list).map_or("", |e| e.3.as_str());
    let mut dirs = Vec::new();
    for entry in list.split('"').skip(1).step_by(2) {
        let Some(parent) = entry.strip_suffix("/*") else {
            dirs.push(entry.to_string());
            continue;
        };
        for e in entries(&root.join(parent)) {
            let d = format!("{parent}/{}", e.file_name().to_string_lossy());
            dirs.extend(Some(d).filter(|d| root.join(d).join("Cargo.toml").is_file()));
        }
    }
    dirs.into_iter().map(|dir| read_member(root, dir)).collect()
}

fn read_member(root: &Path, dir: String) -> Member {
    let toml = toml_entries(&read(&root.join(&dir).join("Cargo.toml")));
    let mut name = String::new();
    let mut mp_deps = BTreeMap::new();
    for (table, line, key, value) in &toml {
        if table == "package" && key == "name" {
            name = value.trim_matches('"').to_string();
        }
        let target_deps = table.starts_with("target.") && table.ends_with(".dependencies");
        // `mp-core.workspace = true`, `mp-core = { … }`, `alias = { package = "mp-core" }`.
        let package = value.split_once("package").map(|p| p.1);
        let package = package.and_then(|p| p.split('"').nth(1));
        let dep = package.unwrap_or(key.split('.').next().unwrap_or(""));
        if (table == "dependencies" || target_deps) && is_mp_crate(dep) {
            mp_deps.entry(dep.to_string()).or_insert(*line);
        }
    }
    Member {
        dir,
        name,
        mp_deps,
        toml,
    }
}

fn is_mp_crate(name: &str) -> bool {
    name == "mp" || name.starts_with("mp-")
}

fn backticked(s: &str) -> impl Iterator<Item = &str> {
    s.split('`').skip(1).step_by(2)
}

/// The rows of the table of `doc` whose header is `| crate | {second} |`: the line, the
/// backticked words of the first column and the second column's text.
fn table(doc: &str, second: &str) -> Vec<(usize, Vec<String>, String)> {
    let lines: Vec<&str> = doc.lines().collect();
    let header = format!("|crate|{second}|");
    let found = lines.iter().position(|l| squeeze(l) == header);
    let (start, mut rows) = (found.map_or(lines.len(), |at| at + 2), Vec::new());
    for (n, l) in lines.iter().enumerate().skip(start) {
        let Some((first, text)) = l.trim().strip_prefix('|').and_then(|r| r.split_once('|')) else {
            break;
        };
        let crates = backticked(first).map(str::to_string).collect();
        rows.push((n + 1, crates, text.trim().trim_end_matches('|').to_string()));
    }
    rows
}

/// What a `uses` cell says: the backticked mp crates, plus the crates of the rows before for
/// "every crate above" ("no other mp crate" names none).
fn uses_of(text: &str, above: &BTreeSet<String>) -> BTreeSet<String> {
    let named = backticked(text).filter(|w| is_mp_crate(w));
    let mut uses: BTreeSet<String> = named.map(String::from).collect();
    if text.contains("every crate above") {
        uses.extend(above.iter().cloned());
    }
    uses
}

fn check_crate_table(root: &Path, members: &[Member], tidy: &mut Tidy) {
    const DOC: &str = "docs/architecture.md";
    let doc = read(&root.join(DOC));
    let rows = table(&doc, "uses");
    let (mut above, mut seen) = (BTreeSet::new(), BTreeSet::new());
    for (row, crates, text) in &rows {
        let uses = uses_of(text, &above);
        for krate in crates {
            let Some(m) = members.iter().find(|m| &m.name == krate) else {
                let msg = format!("the table names `{krate}`, which is no workspace member");
                tidy.report("crate-table", DOC, *row, krate, msg);
                continue;
            };
            seen.insert(krate.clone());
            let manifest = format!("{}/Cargo.toml", m.dir);
            for (dep, line) in m.mp_deps.iter().filter(|(d, _)| !uses.contains(*d)) {
                let msg = format!("`{krate}` uses `{dep}`; its row ({DOC}:{row}) must say so");
                tidy.report("crate-table", &manifest, *line, dep, msg);
            }
            let lacks = |d: &&String| !m.mp_deps.contains_key(*d) && *d != krate;
            for dep in uses.iter().filter(lacks) {
                let msg = format!("the table says `{krate}` uses `{dep}`; {manifest} does not");
                tidy.report("crate-table", DOC, *row, dep, msg);
            }
        }
        above.extend(crates.iter().cloned());
    }
    for m in members.iter().filter(|m| !seen.contains(&m.name)) {
        let (name, manifest) = (&m.name, format!("{}/Cargo.toml", m.dir));
        let msg = format!("`{name}` has no row in the `| crate | uses |` table of {DOC}");
        tidy.report("crate-table", &manifest, 1, name, msg);
    }
}

fn check_missing_docs_lint(root: &Path, members: &[Member], tidy: &mut Tidy) {
    const LEVELS: [&str; 3] = ["warn", "deny", "forbid"];
    let lints_docs = |toml: &[TomlEntry], table: &str| {
        let level = |v: &str| LEVELS.iter().any(|l| v.contains(&format!("\"{l}\"")));
        let hit = |e: &TomlEntry| e.0 == table && e.2 == "missing_docs" && level(&e.3);
        toml.iter().any(hit)
    };
    let root_toml = toml_entries(&read(&root.join("Cargo.toml")));
    let workspace = lints_docs(&root_toml, "workspace.lints.rust");
    for m in members {
        let rel = format!("{}/src/lib.rs", m.dir);
        let Ok(src) = fs::read_to_string(root.join(&rel)) else {
            continue;
        };
        let attrs = squeeze(&blank_literals(&src));
        let lib_attr = |lvl: &&str| attrs.contains(&format!("#![{lvl}(missing_docs)]"));
        let in_lib = LEVELS.iter().any(lib_attr);
        let inherits = |e: &TomlEntry| e.0 == "lints" && e.2 == "workspace" && e.3 == "true";
        let inherits = m.toml.iter().any(inherits);
        let linted = in_lib || lints_docs(&m.toml, "lints.rust") || (inherits && workspace);
        if !linted || attrs.contains("#![allow(missing_docs)]") {
            let msg = "the library does not lint missing_docs: add `[lints] workspace = true` to \
                       its Cargo.toml (the workspace warns on it) or `#![warn(missing_docs)]` here";
            tidy.report("missing-docs-lint", &rel, 1, "", msg.into());
        }
    }
}

// --- Rule 6: no import cycles between a crate's top-level modules ---------------------------------

/// Where module `from` first names module `to`: the file and line.
type Edges = BTreeMap<(String, String), (String, usize)>;

fn check_module_cycles(sources: &[Source], dir: &str, tidy: &mut Tidy) {
    let src = format!("{dir}/src/");
    let files: Vec<&Source> = sources.iter().filter(|f| f.rel.starts_with(&src)).collect();
    // `ring/put.rs` is [ring, put], `ring/mod.rs` is [ring], `lib.rs` is [lib].
    let module_path = |f: &Source| -> Vec<String> {
        let rel = f.rel[src.len()..].trim_end_matches(".rs");
        let rel = rel.trim_end_matches("/mod");
        rel.split('/').map(str::to_string).collect()
    };
    let paths: Vec<Vec<String>> = files.iter().map(|f| module_path(f)).collect();
    let is_root = |p: &[String]| p == ["lib"] || p == ["main"];
    // `#[path = "fuzz.rs"] pub mod __fuzz;` in the root: `__fuzz` is the module of `fuzz.rs`.
    let mut aliases = BTreeMap::new();
    for (f, _) in files.iter().zip(&paths).filter(|(_, p)| is_root(p)) {
        for (at, _) in f.raw.match_indices("#[path = \"") {
            let (file, rest) = f.raw[at + 10..].split_once('"').unwrap_or_default();
            let name = rest.split("mod ").nth(1).map_or("", |r| ident_at(r, 0));
            aliases.insert(name.to_string(), file.trim_end_matches(".rs").to_string());
        }
    }
    let tops = paths.iter().filter(|p| !is_root(p));
    let nodes: BTreeSet<&String> = tops.map(|p| &p[0]).collect();
    let mut edges = Edges::new();
    let modules = |(f, p): &(&&Source, &Vec<String>)| !f.is_test && !is_root(p);
    for (f, path) in files.iter().zip(&paths).filter(modules) {
        for (target, pos) in module_refs(&f.code, path.len()) {
            let target = aliases.get(&target).cloned().unwrap_or(target);
            if target != path[0] && nodes.contains(&target) {
                let at = (f.rel.clone(), line_of(&f.code, pos));
                edges.entry((path[0].clone(), target)).or_insert(at);
            }
        }
    }
    for group in cycles(&edges) {
        let mut msg = format!("the modules of {dir} import each other in a circle:");
        let mut first = None;
        for ((a, b), (file, line)) in &edges {
            if group.contains(a) && group.contains(b) {
                let _ = write!(msg, " {a} -> {b} ({file}:{line});");
                first = first.or(Some((file, *line)));
            }
        }
        msg.push_str(" one of these must go (move what both need into a module of its own)");
        let (file, line) = first.unwrap_or((&src, 1));
        let item: Vec<&str> = group.iter().map(String::as_str).collect();
        tidy.report("module-cycle", file, line, &item.join(", "), msg);
    }
}

/// The top-level modules blanked code names, with where: `crate::x`, `crate::{x, y}`, and
/// `super::x` chains that climb to the crate root from a file `depth` modules deep.
fn module_refs(code: &str, depth: usize) -> Vec<(String, usize)> {
    let b = code.as_bytes();
    let mut inline = Vec::new();
    for at in find_words(code, "mod") {
        let name_at = skip_ws(code, at + 3);
        let open = skip_ws(code, name_at + ident_at(code, name_at).len());
        if b.get(open) == Some(&b'{') {
            inline.push((open, matching(code, open).unwrap_or(b.len())));
        }
    }
    let starts = find_words(code, "crate").chain(find_words(code, "super"));
    let mut out = Vec::new();
    for at in starts.filter(|&at| at == 0 || !matches!(b[at - 1], b'$' | b':')) {
        // Read `crate::` or `super::super::`, then what it names.
        let (mut k, mut climbs) = (at, 0);
        let to = loop {
            let word = ident_at(code, k);
            climbs += usize::from(word == "super");
            let colons = skip_ws(code, k + word.len());
            if !code[colons..].starts_with("::") {
                break None;
            }
            k = skip_ws(code, colons + 2);
            if ident_at(code, k) != "super" || word == "crate" {
                break Some(k);
            }
        };
        let nesting = inline.iter().filter(|&&(s, e)| s < at && at < e).count();
        let up = ident_at(code, at) == "crate" || climbs == depth + nesting;
        let Some(k) = to.filter(|_| up) else { continue };
        if b.get(k) != Some(&b'{') {
            out.push((ident_at(code, k).to_string(), k));
            continue;
        }
        // A group: the first name of each item at its top level.
        let (end, mut level, mut fresh) = (matching(code, k).unwrap_or(b.len()), 0, true);
        for (j, &c) in b[..end].iter().enumerate().skip(k + 1) {
            match c {
                b'{' => level += 1,
                b'}' => level -= 1,
                b',' if level == 0 => fresh = true,
                c if fresh && level == 0 && is_ident(c) => out.push((ident_at(code, j).into(), j)),
                _ => {}
            }
            fresh &= c.is_ascii_whitespace() || c == b',';
        }
    }
    out.retain(|(name, _)| !name.is_empty() && name != "self" && name != "super");
    out
}

/// The groups of (more than one) modules that reach each other through `edges`.
fn cycles(edges: &Edges) -> Vec<BTreeSet<String>> {
    let nodes: BTreeSet<&String> = edges.keys().flat_map(|(a, b)| [a, b]).collect();
    let nodes: Vec<&String> = nodes.into_iter().collect();
    let n = nodes.len();
    let mut reach = vec![vec![false; n]; n];
    for (a, b) in edges.keys() {
        let index = |x: &String| nodes.binary_search(&x).unwrap_or(0);
        reach[index(a)][index(b)] = true;
    }
    for k in 0..n {
        let via = reach[k].clone();
        for row in reach.iter_mut().filter(|row| row[k]) {
            row.iter_mut().zip(&via).for_each(|(r, v)| *r |= v);
        }
    }
    let mut out: Vec<BTreeSet<String>> = Vec::new();
    for (i, row) in reach.iter().enumerate() {
        let mutual = (0..n).filter(|&j| row[j] && reach[j][i]);
        let group: BTreeSet<String> = mutual.map(|j| nodes[j].clone()).collect();
        if group.len() > 1 && !out.contains(&group) {
            out.push(group);
        }
    }
    out
}

// --- The checks themselves, on small inputs (the exceptions above check them on the tree) ------

#[test]
fn checks_on_small_inputs() {
    let src = "fn a() { let s = \"}\"; let c = '}'; let r = r#\"}\"#; } // }\n\
               /* { /* } */ */ fn b<'x>(v: &'x u8) -> char {\n'\\''\n}\n\
               fn p(f: fn(u8)) {}\ntrait T { fn decl(&self); }\n#[cfg(test)]\nmod t {\n}\n\
               #[cfg(test)]\nmod more;\n#[doc(hidden)]\n#[inline]\npub unsafe fn h() {}";
    let (code, names) = strip_test_mods(&blank_literals(src));
    let found =
        r#"([("a", 1, 1), ("b", 2, 3), ("p", 5, 1), ("h", 14, 1)], ["more"], [(204, "h")])"#;
    let seen = (functions(&code), names, hidden_pub_fns(&code));
    assert_eq!(format!("{seen:?}"), found);
    let figures =
        "/// 120 ns|/// 1.5 µs|//! (10.4 M items/s)|/// 3 GB/s.|/// 11x|/// 4 times faster";
    for line in figures.split('|').chain(["/// (3× CPython)"]) {
        assert!(bench_figure(line).is_some(), "{line}");
    }
    for line in "/// `ceil(len / (4 × processes))`|/// 100 ms, 1 s|/// 0x10, 2 x86".split('|') {
        assert!(bench_figure(line).is_none(), "{line}");
    }
    let code = blank_literals(
        "use crate::{a::X, b};\nuse super::c::Y;\nfn f() { crate::d::g(); $crate::e::h(); }\n\
         mod inner { use super::super::f; use super::g; }\npub(crate) fn p() {}",
    );
    let names: Vec<String> = module_refs(&code, 1).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["a", "b", "d", "c", "f"]);
    let mut edges = Edges::new();
    for (x, y) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        edges.insert((x.into(), y.into()), ("f.rs".into(), 1));
    }
    assert_eq!(cycles(&edges), [["a", "b", "c"].map(String::from).into()]);
    edges.remove(&("c".into(), "a".into()));
    assert!(cycles(&edges).is_empty());
    let doc = "| crate | uses |\n|---|---|\n| `mp-a`, `mp-b` | `mp-core` |\n\
               | `mp` | every crate above (`mp-b` only with the feature `b`) |\n\nafter";
    let rows = table(doc, "uses");
    let uses = uses_of(&rows[1].2, &rows[0].1.iter().cloned().collect());
    assert_eq!((rows.len(), rows[0].0, uses.len()), (2, 3, 2));
}
