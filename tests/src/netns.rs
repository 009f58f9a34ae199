//! A network namespace a test owns (deleted on drop): its own loopback, ports and firewall
//! rules, so forced packet loss touches nothing else on the machine.

use std::process::Command;

pub struct NetNs {
    pub name: String,
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    /// A new namespace named after the test and this process, with `lo` up at `mtu`.
    pub fn new(tag: &str, mtu: u32) -> Self {
        let name = format!("periscope-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        run(
            "ip",
            &[
                "-n",
                &ns.name,
                "link",
                "set",
                "lo",
                "mtu",
                &mtu.to_string(),
                "up",
            ],
        );
        ns
    }

    /// Drops `percent`% of the TCP packets from port `port` as they arrive (nftables `numgen`;
    /// netem is not built into these kernels). On input, as a lossy wire would: a packet dropped
    /// on output is only requeued by the sender, never retransmitted. SYN-ACKs are spared: a lost
    /// one costs a 1 s, then 2 s, 4 s... handshake backoff, which made a transfer's duration (and
    /// whether it fits a test's window) a matter of luck; data and FIN losses are what is tested.
    pub fn drop_from_port(&self, port: u16, percent: u32) {
        let rules = format!(
            "table inet loss {{\n  chain in {{\n    type filter hook input priority 0; policy accept;\n    tcp sport {port} tcp flags ! syn numgen random mod 100 < {percent} drop\n  }}\n}}\n"
        );
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), rules).expect("write rules");
        let path = file.path().to_str().expect("utf-8 path");
        run("ip", &["netns", "exec", &self.name, "nft", "-f", path]);
    }

    /// `program args...` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
