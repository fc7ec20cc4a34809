//! Files only the service's own user may read: the data directory (0700) and the SQLite files
//! in it (0600; SQLite gives its `-wal`, `-shm` and `-journal` files the database file's mode).

use std::io;
use std::path::Path;

/// Creates `dir` and any missing parents readable by the owner only (0700). With `tighten`, an
/// existing `dir` that others may read is made private too: pass it only for a directory that
/// belongs to Ebb (such as `ebb serve`'s data directory), never for a shared one like `/tmp`.
pub fn private_dir(dir: &Path, tighten: bool) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        if tighten {
            let mode = std::fs::metadata(dir)?.permissions().mode();
            if mode & 0o077 != 0 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            }
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        let _ = tighten;
        std::fs::create_dir_all(dir)
    }
}

/// Makes the SQLite database `file` private before SQLite opens it: created empty with 0600
/// when missing (SQLite then creates its `-wal`/`-shm` files with the same mode), and the file
/// and its companions narrowed to 0600 when an earlier version left them readable by others.
pub fn private_sqlite_files(file: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(file)?;
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut name = file.as_os_str().to_owned();
            name.push(suffix);
            let path = Path::new(&name);
            match std::fs::metadata(path) {
                Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        Ok(())
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("test").permissions().mode() & 0o777
    }

    #[test]
    fn new_directories_and_database_files_are_private_and_old_ones_are_narrowed() {
        let root = std::env::temp_dir().join(format!("ebb-private-{}", uuid::Uuid::new_v4()));
        let dir = root.join("a/b");
        private_dir(&dir, false).expect("test");
        assert_eq!(mode(&root.join("a")), 0o700);
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("test");
        private_dir(&dir, false).expect("test");
        assert_eq!(
            mode(&dir),
            0o755,
            "an existing directory is left alone unless asked"
        );
        private_dir(&dir, true).expect("test");
        assert_eq!(mode(&dir), 0o700);

        let db = dir.join("x.db");
        private_sqlite_files(&db).expect("test");
        assert_eq!(mode(&db), 0o600);
        let wal = dir.join("x.db-wal");
        std::fs::write(&wal, b"").expect("test");
        std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o644)).expect("test");
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("test");
        private_sqlite_files(&db).expect("test");
        assert_eq!((mode(&db), mode(&wal)), (0o600, 0o600));
        std::fs::remove_dir_all(&root).expect("test");
    }
}
