//! The ring buffer's records, decoded: the one place that reads the kernel's bytes. Each kind
//! has its own `repr(C)` struct in `periscope_common::http`; what follows the struct (a
//! transfer's captured bytes) is bounded by the record's own length.

use periscope_common::http::{
    AcceptRecord, CloseRecord, ConnectAddr, ConnectRecord, DupRecord, ExitRecord, IO_H2, IO_H2_CUT,
    IO_H2_MIDWAY, IO_H2_PREFACE, IO_H2_SETTINGS, IO_LOST, IO_RECORD_SIZE, IO_TLS_PLAINTEXT,
    IoRecord, KIND_ACCEPT, KIND_CLOSE, KIND_CONNECT, KIND_DUP, KIND_EXIT, KIND_OPEN, KIND_READ,
    KIND_WRITE, OpenRecord, ROLE_CLIENT, ROLE_SERVER, RecordHead, SockOpen, TLS_FD,
};

use super::connection::{Capture, Io, Opener, Role};

/// One record from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// A server accepted `conn` on its listening descriptor.
    Accept {
        conn: Conn,
        listen_fd: u32,
        comm: String,
    },
    /// A client connected `conn` to `peer`.
    Connect {
        conn: Conn,
        peer: ConnectAddr,
        comm: String,
    },
    /// Socket programs: the first transfer of a socket on `conn`, established as `side` (`None`:
    /// before Periscope started). Whatever `conn` named before is over.
    Open {
        conn: Conn,
        side: Option<Role>,
        open: SockOpen,
        comm: String,
    },
    /// Bytes moved on a watched connection.
    Io(Transfer<'a>),
    /// `conn` was duplicated from `original_fd`.
    Dup { conn: Conn, original_fd: u32 },
    /// `conn` closed; `whole_socket`: every descriptor of its socket is over.
    Close { conn: Conn, whole_socket: bool },
    /// Process `tgid` exited.
    Exit { tgid: u32 },
}

/// A (process, descriptor) pair, and when the record's event happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    pub tgid: u32,
    pub fd: u32,
    pub time_ns: u64,
}

/// A read or write: whose, and its bytes as the connection's parser takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer<'a> {
    pub tgid: u32,
    /// The descriptor; a TLS connection's plaintext has [`TLS_FD`] set, to keep it apart from
    /// the encrypted bytes of the same descriptor.
    pub fd: u32,
    pub read: bool,
    /// The side the kernel knows the connection as (`None`: not known).
    pub side: Option<Role>,
    /// A record of this connection was lost before this one.
    pub after_loss: bool,
    pub io: Io<'a>,
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("record of {0} bytes is shorter than its kind's {1}")]
    Short(usize, usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Record<'_>, Malformed> {
    let head: RecordHead = read(bytes)?;
    Ok(match head.kind {
        KIND_READ | KIND_WRITE => Record::Io(transfer(bytes)?),
        KIND_ACCEPT => {
            let r: AcceptRecord = read(bytes)?;
            Record::Accept {
                conn: conn(&r.head),
                listen_fd: r.listen_fd,
                comm: comm(&r.comm),
            }
        }
        KIND_CONNECT => {
            let r: ConnectRecord = read(bytes)?;
            Record::Connect {
                conn: conn(&r.head),
                peer: r.peer,
                comm: comm(&r.comm),
            }
        }
        KIND_OPEN => {
            let r: OpenRecord = read(bytes)?;
            Record::Open {
                conn: conn(&r.head),
                side: side(r.head.side),
                open: r.open,
                comm: comm(&r.comm),
            }
        }
        KIND_DUP => {
            let r: DupRecord = read(bytes)?;
            Record::Dup {
                conn: conn(&r.head),
                original_fd: r.original_fd,
            }
        }
        KIND_CLOSE => {
            let r: CloseRecord = read(bytes)?;
            Record::Close {
                conn: conn(&r.head),
                whole_socket: r.whole_socket != 0,
            }
        }
        KIND_EXIT => {
            let r: ExitRecord = read(bytes)?;
            Record::Exit { tgid: r.head.tgid }
        }
        other => return Err(Malformed::UnknownKind(other)),
    })
}

