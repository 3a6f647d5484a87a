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
use std::path::Path;

use rustix::fs::{Mode, OFlags};

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

/// Whether `path`, if something is there, is a regular file (a FIFO or a device would make
/// [`open`] fail, or a log of it block or never end). For `validate`; never opens the path.
pub fn check(path: &Path) -> Result<(), Unfit> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => Err(Unfit::NotRegular(kind(&m))),
        _ => Ok(()),
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

#[cfg(test)]
mod tests;
