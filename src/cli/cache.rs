//! `stevedore cache`: inspects and maintains a store directory directly, without a server.
//!
//! These commands may run while a server uses the same store: reading is always safe, and
//! removing (`gc`, `verify --repair`) is safe for the server's readers, because a file that is
//! open stays readable after it is removed (POSIX unlink). A removed item is fetched again on
//! its next pull.

use std::path::PathBuf;
use std::process::ExitCode;

use futures_util::{StreamExt as _, stream};

use super::{CliError, LoadedConfig, Out, human_bytes, load_config, runtime};
use crate::config::ByteSize;
use crate::store::maintenance::{self, StoreDir, StoredItem};

/// `stevedore cache …`.
#[derive(Debug, clap::Subcommand)]
pub enum CacheCommand {
    /// Store path, item count, total size, max size and known repositories.
    Stats {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON (exact byte counts) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Every stored item (digest, size, media type of manifests) and every known repository.
    Ls {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Re-hash every stored item and report those whose content does not match its digest.
    #[command(
        after_help = "Exit status: 0 when every item matches its digest, 1 when any \
        does not (also with --repair), 2 when the store cannot be read."
    )]
    Verify {
        #[command(flatten)]
        config: ConfigArg,
        /// Remove the items that do not match (they are fetched again on their next pull).
        #[arg(long)]
        repair: bool,
    },
    /// Remove least-recently-used items (by file access time) until the store fits.
    #[command(
        after_help = "Running gc against the store of a live server is safe for its \
        readers: files that are open stay readable after they are removed, and a removed item \
        is fetched again on its next pull. The server's own size accounting catches up when it \
        restarts."
    )]
    Gc {
        #[command(flatten)]
        config: ConfigArg,
        /// Largest total size to keep, e.g. 500MiB or 20GiB (default: the config's
        /// store.max-size).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_size: Option<ByteSize>,
    },
}

/// `--config`, as `serve` takes it.
#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Configuration file (TOML) whose `[store] path` names the store.
    #[arg(long, short, env = "STEVEDORE_CONFIG")]
    pub config: Option<PathBuf>,
}

fn parse_size(raw: &str) -> Result<ByteSize, String> {
    ByteSize::parse(raw)
}

/// What `cache stats --json` prints.
#[derive(Debug, serde::Serialize)]
struct Stats {
    path: String,
    items: usize,
    bytes: u64,
    max_bytes: u64,
    repositories: usize,
    temp_files: usize,
}

/// Runs a `cache` subcommand.
pub fn run(command: CacheCommand) -> Result<ExitCode, CliError> {
    match command {
        CacheCommand::Stats { config, json } => stats(&open(&config)?, json),
        CacheCommand::Ls { config } => ls(&open(&config)?.1),
        CacheCommand::Verify { config, repair } => verify(&open(&config)?.1, repair),
        CacheCommand::Gc { config, max_size } => {
            let (loaded, store) = open(&config)?;
            gc(&store, max_size.unwrap_or(loaded.config.store.max_size).0)
        }
    }
}

fn open(arg: &ConfigArg) -> Result<(LoadedConfig, StoreDir), CliError> {
    let loaded = load_config(arg.config.as_deref())?;
    let path = loaded.store_path("cache")?;
    let store = StoreDir::open(&path).map_err(|e| {
        CliError::setup(format!(
            "cannot open the store at {} (from {}): {e}",
            path.display(),
            loaded.source
        ))
    })?;
    Ok((loaded, store))
}

fn read_error(store: &StoreDir, e: std::io::Error) -> CliError {
    CliError::setup(format!(
        "cannot read the store at {}: {e}",
        store.root().display()
    ))
}

fn stats((loaded, store): &(LoadedConfig, StoreDir), json: bool) -> Result<ExitCode, CliError> {
    let mut out = Out::default();
    let listing = store.list().map_err(|e| read_error(store, e))?;
    let s = Stats {
        path: store.root().display().to_string(),
        items: listing.items.len(),
        bytes: listing.items.iter().map(|i| i.size).sum(),
        max_bytes: loaded.config.store.max_size.0,
        repositories: store.repositories().len(),
        temp_files: store.temp_files().map_err(|e| read_error(store, e))?,
    };
    if json {
        let text = serde_json::to_string_pretty(&s)
            .map_err(|e| CliError::failed(format!("cannot print JSON: {e}")))?;
        out.line(text);
    } else {
        out.line(format!("store         {}", s.path));
        out.line(format!("items         {}", s.items));
        out.line(format!(
            "size          {} ({} bytes) of {} max",
            human_bytes(s.bytes),
            s.bytes,
            human_bytes(s.max_bytes)
        ));
        out.line(format!("repositories  {}", s.repositories));
        out.line(format!(
            "temp files    {} (fills in progress or interrupted)",
            s.temp_files
        ));
    }
    Ok(ExitCode::SUCCESS)
}