fn transfer(bytes: &[u8]) -> Result<Transfer<'_>, Malformed> {
    let r: IoRecord = read(bytes)?;
    let data = &bytes[IO_RECORD_SIZE..];
    let captured = &data[..(r.captured as usize).min(data.len())];
    let tail_len = (r.tail_len as usize).min(r.tail.len());
    // The tail lives in the record itself; borrow it from the input bytes.
    let tail_at = std::mem::offset_of!(IoRecord, tail);
    let plaintext = r.flags & IO_TLS_PLAINTEXT != 0;
    Ok(Transfer {
        tgid: r.head.tgid,
        fd: if plaintext {
            r.head.fd | TLS_FD
        } else {
            r.head.fd
        },
        read: r.head.kind == KIND_READ,
        side: side(r.head.side),
        after_loss: r.flags & IO_LOST != 0,
        io: Io {
            start_ns: r.start_ns,
            end_ns: r.head.time_ns,
            len: r.len,
            captured,
            tail: &bytes[tail_at..tail_at + tail_len],
            tid: r.head.tid,
            capture: capture(r.flags),
        },
    })
}

/// What a transfer record's bytes are, from its flags.
fn capture(flags: u8) -> Capture {
    if flags & IO_H2 == 0 {
        return Capture::Plain;
    }
    let opener = if flags & IO_H2_PREFACE != 0 {
        Some(Opener::ClientPreface)
    } else if flags & IO_H2_SETTINGS != 0 {
        Some(Opener::ServerSettings)
    } else if flags & IO_H2_MIDWAY != 0 {
        Some(Opener::Midway)
    } else {
        None
    };
    Capture::Frames {
        opener,
        cut: flags & IO_H2_CUT != 0,
    }
}

