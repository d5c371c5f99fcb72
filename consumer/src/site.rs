//! A site's store: one fschain root per chain under `SITE/<chain>/`, with
//! no layer, and the adapter that turns a complete, verified stream into a
//! block of that chain.
//!
//! Applying a block: hash the spooled chunks against the signed stream hash
//! (nothing reaches `btrfs receive` before that), decompress into `btrfs
//! receive` under `blocks/.incoming-<height>`, verify the received snapshot
//! against the signed header, then rename it into place (same directory:
//! a received read-only subvolume cannot move to another one). A crash at
//! any point leaves at most an `.incoming-*` subvolume, which the next start
//! deletes; the Kafka offset is committed only after the rename.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use fschain_schema::{BlockHeader, ChainName, Digest, StreamHash};
use fschain_store::layout::{write_atomic, ChainMeta, ReplicaMeta, RootLayout};
use fschain_store::{btrfs, verify_received, ChainDir, IoContext, StoreError, VerifiedLogs};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tracing::{debug, info, warn};

use crate::assembler::{ReadyBlock, StreamKey};
use crate::ConsumerError;

pub const SITE_MARKER: &str = "fschain.site";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteMeta {
    site: String,
}

/// A site's directory.
#[derive(Debug, Clone)]
pub struct Site {
    root: PathBuf,
    name: String,
}

