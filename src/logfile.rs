//! Opening the files rampart appends to (the access log, the audit trail): never a wait, and
//! only a regular file.
//!
//! Why: `open(2)` of a FIFO for writing waits until a reader opens it, and that open runs on a
//! runtime thread (a generation's access log sink is made where the reload runs); a device is
//! no log either: `/dev/full` fails every write, and reading one (the audit trail reads its
//! file's end to continue its hash chain) never ends. `validate` refuses such a path
//! ([`check`]), but a path can change after it was checked. So every open here passes
//! `O_NONBLOCK` (a FIFO without a reader then fails at once, `ENXIO`), checks what it opened
//! with `fstat` (anything but a regular file is closed and refused), and clears the flag again,
//! which a regular file ignores anyway.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Access, AtFlags, Mode, OFlags};

/// How a log file is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Written at its end only (the access log).
    Append,
    /// Read (its last line) and written at its end (the audit trail).
    ReadAppend,
}

/// Why a path cannot be a log file.
#[derive(Debug, thiserror::Error)]
pub enum Unfit {
    /// Something other than a regular file is there (`a FIFO`, `a character device`…).
    #[error("is not a regular file but {0}")]
    NotRegular(&'static str),
    /// The file is there but cannot be opened as the log needs (permissions, a read-only
    /// file system).
    #[error("cannot be opened for appending: {0}")]
    Unopenable(io::Error),
    /// No file is there and none can be made in its directory.
    #[error("cannot be created in {}: {error}", dir.display())]
    Uncreatable {
        /// The directory.
        dir: PathBuf,
        /// What the OS said of writing in it.
        error: io::Error,
    },
}

/// Opens `path` to append to (and read, with [`Use::ReadAppend`]), creating it if `create`,
/// without ever waiting: a FIFO, a device, a socket or a directory is refused with an
/// [`io::ErrorKind::InvalidInput`] error carrying [`Unfit::NotRegular`].
pub fn open(path: &Path, how: Use, create: bool) -> io::Result<File> {
    let mut flags = OFlags::APPEND | OFlags::NONBLOCK | OFlags::CLOEXEC;
    flags |= match how {
        Use::Append => OFlags::WRONLY,
        Use::ReadAppend => OFlags::RDWR,
    };
    if create {
        flags |= OFlags::CREATE;
    }
    // 0o666 less the umask, as `std::fs::OpenOptions` creates files.
    let fd = match rustix::fs::open(path, flags, Mode::from_raw_mode(0o666)) {
        Ok(fd) => fd,
        // A FIFO nobody reads: say what it is rather than "no such device or address".
        Err(rustix::io::Errno::NXIO) => {
            return Err(match std::fs::metadata(path) {
                Ok(m) if !m.is_file() => not_regular(&m),
                _ => rustix::io::Errno::NXIO.into(),
            })
        }
        Err(e) => return Err(e.into()),
    };
    let file = File::from(fd);
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    rustix::fs::fcntl_setfl(&file, rustix::fs::fcntl_getfl(&file)? - OFlags::NONBLOCK)?;
    Ok(file)
}

/// Whether [`open`] of `path` for `how` would succeed, without creating anything: what is
/// there must be a regular file that opens; if nothing is, its directory must let this process
/// create the file (`faccessat` with the effective ids: permissions, a read-only file system).
/// For `validate`, which checks first that the directory exists.
pub fn check(path: &Path, how: Use) -> Result<(), Unfit> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => Err(Unfit::NotRegular(kind(&m))),
        Ok(_) => open(path, how, false).map(drop).map_err(unfit),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            let access = Access::WRITE_OK | Access::EXEC_OK;
            rustix::fs::accessat(rustix::fs::CWD, dir, access, AtFlags::EACCESS).map_err(|e| {
                Unfit::Uncreatable {
                    dir: dir.to_path_buf(),
                    error: e.into(),
                }
            })
        }
        Err(e) => Err(Unfit::Unopenable(e)),
    }
}

/// What a file that is not a regular one is, with its article.
pub fn kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else {
        "not a file"
    }
}

fn not_regular(meta: &Metadata) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, Unfit::NotRegular(kind(meta)))
}

/// The [`Unfit`] an error of [`open`] stands for.
fn unfit(e: io::Error) -> Unfit {
    match e.get_ref().and_then(|i| i.downcast_ref::<Unfit>()) {
        Some(Unfit::NotRegular(k)) => Unfit::NotRegular(k),
        _ => Unfit::Unopenable(e),
    }
}

#[cfg(test)]
pub(crate) mod tests;