/// The kernel struct `T` at the start of `bytes`.
fn read<T: Copy>(bytes: &[u8]) -> Result<T, Malformed> {
    let size = std::mem::size_of::<T>();
    if bytes.len() < size {
        return Err(Malformed::Short(bytes.len(), size));
    }
    // SAFETY: the record structs are `repr(C)` integers and byte arrays (any bit pattern is a
    // value), and `bytes` holds at least `size` of them; read unaligned.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

fn conn(head: &RecordHead) -> Conn {
    Conn {
        tgid: head.tgid,
        fd: head.fd,
        time_ns: head.time_ns,
    }
}

/// The side a record names, if any.
fn side(side: u8) -> Option<Role> {
    match side {
        ROLE_CLIENT => Some(Role::Client),
        ROLE_SERVER => Some(Role::Server),
        _ => None,
    }
}

fn comm(comm: &[u8]) -> String {
    let end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// The bytes of kernel records, as the programs build them: for the tracker's tests.
#[cfg(test)]
pub mod build {
    use periscope_common::http::{COMM, KIND_WRITE};

    use super::*;

    fn bytes<T: Copy>(record: &T) -> Vec<u8> {
        // SAFETY: plain `repr(C)` integers without padding.
        unsafe {
            std::slice::from_raw_parts((record as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    fn head(kind: u8, side: u8, fd: u32) -> RecordHead {
        RecordHead {
            kind,
            side,
            tgid: std::process::id(),
            tid: std::process::id(),
            fd,
            time_ns: 2_000,
            ..Default::default()
        }
    }

    fn comm_bytes(name: &str) -> [u8; COMM] {
        let mut comm = [0; COMM];
        comm[..name.len()].copy_from_slice(name.as_bytes());
        comm
    }

    /// A transfer of all of `data` on this process's `fd`.
    pub fn io(read: bool, fd: u32, data: &[u8]) -> Vec<u8> {
        let record = IoRecord {
            head: head(if read { KIND_READ } else { KIND_WRITE }, 0, fd),
            start_ns: 1_000,
            len: data.len() as u64,
            captured: data.len() as u16,
            ..Default::default()
        };
        [bytes(&record), data.to_vec()].concat()
    }

    pub fn open(side: u8, fd: u32, open: SockOpen) -> Vec<u8> {
        bytes(&OpenRecord {
            head: head(KIND_OPEN, side, fd),
            open,
            comm: comm_bytes("server"),
        })
    }

    pub fn dup(side: u8, fd: u32, original_fd: u32) -> Vec<u8> {
        bytes(&DupRecord {
            head: head(KIND_DUP, side, fd),
            original_fd,
            _pad: 0,
        })
    }

    pub fn close(side: u8, fd: u32, whole_socket: bool) -> Vec<u8> {
        bytes(&CloseRecord {
            head: head(KIND_CLOSE, side, fd),
            whole_socket: whole_socket as u8,
            _pad: [0; 7],
        })
    }

    pub fn accept(fd: u32, listen_fd: u32) -> Vec<u8> {
        bytes(&AcceptRecord {
            head: head(KIND_ACCEPT, ROLE_SERVER, fd),
            listen_fd,
            _pad: 0,
            comm: comm_bytes("server"),
        })
    }

    pub fn exit() -> Vec<u8> {
        bytes(&ExitRecord {
            head: head(KIND_EXIT, 0, 0),
        })
    }

    /// `record` with `set` applied to its [`IoRecord`].
    pub fn with_io(mut record: Vec<u8>, set: impl FnOnce(&mut IoRecord)) -> Vec<u8> {
        let mut io: IoRecord = read(&record).expect("an IO record");
        set(&mut io);
        record[..IO_RECORD_SIZE].copy_from_slice(&bytes(&io));
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_decodes_to_its_own_fields() {
        let read = build::with_io(build::io(true, 5, b"GET / HTTP/1.1\r\n"), |r| {
            r.head.side = ROLE_SERVER;
            r.flags = IO_LOST;
            r.len = 4096;
            r.tail = *b"0\r\n\r\n\0\0\0";
            r.tail_len = 5;
        });
        let Record::Io(t) = decode(&read).expect("decodes") else {
            panic!("not a transfer");
        };
        assert!(t.read && t.after_loss);
        assert_eq!((t.fd, t.side, t.io.len), (5, Some(Role::Server), 4096));
        assert_eq!((t.io.start_ns, t.io.end_ns), (1_000, 2_000));
        assert_eq!(t.io.captured, b"GET / HTTP/1.1\r\n");
        assert_eq!(t.io.tail, b"0\r\n\r\n");

        let tls = build::with_io(build::io(false, 7, b"x"), |r| r.flags = IO_TLS_PLAINTEXT);
        let Record::Io(t) = decode(&tls).expect("decodes") else {
            panic!("not a transfer");
        };
        assert_eq!(
            t.fd,
            7 | TLS_FD,
            "plaintext is keyed apart from the socket's bytes"
        );
        assert!(!t.read && !t.after_loss && t.side.is_none());

        let me = std::process::id();
        let conn = |fd| Conn {
            tgid: me,
            fd,
            time_ns: 2_000,
        };
        assert_eq!(
            decode(&build::accept(9, 3)),
            Ok(Record::Accept {
                conn: conn(9),
                listen_fd: 3,
                comm: "server".into()
            })
        );
        assert_eq!(
            decode(&build::dup(ROLE_CLIENT, 8, 6)),
            Ok(Record::Dup {
                conn: conn(8),
                original_fd: 6
            })
        );
        assert_eq!(
            decode(&build::close(0, 8, true)),
            Ok(Record::Close {
                conn: conn(8),
                whole_socket: true
            })
        );
        assert_eq!(decode(&build::exit()), Ok(Record::Exit { tgid: me }));
        let Ok(Record::Open { side, comm, .. }) = decode(&build::open(0, 4, SockOpen::default()))
        else {
            panic!("not an open");
        };
        assert_eq!((side, comm.as_str()), (None, "server"));
    }

    #[test]
    fn short_records_and_unknown_kinds_are_errors_not_panics() {
        assert_eq!(decode(&[]), Err(Malformed::Short(0, 24)));
        let dup = build::dup(0, 8, 6);
        assert_eq!(decode(&dup[..30]), Err(Malformed::Short(30, 32)));
        let io = build::io(true, 5, b"abc");
        assert!(matches!(decode(&io[..40]), Err(Malformed::Short(40, _))));
        let mut unknown = build::exit();
        unknown[0] = 99;
        assert_eq!(decode(&unknown), Err(Malformed::UnknownKind(99)));
    }

    #[test]
    fn captured_bytes_never_exceed_the_record() {
        // A record that claims more captured bytes than it carries (truncated in transit).
        let io = build::with_io(build::io(true, 5, b"abc"), |r| r.captured = 400);
        let Ok(Record::Io(t)) = decode(&io) else {
            panic!("decodes");
        };
        assert_eq!(t.io.captured, b"abc");
    }
}
