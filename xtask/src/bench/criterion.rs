//! Reading criterion's results: `estimates.json` of each benchmark id, with a tiny field
//! extractor (xtask uses only the standard library).

use std::path::Path;

use super::specs::Unit;

/// Criterion's output directory of this run (`target/bench/criterion`).
pub(super) struct Criterion<'a> {
    pub(super) home: &'a Path,
}

impl Criterion<'_> {
    /// Median time per iteration (ns) and the throughput per iteration (elements or bytes).
    pub(super) fn get(&self, id: &str) -> Option<(f64, Option<f64>)> {
        let dir = self.home.join(id).join("new");
        let est = std::fs::read_to_string(dir.join("estimates.json")).ok()?;
        let median = &est[est.find("\"median\"")?..];
        let ns = json_number_field(median, "point_estimate")?;
        let bench = std::fs::read_to_string(dir.join("benchmark.json")).unwrap_or_default();
        let per_iter = ["\"Elements\":", "\"Bytes\":"].iter().find_map(|k| {
            let at = bench.find(k)? + k.len();
            leading_number(&bench[at..])
        });
        (ns > 0.0).then_some((ns, per_iter))
    }

    /// The value of `id` in `unit`.
    pub(super) fn value(&self, id: &str, unit: Unit) -> Option<f64> {
        let (ns, per) = self.get(id)?;
        Some(match unit {
            Unit::Ns => ns,
            Unit::Us => ns / 1e3,
            Unit::Msgs | Unit::Items | Unit::Ops => per.unwrap_or(1.0) * 1e9 / ns,
            Unit::GBps => per.unwrap_or(0.0) / ns,
            Unit::Speedup => return None,
        })
    }

    /// time(first) / time(second).
    pub(super) fn speedup(&self, one: &str, two: &str) -> Option<f64> {
        Some(self.get(one)?.0 / self.get(two)?.0)
    }
}

/// A machine limit's value for one placement, converted to `unit`.
pub(super) fn limit_value(
    c: &Criterion<'_>,
    group: &str,
    placement: &str,
    unit: Unit,
) -> Option<f64> {
    if unit == Unit::Speedup {
        c.speedup(
            &format!("{group}/1p/{placement}"),
            &format!("{group}/2p/{placement}"),
        )
    } else {
        c.value(&format!("{group}/bare/{placement}"), unit)
    }
}

/// The string value of `"key": "..."` in a line of JSON (no escapes in the values read here).
pub(super) fn json_string_field(s: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\":\"");
    let start = s.find(&pat)? + pat.len();
    let mut out = String::new();
    let mut chars = s[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    None
}

/// The number value of `"key": n` in a JSON text.
pub(super) fn json_number_field(s: &str, key: &str) -> Option<f64> {
    let pat = format!("\"{key}\":");
    let at = s.find(&pat)? + pat.len();
    leading_number(&s[at..])
}

/// The number at the start of `s` (after blanks), as JSON writes it.
pub(super) fn leading_number(s: &str) -> Option<f64> {
    let s = s.trim_start();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
        .unwrap_or(s.len());
    s[..end].parse().ok()
}
