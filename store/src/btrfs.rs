//! The btrfs adapter: subvolumes, snapshots and the read-only flag, through
//! the kernel's ioctls (no process per snapshot), plus `btrfs` CLI calls
//! where the CLI is the interface (send and receive, later).

#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::StoreError;

const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
/// Inode number of a subvolume's root directory.
const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;
const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;
const BTRFS_PATH_NAME_MAX: usize = 4087;
const BTRFS_SUBVOL_NAME_MAX: usize = 4039;

// _IOW/_IOR(0x94, nr, size) as the kernel's uapi/linux/btrfs.h defines them.
const IOC_SUBVOL_CREATE: libc::c_ulong = 0x5000_940e;
const IOC_SNAP_DESTROY: libc::c_ulong = 0x5000_940f;
const IOC_SNAP_CREATE_V2: libc::c_ulong = 0x5000_9417;
const IOC_SUBVOL_GETFLAGS: libc::c_ulong = 0x8008_9419;
const IOC_SUBVOL_SETFLAGS: libc::c_ulong = 0x4008_941a;
const IOC_GET_SUBVOL_INFO: libc::c_ulong = 0x81f8_943c;

#[repr(C)]
struct IoctlTimespec {
    sec: u64,
    nsec: u32,
}

/// `struct btrfs_ioctl_get_subvol_info_args`.
#[repr(C)]
struct SubvolInfo {
    treeid: u64,
    name: [u8; 256],
    parent_id: u64,
    dirid: u64,
    generation: u64,
    flags: u64,
    uuid: [u8; 16],
    parent_uuid: [u8; 16],
    received_uuid: [u8; 16],
    ctransid: u64,
    otransid: u64,
    stransid: u64,
    rtransid: u64,
    ctime: IoctlTimespec,
    otime: IoctlTimespec,
    stime: IoctlTimespec,
    rtime: IoctlTimespec,
    reserved: [u64; 8],
}

#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; BTRFS_PATH_NAME_MAX + 1],
}

#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; BTRFS_SUBVOL_NAME_MAX + 1],
}

const _: () = assert!(std::mem::size_of::<VolArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<VolArgsV2>() == 4096);
const _: () = assert!(std::mem::size_of::<SubvolInfo>() == 0x1f8);

/// Bytes an unprivileged writer can still put on the filesystem holding
/// `path` (`statvfs`'s available blocks).
pub fn available_bytes(path: &Path) -> Result<u64, StoreError> {
    let st = rustix::fs::statvfs(path).map_err(|e| StoreError::io(path, e.into()))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Creates the image file of a loop-mounted filesystem, `size` bytes
/// allocated in full: a sparse image on a host disk that fills up makes the
/// loop device fail writes, and btrfs then aborts with EIO and turns
/// read-only, so a host without room is refused here instead. Never
/// overwrites an existing file.
pub fn create_image(image: &Path, size: u64) -> Result<(), StoreError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(image)
        .map_err(|e| StoreError::io(image, e))?;
    if let Err(e) = rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, size) {
        drop(file);
        let _ = std::fs::remove_file(image);
        return Err(StoreError::io(
            image,
            io::Error::new(
                io::Error::from(e).kind(),
                format!("cannot allocate {size} bytes for the image: {e}"),
            ),
        ));
    }
    Ok(())
}

/// Whether `path` (which must exist) lies on a btrfs filesystem.
pub fn is_btrfs(path: &Path) -> Result<bool, StoreError> {
    let c = cstring(path)?;
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `stat` a valid out-pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(StoreError::io(path, io::Error::last_os_error()));
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(stat.f_type as i64 == BTRFS_SUPER_MAGIC)
}

/// Whether `path` is the root of a btrfs subvolume.
pub fn is_subvolume(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .is_ok_and(|m| m.is_dir() && m.ino() == BTRFS_FIRST_FREE_OBJECTID)
        && is_btrfs(path).unwrap_or(false)
}

/// Creates an empty subvolume at `path`.
pub fn create_subvolume(path: &Path) -> Result<(), StoreError> {
    let (parent, name) = split(path)?;
    let mut args = VolArgs {
        fd: 0,
        name: [0; BTRFS_PATH_NAME_MAX + 1],
    };
    copy_name(&mut args.name, &name, path)?;
    // SAFETY: `parent` is an open directory, `args` a properly sized, initialised struct.
    let rc = unsafe { libc::ioctl(parent.as_raw_fd(), IOC_SUBVOL_CREATE, &mut args) };
    check(rc, "create subvolume", path)
}

