//! A loop block device on a sparse file: a disk of the test's own, so IO counts are exact.

use std::{os::unix::fs::MetadataExt, path::PathBuf, process::Command};

pub struct LoopDevice {
    pub path: PathBuf,
    pub name: String,
    pub major: u32,
    pub minor: u32,
    _dir: tempfile::TempDir,
}

impl LoopDevice {
    pub fn create(size_mib: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let backing = dir.path().join("disk.img");
        let file = std::fs::File::create(&backing).expect("create backing file");
        file.set_len(size_mib << 20).expect("size backing file");
        let out = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&backing));
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let rdev = std::fs::metadata(&path).expect("stat loop device").rdev();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        Self {
            path,
            name,
            major: libc::major(rdev),
            minor: libc::minor(rdev),
            _dir: dir,
        }
    }

    pub fn major_minor(&self) -> String {
        format!("{}:{}", self.major, self.minor)
    }

    /// `count` direct (O_DIRECT) writes of `block_size` bytes, one at a time.
    pub fn direct_writes(&self, block_size: usize, count: usize) {
        run(Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", self.path.display()))
            .arg(format!("bs={block_size}"))
            .arg(format!("count={count}"))
            .arg("oflag=direct"));
    }
}

/// Runs `command`, panicking with its stderr unless it succeeds.
fn run(command: &mut Command) -> std::process::Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?} did not run: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}
