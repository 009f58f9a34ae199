//! The workloads of the kernel matrix (tests/kernels/), one binary with one role per
//! subcommand, std only, so that it runs in a minimal initramfs beside busybox. Each role does
//! an exact number of things and says how many it did; the VM's init compares that with what
//! Periscope counted.
//!
//! usage:
//!   kernel-workload serve PORT               HTTP/1.1 server (200 for every request), forever
//!   kernel-workload get PORT N               N GETs to 127.0.0.1:PORT, a new connection each
//!   kernel-workload serve2 PORT              HTTP/2 server, cleartext with prior knowledge
//!                                            (200 for every stream), forever
//!   kernel-workload get2 PORT N              N HTTP/2 GETs on one connection, all written at once
//!   kernel-workload tcp PORT N               N TCP connections to a listener of its own on PORT
//!   kernel-workload retransmit PORT          SYN retransmits (a full accept queue drops SYNs);
//!                                            prints the kernel's own count of them (TCP_INFO)
//!   kernel-workload read DEVICE N            N direct 4 KiB reads of DEVICE at distinct offsets
//!   kernel-workload spin THREADS MILLIS      THREADS busy threads for MILLIS (run-queue waits)

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::fs::OpenOptionsExt,
    time::{Duration, Instant},
};

const BLOCK: usize = 4096;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match words.as_slice() {
        ["serve", port] => serve(parse(port)),
        ["get", port, n] => get(parse(port), parse(n)),
        ["serve2", port] => serve2(parse(port)),
        ["get2", port, n] => get2(parse(port), parse(n)),
        ["tcp", port, n] => connect(parse(port), parse(n)),
        ["retransmit", port] => retransmit(parse(port)),
        ["read", device, n] => read(device, parse(n)),
        ["spin", threads, millis] => spin(parse(threads), parse(millis)),
        _ => {
            eprintln!(
                "usage: kernel-workload serve PORT | get PORT N | serve2 PORT | get2 PORT N | tcp PORT N | retransmit PORT | read DEVICE N | spin THREADS MILLIS"
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("kernel-workload {}: {e}", args.join(" "));
        std::process::exit(1);
    }
}

fn parse<T: std::str::FromStr>(word: &str) -> T {
    word.parse().unwrap_or_else(|_| {
        eprintln!("kernel-workload: {word:?} is not a number");
        std::process::exit(2)
    })
}

/// Answers every request with 200 until killed, one request per connection.
fn serve(port: u16) -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    println!("serve: listening on {port}");
    for stream in listener.incoming() {
        let stream = stream?;
        std::thread::spawn(move || {
            let _ = answer(stream);
        });
    }
    Ok(())
}

/// Reads one request (line and headers) and answers it, then closes: the client reads the
/// response to its end.
fn answer(stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 && !line.trim_end().is_empty() {
        line.clear();
    }
    writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
}

/// N requests one after the other, each on its own connection, each checked for a 200.
fn get(port: u16, n: u32) -> std::io::Result<()> {
    let mut ok = 0;
    for i in 0..n {
        let mut stream = connect_retrying(port)?;
        write!(
            stream,
            "GET /items/{i} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        if response.starts_with("HTTP/1.1 200 ") {
            ok += 1;
        }
    }
    println!("get: {ok} of {n} answered 200");
    if ok == n {
        Ok(())
    } else {
        Err(std::io::Error::other("not every request answered 200"))
    }
}

// A minimal HTTP/2 (RFC 9113) on both sides, enough for the matrix to see the kernel's frame
// walk count streams: header blocks use only HPACK's static table and literals without
// indexing, so neither side keeps a dynamic table.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// A frame's type, flags, stream and payload.
type Frame = (u8, u8, u32, Vec<u8>);

/// One frame; `None` at the end of the stream.
fn read_frame(stream: &mut impl Read) -> std::io::Result<Option<Frame>> {
    let mut head = [0u8; 9];
    match stream.read_exact(&mut head) {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload)?;
    Ok(Some((head[3], head[4], id, payload)))
}

/// Answers every stream's request with 200 and a 3-byte body, until killed.
fn serve2(port: u16) -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    println!("serve2: listening on {port}");
    for stream in listener.incoming() {
        let stream = stream?;
        std::thread::spawn(move || {
            let _ = answer2(stream);
        });
    }
    Ok(())
}

fn answer2(mut stream: TcpStream) -> std::io::Result<()> {
    let mut preface = [0u8; 24];
    stream.read_exact(&mut preface)?;
    stream.write_all(&frame(4, 0, 0, &[]))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    while let Some((kind, flags, id, _)) = read_frame(&mut reader)? {
        if kind == HEADERS && flags & END_STREAM != 0 {
            // `:status: 200` is static entry 8.
            let mut response = frame(HEADERS, END_HEADERS, id, &[0x88]);
            response.extend(frame(DATA, END_STREAM, id, b"ok\n"));
            stream.write_all(&response)?;
        }
    }
    Ok(())
}

