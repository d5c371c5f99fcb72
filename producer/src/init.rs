//! `fschain init`: a new root with its genesis block.

use std::path::Path;
use std::process::Command;

use fschain_schema::{BlockHeader, ChainName, HeaderDraft};
use fschain_store::layout::{
    write_atomic, ChainMeta, RootLayout, CHAIN_FILE, EVENTS_LOG, HEADERS_LOG,
};
use fschain_store::state_path::STATES_DIR;
use fschain_store::{btrfs, IoContext, StoreError};
use tracing::warn;

use crate::writer::Clock;
use crate::ProducerError;

/// Creates a root at `root` (which must be on btrfs) with block 0.
pub fn init_root(
    root: &Path,
    chain: ChainName,
    clock: &mut dyn Clock,
) -> Result<BlockHeader, ProducerError> {
    std::fs::create_dir_all(root).at(root)?;
    if !btrfs::is_btrfs(root)? {
        return Err(StoreError::NotBtrfs {
            path: root.to_owned(),
        }
        .into());
    }
    let layout = RootLayout::new(root);
    if let Ok(meta) = layout.read_marker() {
        return Err(StoreError::AlreadyARoot {
            path: root.to_owned(),
            chain: meta.chain.to_string(),
        }
        .into());
    }
    // No marker: anything here is a previous init that did not finish.
    let layer = layout.layer();
    let blocks = layout.blocks_dir();
    if layer.exists() || blocks.exists() {
        warn!(root = %root.display(), "removing the leftovers of an interrupted init");
        if layer.exists() {
            btrfs::delete_subvolume(&layer)?;
        }
        if blocks.exists() {
            for height in layout.snapshot_heights()? {
                btrfs::delete_subvolume(&layout.snapshot(height))?;
            }
            std::fs::remove_dir_all(&blocks).at(&blocks)?;
        }
    }
    let meta_dir = layout.meta_dir();
    std::fs::create_dir_all(&meta_dir).at(&meta_dir)?;
    let _lock = fschain_store::layout::lock(&layout)?;

    let meta = ChainMeta::new(chain.clone());
    btrfs::create_subvolume(&layer)?;
    std::fs::write(layer.join(CHAIN_FILE), meta.to_bytes()).at(&layer)?;
    std::fs::write(layer.join(EVENTS_LOG), b"").at(&layer)?;
    std::fs::create_dir(layer.join(STATES_DIR)).at(&layer)?;
    // The states are stored compressed, and travel so. The logs are not:
    // every block's events are read back, by `publish` and by a site's
    // verification, and a 200 MB change's log cost more to inflate there
    // (and 1.6 s more to compress in `apply`) than zstd spends on it in
    // `publish`. (`verify` shares compressed log bytes exactly too, for
    // file systems mounted with `compress`.)
    btrfs::set_compression(&layer.join(STATES_DIR), btrfs::STATES_COMPRESSION)?;
    let genesis = HeaderDraft::genesis(chain, clock.now()).seal()?;
    let mut line = genesis.to_canonical()?;
    line.push(b'\n');
    std::fs::write(layer.join(HEADERS_LOG), line).at(&layer)?;
    std::fs::create_dir(&blocks).at(&blocks)?;
    btrfs::snapshot(&layer, &layout.snapshot(0), true)?;
    if !layout.signing_key().exists() {
        crate::keys::create_signing_key(&layout)?;
    }
    write_atomic(&layout.marker(), &meta.to_bytes())?;
    Ok(genesis)
}

/// Creates an image file of `size` bytes, allocated in full (see
/// [`btrfs::create_image`]), formats it as btrfs and loop-mounts it at
/// `mountpoint` without discard, so that it never grows (needs root).
pub fn make_loop_filesystem(
    image: &Path,
    size: u64,
    mountpoint: &Path,
) -> Result<(), ProducerError> {
    btrfs::create_image(image, size)?;
    run(
        Command::new("mkfs.btrfs").arg("-q").arg("-f").arg(image),
        "mkfs.btrfs",
    )?;
    std::fs::create_dir_all(mountpoint).at(mountpoint)?;
    run(
        Command::new("mount")
            .arg("-o")
            .arg("loop,nodiscard")
            .arg(image)
            .arg(mountpoint),
        "mount -o loop",
    )
}

fn run(command: &mut Command, what: &str) -> Result<(), ProducerError> {
    let output = command.output().map_err(|e| ProducerError::Command {
        what: what.into(),
        message: format!("{e} (is btrfs-progs installed?)"),
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ProducerError::Command {
            what: what.into(),
            message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}
