//! The SVG chart of a run: mp against CPython and the machine's limit, per workload (written by
//! hand, like the JSON: xtask has no dependencies).

use std::fmt::Write as _;

use super::report::{sig3, Env, MpCell, Row};

/// A horizontal bar chart of the ratios on a log scale (1/10000 to 1000), one band per
/// workload and placement: mp/CPython, mp/limit and CPython/limit.
pub(super) fn svg(env: &Env, rows: &[Row]) -> String {
    let (left, width, band, top) = (300.0, 600.0, 42.0, 70.0);
    let height = top + band * rows.len() as f64 + 60.0;
    let x = |r: f64| left + (r.log10().clamp(-4.0, 3.0) + 4.0) / 7.0 * width;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="12">"#,
        w = left + width + 40.0
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="15" font-weight="bold">mp performance ratios (log scale; right of 1× is better for the first named)</text>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="38">{}</text>"#,
        xml(&format!(
            "{} · {} · git {} · {}{}",
            env.cpu,
            env.rustc,
            env.git_rev,
            env.date,
            if env.quick { " · --quick" } else { "" }
        ))
    );
    let legend = [
        ("#1f77b4", "mp / CPython"),
        ("#ff7f0e", "mp / limit"),
        ("#999999", "CPython / limit"),
    ];
    for (i, (c, l)) in legend.iter().enumerate() {
        let lx = left + i as f64 * 160.0;
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="48" width="12" height="10" fill="{c}"/><text x="{}" y="57">{l}</text>"#,
            lx + 16.0
        );
    }
    for d in -4..=3 {
        let gx = x(10f64.powi(d));
        let (stroke, w) = if d == 0 { ("#000", 1.5) } else { ("#ddd", 1.0) };
        let _ = writeln!(
            s,
            r#"<line x1="{gx}" y1="{top}" x2="{gx}" y2="{}" stroke="{stroke}" stroke-width="{w}"/><text x="{gx}" y="{}" text-anchor="middle">{}</text>"#,
            top + band * rows.len() as f64,
            top + band * rows.len() as f64 + 16.0,
            if d >= 0 {
                format!("{}×", 10f64.powi(d))
            } else {
                format!("1/{}", 10f64.powi(-d))
            }
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let y = top + band * i as f64;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{} · {}</text>"#,
            left - 8.0,
            y + band / 2.0 + 4.0,
            xml(r.spec.name),
            r.placement
        );
        let bars = [
            ("#1f77b4", r.vs_cpython()),
            ("#ff7f0e", r.vs_limit()),
            ("#999999", r.cpython_vs_limit()),
        ];
        for (j, (c, v)) in bars.iter().enumerate() {
            let by = y + 6.0 + j as f64 * 10.0;
            if let Some(v) = v {
                let (a, b) = (x(1.0), x(*v));
                let _ = writeln!(
                    s,
                    r#"<rect x="{}" y="{by}" width="{}" height="9" fill="{c}"><title>{}</title></rect>"#,
                    a.min(b),
                    (a - b).abs().max(1.0),
                    sig3(*v)
                );
                let (tx, anchor) = if *v >= 1.0 {
                    (b + 3.0, "start")
                } else {
                    (b - 3.0, "end")
                };
                let _ = writeln!(
                    s,
                    r#"<text x="{tx}" y="{}" font-size="9" text-anchor="{anchor}">{}×</text>"#,
                    by + 8.0,
                    sig3(*v)
                );
            } else if j == 0 {
                let why = match r.mp {
                    MpCell::NotBuilt(k) => format!("mp not built ({k})"),
                    MpCell::Failed => "mp failed".into(),
                    MpCell::Value(_) => "no CPython number".into(),
                };
                let _ = writeln!(
                    s,
                    r##"<text x="{}" y="{}" fill="#c00">{}</text>"##,
                    x(1.0) + 6.0,
                    by + 9.0,
                    xml(&why)
                );
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

/// Escapes text for an SVG attribute or element.
pub(super) fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
