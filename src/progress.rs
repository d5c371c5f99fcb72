//! Progress of a long command on stderr: a bar with its total and ETA
//! (indicatif) when stderr is a terminal, else a plain line every few
//! seconds, so logs of a service or a CI run stay readable.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// What a position counts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Unit {
    Blocks,
    Bytes,
    Files,
    Snapshots,
}

/// One long command's progress.
#[derive(Debug)]
pub(crate) struct Progress {
    what: &'static str,
    unit: Unit,
    total: Option<u64>,
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Option<Instant>,
}

/// How often the plain line is written.
const LINE_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    pub(crate) fn new(what: &'static str, unit: Unit, total: Option<u64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = total.map_or_else(ProgressBar::new_spinner, ProgressBar::new);
            bar.set_style(style(unit, total.is_some()));
            bar.set_prefix(what);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            what,
            unit,
            total,
            bar,
            started: Instant::now(),
            last_line: None,
        }
    }

    pub(crate) fn set_total(&mut self, total: u64) {
        let first = self.total.is_none();
        self.total = Some(total);
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            if first {
                bar.set_style(style(self.unit, true));
            }
        }
    }

    /// The position now, and a word on where it is.
    pub(crate) fn set(&mut self, position: u64, detail: &str) {
        if let Some(bar) = &self.bar {
            bar.set_position(position);
            bar.set_message(detail.to_owned());
            return;
        }
        let now = Instant::now();
        if self
            .last_line
            .is_some_and(|t| now.duration_since(t) < LINE_EVERY)
        {
            return;
        }
        if self.last_line.is_none() && now.duration_since(self.started) < LINE_EVERY {
            return;
        }
        self.last_line = Some(now);
        eprintln!("{}", self.line(position, detail, now));
    }

    fn line(&self, position: u64, detail: &str, now: Instant) -> String {
        let unit = match self.unit {
            Unit::Blocks => "blocks",
            Unit::Bytes => "bytes",
            Unit::Files => "files",
            Unit::Snapshots => "snapshots",
        };
        let elapsed = now.duration_since(self.started).as_secs_f64();
        let mut text = match self.total {
            Some(total) => format!("{}: {position}/{total} {unit}", self.what),
            None => format!("{}: {position} {unit}", self.what),
        };
        if let Some(total) = self.total.filter(|&t| t > 0 && position > 0) {
            let rate = position as f64 / elapsed.max(1e-3);
            let left = total.saturating_sub(position) as f64 / rate;
            text.push_str(&format!(
                " ({:.0}%, ETA {:.0} s)",
                100.0 * position as f64 / total as f64,
                left
            ));
        }
        if !detail.is_empty() {
            text.push_str(&format!(" {detail}"));
        }
        text
    }

    pub(crate) fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A bar with its total and ETA, or a spinner with a count.
fn style(unit: Unit, with_total: bool) -> ProgressStyle {
    let template = match (unit, with_total) {
        (Unit::Bytes, true) => {
            "{prefix} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}) ETA {eta}"
        }
        (Unit::Bytes, false) => "{prefix} {spinner} {bytes} ({bytes_per_sec})",
        (_, true) => "{prefix} [{bar:30}] {pos}/{len} ETA {eta} {msg}",
        (_, false) => "{prefix} {spinner} {pos} {msg}",
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_line_names_the_total_share_and_eta() {
        let mut p = Progress::new("replay", Unit::Blocks, None);
        p.bar = None;
        let later = p.started + Duration::from_secs(10);
        assert_eq!(p.line(5, "", later), "replay: 5 blocks");
        p.set_total(20);
        assert_eq!(
            p.line(5, "host1 4", later),
            "replay: 5/20 blocks (25%, ETA 30 s) host1 4"
        );
    }
}
