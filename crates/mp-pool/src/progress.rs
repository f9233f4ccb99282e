//! The optional progress bar (cargo feature `progress`).

/// A bar for `len` items (a spinner with a count when the length is unknown, as for `imap`).
pub(crate) fn bar(len: Option<u64>) -> indicatif::ProgressBar {
    match len {
        Some(n) => {
            let b = indicatif::ProgressBar::new(n);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} items [{elapsed_precise} < {eta_precise}, {per_sec}]",
            ) {
                b.set_style(style);
            }
            b
        }
        None => {
            let b = indicatif::ProgressBar::new_spinner();
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{spinner} {pos} items [{elapsed_precise}, {per_sec}]",
            ) {
                b.set_style(style);
            }
            b
        }
    }
}
