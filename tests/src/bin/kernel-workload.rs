//! The workloads of the kernel matrix (tests/kernels/), one binary with one role per
//! subcommand, std only, so that it runs in a minimal initramfs beside busybox. Each role does
//! an exact number of things and says how many it did; the VM's init compares that with what
//! Periscope counted.
//!
//! usage:
//!   kernel-workload serve PORT               HTTP/1.1 server (200 for every request), forever
//!   kernel-workload get PORT N               N GETs to 127.0.0.1:PORT, a new connection each
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
        ["tcp", port, n] => connect(parse(port), parse(n)),
        ["retransmit", port] => retransmit(parse(port)),
        ["read", device, n] => read(device, parse(n)),
        ["spin", threads, millis] => spin(parse(threads), parse(millis)),
        _ => {
            eprintln!(
                "usage: kernel-workload serve PORT | get PORT N | tcp PORT N | retransmit PORT | read DEVICE N | spin THREADS MILLIS"
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
