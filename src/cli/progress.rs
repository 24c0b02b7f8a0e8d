//! What `prefetch` shows while it works, on stderr: progress bars on a terminal, one plain
//! line per manifest and blob otherwise (logs, CI).

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::human_bytes;
use crate::reference::Digest;

/// Progress for a whole run.
pub struct Progress {
    bars: Option<Bars>,
}

struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    blob_style: ProgressStyle,
}

/// How one blob ended.
pub enum BlobEnd<'a> {
    /// Fetched from upstream (bytes).
    Fetched(u64),
    /// Already in the store (bytes).
    Stored(u64),
    Failed(&'a str),
}

/// Progress of one blob.
pub struct BlobProgress<'p> {
    bar: Option<ProgressBar>,
    progress: &'p Progress,
    label: String,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// `sha256:0123456789ab`: enough to tell blobs apart on a bar.
fn short(digest: &Digest) -> String {
    format!(
        "{}:{}",
        digest.algorithm().as_str(),
        &digest.hex()[..12.min(digest.hex().len())]
    )
}

impl Progress {
    /// Bars when `interactive` (stderr is a terminal), plain lines otherwise.
    pub fn new(interactive: bool) -> Self {
        let bars = interactive.then(|| {
            let multi = MultiProgress::new();
            // Shown from `expect` on, once the blobs to fetch are known.
            let overall = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden())
                .with_style(style(
                "{prefix:>9} [{bar:40.green/white}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ));
            overall.set_prefix("total");
            Bars {
                multi,
                overall,
                blob_style: style("{prefix:>22} [{bar:40.cyan/blue}] {bytes}/{total_bytes}"),
            }
        });
        Self { bars }
    }

    /// A message above the bars, or a line on stderr.
    pub fn line(&self, text: String) {
        match &self.bars {
            Some(b) => {
                if b.multi.println(&text).is_err() {
                    eprintln!("{text}");
                }
            }
            None => eprintln!("{text}"),
        }
    }

    /// Announces the bytes about to be fetched and shows the overall bar (call it once).
    pub fn expect(&self, bytes: u64) {
        if let Some(b) = &self.bars {
            b.multi.add(b.overall.clone());
            b.overall.inc_length(bytes);
        }
    }

    /// Starts showing a blob of `size` bytes (as the manifest says).
    pub fn blob(&self, image: &str, digest: &Digest, size: u64) -> BlobProgress<'_> {
        let bar = self.bars.as_ref().map(|b| {
            let bar = b
                .multi
                .insert_from_back(1, ProgressBar::new(size).with_style(b.blob_style.clone()));
            bar.set_prefix(short(digest));
            bar
        });
        BlobProgress {
            bar,
            progress: self,
            label: format!("{image} {digest}"),
        }
    }

    /// Removes the bars (before the summary is printed).
    pub fn finish(&self) {
        if let Some(b) = &self.bars {
            b.overall.finish_and_clear();
            let _ = b.multi.clear();
        }
    }
}

impl BlobProgress<'_> {
    /// `n` more bytes arrived.
    pub fn advance(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
        if let Some(b) = &self.progress.bars {
            b.overall.inc(n);
        }
    }

    /// The blob is done: one line says how.
    pub fn end(self, end: BlobEnd<'_>) {
        if let Some(bar) = &self.bar {
            if let (BlobEnd::Stored(n), Some(b)) = (&end, &self.progress.bars) {
                b.overall.inc(*n);
            }
            bar.finish_and_clear();
            if let Some(b) = &self.progress.bars {
                b.multi.remove(bar);
            }
        }
        let text = match end {
            BlobEnd::Fetched(n) => format!("prefetch {} {} done", self.label, human_bytes(n)),
            BlobEnd::Stored(n) => {
                format!("prefetch {} {} already stored", self.label, human_bytes(n))
            }
            BlobEnd::Failed(why) => format!("prefetch {} FAILED: {why}", self.label),
        };
        self.progress.line(text);
    }
}