fn ls(store: &StoreDir) -> Result<ExitCode, CliError> {
    let mut out = Out::default();
    let mut items = store.list().map_err(|e| read_error(store, e))?.items;
    items.sort_by(|a, b| a.digest.cmp(&b.digest));
    out.line(format!("{:<71}  {:>12}  MEDIA TYPE", "DIGEST", "SIZE"));
    for item in &items {
        out.line(format!(
            "{:<71}  {:>12}  {}",
            item.digest.to_string(),
            item.size,
            item.media_type.as_deref().unwrap_or("-")
        ));
    }
    let total: u64 = items.iter().map(|i| i.size).sum();
    out.line(format!("{} items, {}", items.len(), human_bytes(total)));
    let repos = store.repositories();
    out.line(format!("\nREPOSITORIES ({})", repos.len()));
    for repo in repos {
        out.line(repo);
    }
    Ok(ExitCode::SUCCESS)
}

/// One item whose content does not match its digest.
struct Bad {
    item: StoredItem,
    actual: String,
}

fn verify(store: &StoreDir, repair: bool) -> Result<ExitCode, CliError> {
    let mut out = Out::default();
    let listing = store.list().map_err(|e| read_error(store, e))?;
    let temp_files = store.temp_files().map_err(|e| read_error(store, e))?;
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let checked: Vec<Result<Option<Bad>, String>> = runtime()?.block_on(
        stream::iter(listing.items.iter().cloned())
            .map(|item| async move {
                let (path, algorithm) = (item.path.clone(), item.digest.algorithm());
                let hashed =
                    tokio::task::spawn_blocking(move || maintenance::rehash(&path, algorithm))
                        .await
                        .map_err(|e| {
                            format!("{}: hashing task failed: {e}", item.path.display())
                        })?;
                match hashed {
                    Ok(actual) if actual == item.digest => Ok(None),
                    Ok(actual) => Ok(Some(Bad {
                        item,
                        actual: actual.to_string(),
                    })),
                    // Evicted by a running server meanwhile: nothing to verify.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(format!("{}: {e}", item.path.display())),
                }
            })
            .buffer_unordered(workers)
            .collect(),
    );
    let (mut bad, mut unreadable) = (0usize, 0usize);
    let mut removed = 0usize;
    for result in checked {
        match result {
            Ok(None) => {}
            Ok(Some(Bad { item, actual })) => {
                bad += 1;
                out.line(format!(
                    "BAD {}: expected {}, actual {actual}",
                    item.path.display(),
                    item.digest
                ));
                if repair {
                    match store.remove(&item.digest) {
                        Ok(()) => {
                            removed += 1;
                            out.line(format!("removed {}", item.path.display()));
                        }
                        Err(e) => {
                            eprintln!("stevedore: cannot remove {}: {e}", item.path.display())
                        }
                    }
                }
            }
            Err(e) => {
                unreadable += 1;
                eprintln!("stevedore: cannot read {e}");
            }
        }
    }
    for path in &listing.unrecognised {
        out.line(format!("unrecognised file {}", path.display()));
    }
    let total: u64 = listing.items.iter().map(|i| i.size).sum();
    out.line(format!(
        "verified {} items ({}): {bad} bad{}{}, {} unrecognised files, {temp_files} temp files \
         (fills in progress or interrupted)",
        listing.items.len(),
        human_bytes(total),
        if repair {
            format!(" ({removed} removed)")
        } else {
            String::new()
        },
        if unreadable > 0 {
            format!(", {unreadable} unreadable")
        } else {
            String::new()
        },
        listing.unrecognised.len()
    ));
    Ok(if bad + unreadable > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn gc(store: &StoreDir, max: u64) -> Result<ExitCode, CliError> {
    let mut out = Out::default();
    let evicted = store.evict_to(max).map_err(|e| read_error(store, e))?;
    for item in &evicted.removed {
        out.line(format!(
            "removed {} {}",
            item.digest,
            human_bytes(item.size)
        ));
    }
    for (item, why) in &evicted.failed {
        eprintln!("stevedore: cannot remove {}: {why}", item.path.display());
    }
    let left = store.list().map_err(|e| read_error(store, e))?.items;
    out.line(format!(
        "removed {} items ({}); the store now holds {} items ({}) of {} max",
        evicted.removed.len(),
        human_bytes(evicted.bytes),
        left.len(),
        human_bytes(left.iter().map(|i| i.size).sum()),
        human_bytes(max)
    ));
    Ok(if evicted.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