/// N GETs on one connection, every request written in one write (N streams in flight), each
/// checked for a 200.
fn get2(port: u16, n: u32) -> std::io::Result<()> {
    let mut stream = connect_retrying(port)?;
    let mut out = PREFACE.to_vec();
    out.extend(frame(4, 0, 0, &[]));
    for i in 0..n {
        // :method GET (2), :scheme http (6), then :path (4) and :authority (1) as literals
        // without indexing.
        let path = format!("/items/{i}");
        let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
        block.extend(path.as_bytes());
        block.extend([0x01, 9]);
        block.extend(b"127.0.0.1");
        out.extend(frame(HEADERS, END_STREAM | END_HEADERS, 2 * i + 1, &block));
    }
    stream.write_all(&out)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let (mut ok, mut ended) = (0, 0);
    while ended < n {
        let Some((kind, flags, _, payload)) = read_frame(&mut reader)? else {
            break;
        };
        if kind == HEADERS && payload.first() == Some(&0x88) {
            ok += 1;
        }
        if kind == DATA && flags & END_STREAM != 0 {
            ended += 1;
        }
    }
    println!("get2: {ok} of {n} streams answered 200");
    if ok == n {
        Ok(())
    } else {
        Err(std::io::Error::other("not every stream answered 200"))
    }
}

/// The server may still be starting: a refused connect is retried for a few seconds.
fn connect_retrying(port: u16) -> std::io::Result<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// N connections to a listener of this process, each sending one byte that the listener reads
/// before both sides close.
fn connect(port: u16, n: u32) -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let acceptor = std::thread::spawn(move || -> std::io::Result<u32> {
        let mut accepted = 0;
        for _ in 0..n {
            let (mut stream, _) = listener.accept()?;
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte)?;
            accepted += 1;
        }
        Ok(accepted)
    });
    for _ in 0..n {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.write_all(b"x")?;
        // Wait for the listener's close so that every connection ends before the next starts.
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest)?;
    }
    let accepted = acceptor
        .join()
        .map_err(|_| std::io::Error::other("acceptor panicked"))??;
    println!("tcp: {n} connected, {accepted} accepted");
    Ok(())
}

/// Connections to a listener whose accept queue (backlog 1) is full: the kernel drops the third
/// one's SYN, and the client retransmits it (after 1 s, then 3 s) until an accept makes room.
/// The retransmits are counted by the kernel itself, per socket (`tcpi_total_retrans`), and
/// printed as `retransmits: N`, the number a tracer must count.
fn retransmit(port: u16) -> std::io::Result<()> {
    let listener = listen(port, 1)?;
    let queued: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(("127.0.0.1", port)))
        .collect::<std::io::Result<_>>()?;
    let acceptor = std::thread::spawn(move || -> std::io::Result<()> {
        // Past the first retransmit (1 s): the second one finds room.
        std::thread::sleep(Duration::from_millis(1500));
        for _ in 0..3 {
            listener.accept()?;
        }
        Ok(())
    });
    let dropped = TcpStream::connect(("127.0.0.1", port))?;
    acceptor
        .join()
        .map_err(|_| std::io::Error::other("acceptor panicked"))??;
    let mut total = 0;
    for stream in queued.iter().chain([&dropped]) {
        total += total_retrans(stream)?;
    }
    println!("retransmits: {total}");
    Ok(())
}

/// A listener on 127.0.0.1:`port` with accept queue `backlog` (std's is 128).
fn listen(port: u16, backlog: i32) -> std::io::Result<TcpListener> {
    use std::os::fd::FromRawFd;
    let check = |rc: i32| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    };
    // SAFETY: plain socket calls on a descriptor this function owns until it is wrapped.
    unsafe {
        let fd = check(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0))?;
        let listener = TcpListener::from_raw_fd(fd);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
            },
            sin_zero: [0; 8],
        };
        // As std's bind: the port of the previous run may still have connections in TIME_WAIT.
        let on: libc::c_int = 1;
        let on_len = size_of::<libc::c_int>() as libc::socklen_t;
        check(libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const on).cast(),
            on_len,
        ))?;
        let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        check(libc::bind(fd, (&raw const addr).cast(), len))?;
        check(libc::listen(fd, backlog))?;
        Ok(listener)
    }
}

/// The retransmits the kernel counted on `stream` (`tcp_info.tcpi_total_retrans`).
fn total_retrans(stream: &TcpStream) -> std::io::Result<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain integers; the kernel writes at most `len` bytes of it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.tcpi_total_retrans)
}

/// Direct (O_DIRECT) reads, so that each is one block request: no page cache, no readahead.
fn read(device: &str, n: u32) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(device)?;
    let mut buffer = AlignedBlock([0; BLOCK]);
    for i in 0..n {
        read_at(&file, &mut buffer.0, i as u64 * BLOCK as u64)?;
    }
    println!("read: {n} reads of {BLOCK} bytes from {device}");
    Ok(())
}

#[repr(align(4096))]
struct AlignedBlock([u8; BLOCK]);

fn read_at(file: &std::fs::File, buffer: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let read = file.read_at(buffer, offset)?;
    if read == buffer.len() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "short read at {offset}: {read}"
        )))
    }
}

/// More runnable threads than CPUs: each waits in the run queue while the others run.
fn spin(threads: u32, millis: u64) -> std::io::Result<()> {
    let until = Instant::now() + Duration::from_millis(millis);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut x = 0u64;
                while Instant::now() < until {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            })
        })
        .collect();
    for handle in handles {
        let _ = handle.join();
    }
    println!("spin: {threads} threads for {millis} ms");
    Ok(())
}
