//! A workload the tests drive through its standard streams (`function-target`, `usdt-target`):
//! it prints `pid N`, waits for `go` on stdin, reports on stdout up to a `done` line, and exits
//! when its stdin closes.

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio},
};

/// A running target, stopped at its start line until [`Target::go`].
pub struct Target {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub pid: u32,
}

impl Target {
    /// Starts `program` with `args` and reads the `pid N` line it prints first.
    pub fn start(program: &Path, args: &[String]) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let pid = line
            .trim()
            .strip_prefix("pid ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("expected `pid N`, got {line:?}"));
        Self {
            child,
            stdin: Some(stdin),
            stdout,
            pid,
        }
    }

    /// Lets it run its work.
    pub fn go(&mut self) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "go").unwrap();
        stdin.flush().unwrap();
    }

    /// The lines it reports, up to its `done` line.
    pub fn report(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        for line in (&mut self.stdout).lines() {
            let line = line.unwrap();
            if line == "done" {
                return lines;
            }
            lines.push(line);
        }
        panic!("the target ended before `done`: {lines:?}");
    }

    /// Closes stdin: the process exits.
    pub fn finish(&mut self) -> ExitStatus {
        self.stdin.take();
        self.child.wait().unwrap()
    }

    /// Its `service.instance.id`: the host and its pid.
    pub fn instance(&self) -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        format!("{}:{}", host.trim(), self.pid)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