/// Snapshots the subvolume `source` as `dest` (which must not exist).
pub fn snapshot(source: &Path, dest: &Path, readonly: bool) -> Result<(), StoreError> {
    let src = File::open(source).map_err(|e| StoreError::io(source, e))?;
    let (parent, name) = split(dest)?;
    let mut args = VolArgsV2 {
        fd: i64::from(src.as_raw_fd()),
        transid: 0,
        flags: if readonly { BTRFS_SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: [0; BTRFS_SUBVOL_NAME_MAX + 1],
    };
    copy_name(&mut args.name, &name, dest)?;
    // SAFETY: as above; `src` stays open for the duration of the call.
    let rc = unsafe { libc::ioctl(parent.as_raw_fd(), IOC_SNAP_CREATE_V2, &mut args) };
    check(rc, "snapshot", dest)
}

/// Deletes the subvolume at `path`, read-only or not.
pub fn delete_subvolume(path: &Path) -> Result<(), StoreError> {
    let (parent, name) = split(path)?;
    let mut args = VolArgs {
        fd: 0,
        name: [0; BTRFS_PATH_NAME_MAX + 1],
    };
    copy_name(&mut args.name, &name, path)?;
    // SAFETY: as above.
    let rc = unsafe { libc::ioctl(parent.as_raw_fd(), IOC_SNAP_DESTROY, &mut args) };
    check(rc, "delete subvolume", path)
}

/// Writes everything cached for the file system holding `path` to disk
/// (`syncfs`), so that its trees hold what its files read back.
pub fn sync_filesystem(path: &Path) -> Result<(), StoreError> {
    let dir = File::open(path).map_err(|e| StoreError::io(path, e))?;
    rustix::fs::syncfs(&dir).map_err(|e| StoreError::io(path, e.into()))
}

/// Whether the subvolume at `path` is read-only.
pub fn is_readonly(path: &Path) -> Result<bool, StoreError> {
    let (_, flags) = subvolume_flags(path)?;
    Ok(flags & BTRFS_SUBVOL_RDONLY != 0)
}

/// Sets or clears the read-only flag of the subvolume at `path`.
pub fn set_readonly(path: &Path, readonly: bool) -> Result<(), StoreError> {
    let (dir, flags) = subvolume_flags(path)?;
    let flags = if readonly {
        flags | BTRFS_SUBVOL_RDONLY
    } else {
        flags & !BTRFS_SUBVOL_RDONLY
    };
    // SAFETY: `dir` is open, `flags` a valid u64.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), IOC_SUBVOL_SETFLAGS, &flags) };
    check(rc, "set subvolume flags", path)
}

/// The subvolume's flags, and the open directory they were read through.
fn subvolume_flags(path: &Path) -> Result<(File, u64), StoreError> {
    let dir = File::open(path).map_err(|e| StoreError::io(path, e))?;
    let mut flags: u64 = 0;
    // SAFETY: `dir` is open, `flags` a valid u64 out-pointer.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), IOC_SUBVOL_GETFLAGS, &mut flags) };
    check(rc, "read subvolume flags", path)?;
    Ok((dir, flags))
}

/// Deletes every subvolume below `dir` (not `dir` itself), deepest first;
/// for cleaning up scratch trees. Errors are ignored: it is best effort.
pub fn delete_subvolumes_below(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            // A subvolume without nested ones goes in one call; otherwise
            // clear what is inside first.
            if is_subvolume(&path) && delete_subvolume(&path).is_ok() {
                continue;
            }
            delete_subvolumes_below(&path);
            if is_subvolume(&path) {
                let _ = delete_subvolume(&path);
            }
        }
    }
}

fn split(path: &Path) -> Result<(File, Vec<u8>), StoreError> {
    let name = path.file_name().ok_or_else(|| {
        StoreError::io(
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "path has no final name"),
        )
    })?;
    let parent: PathBuf = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let dir = File::open(&parent).map_err(|e| StoreError::io(&parent, e))?;
    Ok((dir, name.as_bytes().to_vec()))
}