impl Site {
    /// Opens the site at `root`, creating it if the directory is new or
    /// empty. A root that belongs to another site is refused.
    pub fn open(root: &Path, name: &str) -> Result<Self, ConsumerError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(ConsumerError::BadSiteName { name: name.into() });
        }
        std::fs::create_dir_all(root).at(root)?;
        if !btrfs::is_btrfs(root)? {
            return Err(StoreError::NotBtrfs {
                path: root.to_owned(),
            }
            .into());
        }
        let marker = root.join(SITE_MARKER);
        match std::fs::read(&marker) {
            Ok(bytes) => {
                let meta: SiteMeta =
                    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                        path: marker.clone(),
                        why: e.to_string(),
                    })?;
                if meta.site != name {
                    return Err(ConsumerError::OtherSite {
                        root: root.to_owned(),
                        site: meta.site,
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let body = serde_json::json!({ "site": name }).to_string();
                write_atomic(&marker, body.as_bytes())?;
            }
            Err(e) => return Err(StoreError::io(&marker, e).into()),
        }
        Ok(Site {
            root: root.to_owned(),
            name: name.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The chains this site holds a copy of.
    pub fn chains(&self) -> Result<Vec<ChainName>, ConsumerError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.root).at(&self.root)? {
            let entry = entry.at(&self.root)?;
            if let Some(name) = entry.file_name().to_str() {
                if let Ok(chain) = name.parse::<ChainName>() {
                    if RootLayout::new(entry.path()).marker().exists() {
                        out.push(chain);
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The site's copy of `chain` (created on first use), recovered from
    /// any interrupted receive.
    pub fn chain(&self, chain: &ChainName) -> Result<SiteChain, ConsumerError> {
        let layout = RootLayout::new(self.root.join(chain.as_str()));
        let blocks = layout.blocks_dir();
        std::fs::create_dir_all(&blocks).at(&blocks)?;
        std::fs::create_dir_all(layout.meta_dir()).at(&layout.meta_dir())?;
        if !layout.replica().exists() {
            self.write_replica(&layout, 0)?;
        }
        if !layout.marker().exists() {
            write_atomic(&layout.marker(), &ChainMeta::new(chain.clone()).to_bytes())?;
        }
        let site_chain = SiteChain {
            layout,
            chain: chain.clone(),
            site: self.clone(),
            verified: None,
            hashing: HashMap::new(),
        };
        site_chain.recover()?;
        Ok(site_chain)
    }
}

impl Site {
    fn write_replica(&self, layout: &RootLayout, base: u64) -> Result<(), ConsumerError> {
        let meta = ReplicaMeta {
            site: self.name.clone(),
            base,
        };
        let bytes = serde_json::to_vec(&meta).map_err(|e| StoreError::Corrupt {
            path: layout.replica(),
            why: e.to_string(),
        })?;
        write_atomic(&layout.replica(), &bytes)?;
        Ok(())
    }
}

/// One chain at a site.
#[derive(Debug)]
pub struct SiteChain {
    layout: RootLayout,
    chain: ChainName,
    site: Site,
    /// The replayed logs of the newest block verified here, so the next
    /// block is checked from where it ended (rebuilt from the snapshot by
    /// a full check after a restart).
    verified: Option<VerifiedLogs>,
    /// Each spooled stream's hash so far, over its chunks in order, taken
    /// as they are spooled so that applying it does not read it twice.
    hashing: HashMap<StreamKey, StreamHashing>,
}

/// The hash of a stream's first `next` chunks.
#[derive(Debug, Default)]
struct StreamHashing {
    next: u32,
    hasher: Sha256,
    bytes: u64,
}

impl StreamHashing {
    /// Takes chunk `index`, just spooled in `dir` with bytes `data`.
    fn spooled(&mut self, dir: &Path, index: u32, data: &[u8]) -> Result<(), ConsumerError> {
        if index < self.next {
            // Its stream was started again (chunks that disagreed with the
            // signed manifest were set aside, and their places are being
            // spooled anew): hash it again from disk.
            *self = StreamHashing::default();
        }
        if index == self.next {
            self.take(data);
            self.next += 1;
            // Chunks that came early are on disk: take them now too.
            self.catch_up(dir)?;
        }
        Ok(())
    }

    /// Hashes the chunks spooled in `dir` from `next` on, up to the first
    /// one that has not come yet.
    fn catch_up(&mut self, dir: &Path) -> Result<(), ConsumerError> {
        // Most calls find no chunk waiting: the buffer is made on the first.
        let mut buf = Vec::new();
        loop {
            let p = dir.join(format!("{:08}", self.next));
            let mut f = match File::open(&p) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(StoreError::io(&p, e).into()),
            };
            buf.resize(1 << 16, 0);
            loop {
                let n = f.read(&mut buf).at(&p)?;
                if n == 0 {
                    break;
                }
                self.take(&buf[..n]);
            }
            self.next += 1;
        }
    }

    fn take(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
    }
}

impl SiteChain {
    pub fn layout(&self) -> &RootLayout {
        &self.layout
    }

    pub fn chain(&self) -> &ChainName {
        &self.chain
    }

    /// The newest block this site holds.
    pub fn held(&self) -> Result<Option<u64>, ConsumerError> {
        Ok(self.layout.snapshot_heights()?.last().copied())
    }

    fn spool_dir(&self) -> PathBuf {
        self.layout.meta_dir().join("spool")
    }

    fn stream_dir(&self, key: &StreamKey) -> PathBuf {
        self.spool_dir()
            .join(format!("{:010}-{}", key.height, key.stream.to_hex()))
    }

    /// Deletes what an interrupted receive left: staging subvolumes, and any
    /// block subvolume that is not read-only or has no received UUID. The
    /// spool goes too: whatever it held is re-read from the committed offset.
    pub fn recover(&self) -> Result<(), ConsumerError> {
        let blocks = self.layout.blocks_dir();
        for entry in std::fs::read_dir(&blocks).at(&blocks)? {
            let entry = entry.at(&blocks)?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let staging = name.starts_with(".incoming-");
            let broken = !staging
                && fschain_store::layout::parse_snapshot_name(&name).is_some()
                && (!btrfs::is_readonly(&path).unwrap_or(false)
                    || btrfs::received_uuid(&path)?.is_none());
            if staging || broken {
                warn!(chain = %self.chain, path = %path.display(), "deleting an interrupted receive");
                if btrfs::is_subvolume(&path) {
                    if btrfs::is_readonly(&path).unwrap_or(false) {
                        btrfs::set_readonly(&path, false)?;
                    }
                    btrfs::delete_subvolume(&path)?;
                } else {
                    std::fs::remove_dir_all(&path).at(&path)?;
                }
            }
        }
        let spool = self.spool_dir();
        if spool.exists() {
            std::fs::remove_dir_all(&spool).at(&spool)?;
        }
        Ok(())
    }

    /// Keeps one chunk's bytes on disk until its stream is complete.
    pub fn spool_chunk(
        &mut self,
        key: &StreamKey,
        index: u32,
        data: &[u8],
    ) -> Result<(), ConsumerError> {
        let dir = self.stream_dir(key);
        std::fs::create_dir_all(&dir).at(&dir)?;
        let path = dir.join(format!("{index:08}"));
        std::fs::write(&path, data).at(&path)?;
        self.hashing
            .entry(*key)
            .or_default()
            .spooled(&dir, index, data)
    }

    /// Forgets a stream's spooled chunks.
    pub fn drop_spool(&mut self, key: &StreamKey) {
        self.hashing.remove(key);
        let dir = self.stream_dir(key);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != io::ErrorKind::NotFound {
                warn!(path = %dir.display(), error = %e, "could not remove spooled chunks");
            }
        }
    }

    fn chunk_paths(&self, ready: &ReadyBlock) -> Vec<PathBuf> {
        let dir = self.stream_dir(&ready.key);
        (0..ready.manifest.stream.chunks)
            .map(|i| dir.join(format!("{i:08}")))
            .collect()
    }

    /// Applies a complete stream: verify, receive, verify, rename.
    pub fn apply(&mut self, ready: &ReadyBlock) -> Result<(), ConsumerError> {
        let paths = self.chunk_paths(ready);
        let started = std::time::Instant::now();
        // 1. The whole stream against the signed hash, before anything else
        // (mostly hashed already, as its chunks were spooled).
        let mut hashing = self.hashing.remove(&ready.key).unwrap_or_default();
        hashing.catch_up(&self.stream_dir(&ready.key))?;
        if let Some(missing) = paths.get(hashing.next as usize) {
            return Err(StoreError::io(missing, io::ErrorKind::NotFound.into()).into());
        }
        let total = hashing.bytes;
        let actual = StreamHash(Digest::from_bytes(hashing.hasher.finalize().into()));
        if actual != ready.manifest.stream.sha256 || total != ready.manifest.stream.bytes {
            return Err(ConsumerError::Schema(
                fschain_schema::SchemaError::StreamHashMismatch {
                    expected: ready.manifest.stream.sha256,
                    actual,
                },
            ));
        }
        let hashed = started.elapsed();
        // 2. Receive under the staging name.
        let height = ready.header.height;
        let staging = self.layout.incoming(height);
        let files = ChunkFiles::new(paths);
        let mut decoder = zstd::stream::Decoder::new(files).at(&staging)?;
        let name = fschain_store::layout::incoming_name(height);
        let received = btrfs::receive(&self.layout.blocks_dir(), &name, &mut decoder);
        if let Err(e) = received {
            self.remove_staging(&staging);
            return Err(ConsumerError::Receive {
                chain: self.chain.to_string(),
                height,
                error: Box::new(e),
            });
        }
        let received = started.elapsed();
        // 3. Verify the received snapshot against the signed header.
        let problems = verify_received(
            &self.layout,
            &ChainDir::new(&staging),
            &ready.header,
            &mut self.verified,
        )?;
        if !problems.is_empty() {
            self.remove_staging(&staging);
            return Err(ConsumerError::Unverified {
                chain: self.chain.to_string(),
                height,
                problems: problems.iter().map(ToString::to_string).collect(),
            });
        }
        // Written out before it is renamed into place and its offset
        // committed: `btrfs receive` writes through the page cache, and the
        // transaction its last ioctl commits does not carry that data, so
        // after a power loss a block in place could come back with empty
        // files, read-only and with its received UUID, and be taken as
        // held. (The verification synced already, to read the btrfs tree;
        // this one finds little or nothing left to write.)
        let blocks = self.layout.blocks_dir();
        btrfs::sync_filesystem(&blocks)?;
        // 4. Keep the signed manifest (search proofs show it), then into
        // place. The first block a copy holds is its base.
        let manifests = self.layout.manifests_dir();
        std::fs::create_dir_all(&manifests).at(&manifests)?;
        let manifest = serde_json::to_vec(&ready.manifest).map_err(|e| StoreError::Corrupt {
            path: self.layout.manifest(height),
            why: e.to_string(),
        })?;
        write_atomic(&self.layout.manifest(height), &manifest)?;
        if self.held()?.is_none() {
            self.site.write_replica(&self.layout, height)?;
        }
        let dest = self.layout.snapshot(height);
        std::fs::rename(&staging, &dest).at(&dest)?;
        File::open(&blocks).and_then(|d| d.sync_all()).at(&blocks)?;
        let total = started.elapsed();
        debug!(
            height,
            hash_ms = hashed.as_millis() as u64,
            receive_ms = (received - hashed).as_millis() as u64,
            verify_ms = (total - received).as_millis() as u64,
            "received and verified"
        );
        info!(chain = %self.chain, height, hash = %ready.header.hash, "block verified and in place");
        Ok(())
    }

    fn remove_staging(&self, staging: &Path) {
        if !btrfs::is_subvolume(staging) {
            return;
        }
        let _ = btrfs::set_readonly(staging, false);
        if let Err(e) = btrfs::delete_subvolume(staging) {
            warn!(path = %staging.display(), error = %e, "could not delete a rejected receive");
        }
    }

    /// The header of the newest block held.
    pub fn head_header(&self) -> Result<Option<BlockHeader>, ConsumerError> {
        let Some(h) = self.held()? else {
            return Ok(None);
        };
        Ok(ChainDir::new(self.layout.snapshot(h)).headers()?.pop())
    }
}

/// The spooled chunk files of a stream read as one stream, one file open at
/// a time.
struct ChunkFiles {
    paths: std::vec::IntoIter<PathBuf>,
    current: Option<BufReader<File>>,
}

impl ChunkFiles {
    fn new(paths: Vec<PathBuf>) -> Self {
        ChunkFiles {
            paths: paths.into_iter(),
            current: None,
        }
    }
}

impl Read for ChunkFiles {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(f) = &mut self.current {
                let n = f.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
            }
            match self.paths.next() {
                Some(p) => self.current = Some(BufReader::new(File::open(p)?)),
                None => return Ok(0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "fschain-spool-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn spool(hashing: &mut StreamHashing, dir: &Path, index: u32, data: &[u8]) {
        std::fs::write(dir.join(format!("{index:08}")), data).unwrap();
        hashing.spooled(dir, index, data).unwrap();
    }

    fn finish(mut hashing: StreamHashing, dir: &Path) -> (u32, u64, [u8; 32]) {
        hashing.catch_up(dir).unwrap();
        (
            hashing.next,
            hashing.bytes,
            hashing.hasher.finalize().into(),
        )
    }

    proptest! {
        /// Whatever order the chunks are spooled in, and whatever stale
        /// chunks of a set-aside stream were spooled and hashed first, the
        /// hash taken is that of the final chunks in order.
        #[test]
        fn hash_as_spooled_is_the_stream_hash(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..12),
            order in any::<prop::sample::Index>(),
            stale in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            seed in any::<u64>(),
        ) {
            let dir = scratch("prop");
            let n = chunks.len();
            let mut hashing = StreamHashing::default();
            for (i, fill) in &stale {
                let i = i.index(n) as u32;
                spool(&mut hashing, &dir, i, &[*fill; 5]);
            }
            // A shuffle of the indexes, from the seed.
            let mut indexes: Vec<usize> = (0..n).collect();
            let mut x = seed | 1;
            for i in (1..n).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                indexes.swap(i, (x % (i as u64 + 1)) as usize);
            }
            indexes.rotate_left(order.index(n));
            for &i in &indexes {
                spool(&mut hashing, &dir, i as u32, &chunks[i]);
            }
            let (next, bytes, hash) = finish(hashing, &dir);
            let whole: Vec<u8> = chunks.concat();
            prop_assert_eq!(next as usize, n);
            prop_assert_eq!(bytes, whole.len() as u64);
            prop_assert_eq!(hash, <[u8; 32]>::from(Sha256::digest(&whole)));
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_missing_chunk_stops_the_hash_before_it() {
        let dir = scratch("gap");
        let mut hashing = StreamHashing::default();
        spool(&mut hashing, &dir, 0, b"zero");
        spool(&mut hashing, &dir, 2, b"two");
        let (next, bytes, _) = finish(hashing, &dir);
        assert_eq!((next, bytes), (1, 4));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
