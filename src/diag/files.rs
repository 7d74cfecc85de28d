//! Reading the files quotad is pointed at (config, limits, password,
//! certificates, keys): the one depth every such read goes through, at
//! start, on reload and when the watcher fingerprints them.
//!
//! Only regular files are read. A path is opened with `O_NONBLOCK`, so
//! opening a FIFO (named pipe) returns at once instead of waiting for a
//! writer, and the type is checked with `fstat` on the opened file, so
//! what is read is what was checked (no window for a swap between a check
//! and the open). Symlinks are followed: their *target* must be a regular
//! file. A FIFO, socket, device or directory is refused unread with an
//! error naming what it is ([`NotRegularFile`]); a regular file over
//! [`MAX_FILE_BYTES`] is refused unread from its size, and one that grows
//! while read is cut at the cap. What stays unbounded here is the time a
//! read of a regular file on a hung mount can take: callers that must not
//! hang on it (reloads, the watcher) read on a blocking thread with a
//! deadline ([`crate::control::reload`]).
//!
//! This module also lists a limits directory's entries
//! ([`limits_entries`]), for the loader and the watcher alike.

use std::fs::{File, FileType, Metadata};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The largest file quotad reads as config, limits, password, certificate
/// or key: more is refused without being read.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Why a path was refused unread: it is not a regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("is {kind}, not a regular file; refused unread")]
pub struct NotRegularFile {
    /// What it is instead: `a FIFO (named pipe)`, `a socket`, ...
    pub kind: &'static str,
}

impl NotRegularFile {
    /// The [`NotRegularFile`] inside `e`, if that is why it failed.
    pub fn of(e: &std::io::Error) -> Option<NotRegularFile> {
        e.get_ref()?.downcast_ref::<NotRegularFile>().copied()
    }

    fn error(kind: &'static str) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, NotRegularFile { kind })
    }
}

/// What a file type is, as messages say it.
pub fn kind_of(t: FileType) -> &'static str {
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "of an unknown type"
    }
}

/// Opens `path` for reading if (following symlinks) it is a regular
/// file, without ever waiting on a FIFO; the file and its `fstat`.
pub fn open_regular(path: &Path) -> std::io::Result<(File, Metadata)> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        // Opening a socket fails (ENXIO) with a message that does not say
        // why; say it.
        Err(e) => match std::fs::metadata(path) {
            Ok(m) if !m.is_file() => return Err(NotRegularFile::error(kind_of(m.file_type()))),
            _ => return Err(e),
        },
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(NotRegularFile::error(kind_of(meta.file_type())));
    }
    Ok((file, meta))
}

/// The error for a file over [`MAX_FILE_BYTES`].
fn too_large() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("larger than {} MiB; refused", MAX_FILE_BYTES >> 20),
    )
}

/// Reads `path` whole if it is a regular file (see the module docs),
/// refusing (unread beyond the cap) one over [`MAX_FILE_BYTES`].
pub fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let (file, meta) = open_regular(path)?;
    // Its size shows: refused unread. One that grows is cut at the cap.
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    Ok(bytes)
}

/// [`read_file`] for text: UTF-8 or an error saying it is not.
pub fn read_text(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read_file(path)?).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

/// The entries of a limits directory that name limits files (`*.yaml`
/// and `*.yml`, dotfiles skipped), whatever their type, in name order.
pub fn limits_entries(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            !name.starts_with('.') && (ext == "yaml" || ext == "yml")
        })
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::Stopwatch;

    fn mkfifo(path: &Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .expect("mkfifo runs");
        assert!(status.success());
    }

    #[test]
    fn only_regular_files_are_read_and_fifos_never_block() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.yaml");
        mkfifo(&fifo);
        let zero = dir.path().join("zero.yaml");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let sub = dir.path().join("sub.yaml");
        std::fs::create_dir(&sub).unwrap();
        let socket = dir.path().join("socket.yaml");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let cases = [
            (
                &fifo,
                "is a FIFO (named pipe), not a regular file; refused unread",
            ),
            (
                &zero,
                "is a character device, not a regular file; refused unread",
            ),
            (&sub, "is a directory, not a regular file; refused unread"),
            (&socket, "is a socket, not a regular file; refused unread"),
        ];
        for (path, want) in cases {
            // A FIFO without a writer would block a plain open forever.
            let started = Stopwatch::start();
            let e = read_file(path).expect_err("refused");
            assert!(started.seconds() < 5.0);
            assert_eq!(e.to_string(), want, "{}", path.display());
            assert!(NotRegularFile::of(&e).is_some());
        }
        // A symlink to a regular file is followed.
        let real = dir.path().join("real.yaml");
        std::fs::write(&real, "x: 1\n").unwrap();
        let link = dir.path().join("link.yaml");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert_eq!(read_text(&link).unwrap(), "x: 1\n");
        // Listed alike, whatever their type.
        let names: Vec<_> = limits_entries(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "link.yaml",
                "pipe.yaml",
                "real.yaml",
                "socket.yaml",
                "sub.yaml",
                "zero.yaml"
            ]
        );
    }
}