fn copy_name(dest: &mut [u8], name: &[u8], path: &Path) -> Result<(), StoreError> {
    if name.len() >= dest.len() || name.contains(&0) {
        return Err(StoreError::io(
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "bad subvolume name"),
        ));
    }
    dest[..name.len()].copy_from_slice(name);
    Ok(())
}

fn check(rc: libc::c_int, op: &'static str, path: &Path) -> Result<(), StoreError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(StoreError::Btrfs {
            op,
            path: path.to_owned(),
            error: io::Error::last_os_error(),
        })
    }
}

fn cstring(path: &Path) -> Result<CString, StoreError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        StoreError::io(
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"),
        )
    })
}

/// The compression fschain asks of a layer's `states/`: new files under it
/// are stored zstd-compressed by the kernel (`btrfs property set DIR
/// compression zstd`), and snapshots and received copies keep the property.
pub const STATES_COMPRESSION: &str = "zstd";

/// Stores new files under `dir` compressed with `algorithm` (the
/// `btrfs.compression` property, inherited by what is created below it).
pub fn set_compression(dir: &Path, algorithm: &str) -> Result<(), StoreError> {
    rustix::fs::setxattr(
        dir,
        "btrfs.compression",
        algorithm.as_bytes(),
        rustix::fs::XattrFlags::empty(),
    )
    .map_err(|e| StoreError::io(dir, e.into()))
}

/// The `btrfs.compression` property of `dir`, if it has one.
pub fn compression(dir: &Path) -> Result<Option<String>, StoreError> {
    let mut value = [0u8; 64];
    match rustix::fs::getxattr(dir, "btrfs.compression", &mut value[..]) {
        Ok(n) => Ok(Some(String::from_utf8_lossy(&value[..n]).into_owned())),
        Err(rustix::io::Errno::NODATA) => Ok(None),
        Err(e) => Err(StoreError::io(dir, e.into())),
    }
}

/// The options fschain gives `btrfs send`: when the kernel speaks send
/// stream version 2 (Linux 6.0 and later) and the `btrfs` tool knows
/// `--compressed-data` (btrfs-progs 6.0 and later), compressed extents travel
/// as they are stored, so a compressed layer is neither decompressed by the
/// sender nor compressed again by the receiver, which writes them as they
/// come. A site then needs btrfs-progs 6.0 or later too.
pub fn send_options() -> &'static [&'static str] {
    static OPTIONS: std::sync::OnceLock<&'static [&'static str]> = std::sync::OnceLock::new();
    OPTIONS.get_or_init(|| {
        let version = std::fs::read_to_string("/sys/fs/btrfs/features/send_stream_version")
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok());
        let tool_knows = || {
            std::process::Command::new("btrfs")
                .args(["send", "--help"])
                .output()
                .is_ok_and(|o| {
                    [o.stdout, o.stderr]
                        .iter()
                        .any(|t| String::from_utf8_lossy(t).contains("--compressed-data"))
                })
        };
        if version.is_some_and(|v| v >= 2) && tool_knows() {
            &["--proto", "2", "--compressed-data"]
        } else {
            &[]
        }
    })
}

