//! The optional progress bar (cargo feature `progress`).

/// The bar's style: with a length (a bar and the ETA) or without (a spinner with a count).
pub(crate) fn style(known: bool) -> indicatif::ProgressStyle {
    let template = if known {
        "{bar:40} {pos}/{len} items [{elapsed_precise} < {eta_precise}, {per_sec}]"
    } else {
        "{spinner} {pos} items [{elapsed_precise}, {per_sec}]"
    };
    indicatif::ProgressStyle::with_template(template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
}

/// A bar for `len` items (a spinner with a count when the length is unknown).
pub(crate) fn bar(len: Option<u64>) -> indicatif::ProgressBar {
    let b = match len {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    b.set_style(style(len.is_some()));
    b
}
