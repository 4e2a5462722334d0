//! The one way a file is read: regular files only, never more than a stated size.
//!
//! A file's size cannot be trusted before reading (a device or a FIFO says 0), so the
//! size is bounded while reading, and anything but a regular file is refused before a
//! byte is read: `/dev/zero` would fill memory, a FIFO would block the reader (the job
//! runner, a reload) with nothing shown. The open itself never blocks (`O_NONBLOCK`,
//! which a regular file ignores).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Certificate, key and bundle files given to `cert import`; store PEM files.
pub const MAX_PEM: u64 = 1 << 20;
/// Password files: a password is a line.
pub const MAX_PASSWORD: u64 = 4 << 10;
/// Configuration files, job files, `meta.toml`.
pub const MAX_TOML: u64 = 1 << 20;
/// `state.toml`: defaults and assignments for every certificate of a large store.
pub const MAX_STATE: u64 = 16 << 20;

/// Whether the last component of the path may be a symbolic link.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// An administrator's file, given by path: `/etc/letsencrypt/live/*/` is links.
    Follow,
    /// A file inside the store, which only Portcullis writes: a link there is planted.
    Refuse,
}

/// Reads the whole file, which must be a regular file of at most `max` bytes.
/// Errors say what was wrong without the path; callers name the file.
pub fn read(path: &Path, max: u64, links: Links) -> io::Result<Vec<u8>> {
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if links == Links::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let file = File::options().read(true).custom_flags(flags).open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) && links == Links::Refuse {
            io::Error::new(io::ErrorKind::InvalidInput, "is a symbolic link, which is refused here")
        } else {
            e
        }
    })?;
    let meta = file.metadata()?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("not a regular file ({what})")));
    }
    if meta.len() > max {
        return Err(too_large(meta.len(), max));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // One byte more than allowed tells a file that grew while being read.
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64, max));
    }
    Ok(bytes)
}

/// [`read`] for text.
pub fn read_text(path: &Path, max: u64, links: Links) -> io::Result<String> {
    String::from_utf8(read(path, max, links)?).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

fn too_large(size: u64, max: u64) -> io::Error {
    io::Error::new(io::ErrorKind::FileTooLarge, format!("{} is larger than the limit of {}", human(size), human(max)))
}

/// `1 MiB`, `4 KiB`, `512 bytes`.
fn human(n: u64) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::disallowed_methods)] // a test fixture, not a store write
    fn devices_fifos_links_and_big_files_are_refused_without_reading() {
        let dir = tempfile::tempdir().unwrap();
        let e = read(Path::new("/dev/zero"), MAX_PEM, Links::Follow).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file (a device)");
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        // Nobody writes to it: an ordinary open would block here forever.
        let e = read(&fifo, MAX_PEM, Links::Follow).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file (a FIFO)");
        let e = read(dir.path(), MAX_PEM, Links::Follow).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file (a directory)");

        let file = dir.path().join("f");
        std::fs::write(&file, vec![b'a'; 5000]).unwrap();
        assert_eq!(read(&file, 5000, Links::Follow).unwrap().len(), 5000);
        let e = read(&file, MAX_PASSWORD, Links::Follow).unwrap_err();
        assert_eq!(e.to_string(), "5000 bytes is larger than the limit of 4 KiB");

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(read(&link, 5000, Links::Follow).unwrap().len(), 5000);
        let e = read(&link, 5000, Links::Refuse).unwrap_err();
        assert_eq!(e.to_string(), "is a symbolic link, which is refused here");
    }
}