/// Runs `btrfs send` of `snapshot` (incremental against `parent` when
/// given, with [`send_options`]) and hands its output to `consume`, which
/// must read it to the end. Fails when `btrfs send` fails, with its own
/// message.
pub fn send<T>(
    snapshot: &Path,
    parent: Option<&Path>,
    consume: impl FnOnce(&mut dyn io::Read) -> io::Result<T>,
) -> Result<T, StoreError> {
    use std::process::{Command, Stdio};
    let mut cmd = Command::new("btrfs");
    cmd.arg("send").arg("-q").args(send_options());
    if let Some(p) = parent {
        cmd.arg("-p").arg(p);
    }
    cmd.arg(snapshot);
    let (mut child, shown) = spawn(cmd.stdin(Stdio::null()).stdout(Stdio::piped()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| command_error(&shown, "no stdout".into()))?;
    widen_pipe(&stdout);
    // Large reads: one wake-up of `btrfs send` per MiB, not per page.
    let mut stdout = io::BufReader::with_capacity(PIPE_BYTES, stdout);
    let result = consume(&mut stdout);
    // Drain whatever `consume` left so `btrfs send` is not killed by SIGPIPE
    // before its exit status tells what went wrong.
    let _ = io::copy(&mut stdout, &mut io::sink());
    drop(stdout);
    wait_for_success(child, &shown)?;
    result.map_err(|e| StoreError::io(snapshot, e))
}

/// Runs `btrfs receive` into `dir`, creating the stream's subvolume under
/// `name` instead of the name the stream carries (see
/// [`crate::send_stream`]). `stream` is the plain, uncompressed send stream.
pub fn receive(dir: &Path, name: &str, stream: &mut dyn io::Read) -> Result<(), StoreError> {
    use crate::send_stream::{first_command_end, rename_first_subvolume};
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut head = vec![0u8; 27];
    stream
        .read_exact(&mut head)
        .map_err(|_| StoreError::BadSendStream {
            why: "shorter than a stream header".into(),
        })?;
    let end = first_command_end(&head)?;
    head.resize(end, 0);
    stream
        .read_exact(&mut head[27..])
        .map_err(|_| StoreError::BadSendStream {
            why: "ends inside its first command".into(),
        })?;
    let head = rename_first_subvolume(&head, name)?;
    let mut cmd = Command::new("btrfs");
    cmd.arg("receive").arg("-e").arg(dir);
    let (mut child, shown) = spawn(cmd.stdin(Stdio::piped()).stdout(Stdio::null()))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| command_error(&shown, "no stdin".into()))?;
    widen_pipe(&stdin);
    let fed = stdin
        .write_all(&head)
        .and_then(|()| pump(stream, &mut stdin).map(|_| ()));
    drop(stdin);
    wait_for_success(child, &shown)?;
    fed.map_err(|e| StoreError::io(dir, e))
}

/// The received UUID of a subvolume (`None` when it was not received, or
/// its receive never finished), from `BTRFS_IOC_GET_SUBVOL_INFO`: one
/// lookup in the root tree. (`btrfs subvolume show` also lists the
/// subvolume's snapshots, a search through every subvolume of the file
/// system: most of a second on a site holding a thousand blocks.)
pub fn received_uuid(path: &Path) -> Result<Option<String>, StoreError> {
    let dir = File::open(path).map_err(|e| StoreError::io(path, e))?;
    // SAFETY: all-zero bytes are a valid `SubvolInfo` (integers and arrays).
    let mut info: SubvolInfo = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes at most size_of::<SubvolInfo>() bytes,
    // the size encoded in the request number.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), IOC_GET_SUBVOL_INFO, &mut info) };
    // It answers 0 or 1 on success (its last tree search's result).
    if rc < 0 {
        return Err(StoreError::io(path, io::Error::last_os_error()));
    }
    let u = info.received_uuid;
    if u == [0; 16] {
        return Ok(None);
    }
    let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
    Ok(Some(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )))
}

/// Spawns `cmd` with stderr captured; returns it and how to name it in errors.
/// How much a pipe to or from `btrfs send`/`receive` holds, and how much is
/// moved through it at a time. The default 64 KiB pipe cost a context
/// switch per 64 KiB: on a 400 MB stream, a second of the two tools
/// waking each other.
const PIPE_BYTES: usize = 1 << 20;

/// Grows a pipe to [`PIPE_BYTES`]; a pipe left at its default size still
/// works, only slower, so a refusal (a lowered `pipe-max-size`) is ignored.
fn widen_pipe(fd: impl std::os::fd::AsFd) {
    let _ = rustix::pipe::fcntl_setpipe_size(fd, PIPE_BYTES);
}

/// Copies `from` to `to` in [`PIPE_BYTES`] pieces (`io::copy` moves 8 KiB
/// at a time).
pub fn pump(from: &mut dyn io::Read, to: &mut dyn io::Write) -> io::Result<u64> {
    let mut buf = vec![0u8; PIPE_BYTES];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

fn spawn(cmd: &mut std::process::Command) -> Result<(std::process::Child, String), StoreError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let child = cmd
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| command_error(&shown, e.to_string()))?;
    Ok((child, shown))
}

/// Waits for a spawned command; its stderr is the error when it failed.
fn wait_for_success(child: std::process::Child, shown: &str) -> Result<(), StoreError> {
    let output = child
        .wait_with_output()
        .map_err(|e| command_error(shown, e.to_string()))?;
    if !output.status.success() {
        return Err(command_error(
            shown,
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ));
    }
    Ok(())
}

fn command_error(command: &str, stderr: String) -> StoreError {
    StoreError::Command {
        command: command.to_owned(),
        stderr,
    }
}
