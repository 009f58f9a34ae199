//! Parsing the bytes the kernel captured: the start of an HTTP/1.x request or response head.
//!
//! Input is untrusted and often truncated (the kernel copies at most `CAPTURE` bytes of a read
//! or write), so a head that is cut short still yields what it got (method, path, status) and
//! says that it is incomplete. Nothing here allocates more than the input, and nothing panics
//! (see fuzz/fuzz_targets/http_parse.rs).

/// Headers looked at; any more in one head are skipped by httparse's bounded array.
const MAX_HEADERS: usize = 64;

/// How the body of a message is delimited (RFC 9112 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
    /// Read until the connection closes (responses without length or chunking).
    UntilClose,
}

/// What a message head told us.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Head {
    /// Bytes of the head including the blank line; `None` when the head is incomplete.
    pub len: Option<usize>,
    /// HTTP minor version (0 or 1).
    pub minor_version: Option<u8>,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub connection_close: bool,
    pub expect_continue: bool,
    pub traceparent: Option<String>,
    pub host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    pub head: Head,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub head: Head,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not HTTP/1.x at all.
    Invalid,
    /// Too short to tell yet.
    TooShort,
}

/// Longest value kept of a header we copy (traceparent is 55 bytes; a Host name is bounded).
const MAX_VALUE: usize = 256;

/// Reads the headers that matter. Only the values kept (`traceparent`, `Host`) are copied: the
/// others are compared in place (this runs for every message; an allocation per header showed
/// in the daemon's profile under load).
fn header_facts(headers: &[httparse::Header<'_>], head: &mut Head) {
    for h in headers {
        if h.name.is_empty() {
            break;
        }
        fact(h.name.as_bytes(), h.value, head);
    }
}

/// What one header (its value as httparse gives it: without the whitespace around it) says.
/// Names are told apart by length first: most headers of a message are none of these.
fn fact(name: &[u8], value: &[u8], head: &mut Head) {
    let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
    // Only for the headers that matter: most do not.
    let bytes = || value[..value.len().min(MAX_VALUE)].trim_ascii();
    let kept = || String::from_utf8_lossy(bytes()).trim().to_string();
    match name.len() {
        14 if is(b"content-length") => head.content_length = content_length(value),
        17 if is(b"transfer-encoding") => {
            head.chunked = ends_with_ignore_case(bytes(), b"chunked");
        }
        10 if is(b"connection") => head.connection_close = bytes().eq_ignore_ascii_case(b"close"),
        6 if is(b"expect") => head.expect_continue = bytes().eq_ignore_ascii_case(b"100-continue"),
        11 if is(b"traceparent") => head.traceparent = Some(kept()),
        4 if is(b"host") => head.host = Some(kept()),
        _ => {}
    }
}

/// A `Content-Length` value: digits (up to 19 fit a u64) at once, anything else as `str`'s
/// parse of the trimmed text.
fn content_length(value: &[u8]) -> Option<u64> {
    if !value.is_empty() && value.len() <= 19 && value.iter().all(u8::is_ascii_digit) {
        return Some(value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')));
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.trim().parse().ok())
}

/// A byte httparse takes in a header value or reason phrase (HTAB, SP, VCHAR, obs-text).
fn is_value_byte(b: u8) -> bool {
    (b >= 0x20 && b != 0x7f) | (b == b'\t')
}

/// Whether every byte is one of a header value's.
fn all_value_bytes(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| is_value_byte(*b))
}

/// The head's lines from `at` on: its headers, each given to [`fact`], up to the blank line;
/// the head's length. Only what httparse reads the same way: every line ends in CRLF, every
/// header is `name:value` with a token name and value bytes, at most [`MAX_HEADERS`], the head
/// whole. Anything else is `None`, left to httparse.
fn scan_headers(bytes: &[u8], mut at: usize, head: &mut Head) -> Option<usize> {
    let mut headers = 0;
    loop {
        let line = bytes.get(at..)?;
        if line.starts_with(b"\r\n") {
            return Some(at + 2);
        }
        headers += 1;
        if headers > MAX_HEADERS {
            return None;
        }
        // One pass: the name's token bytes, the colon, the value's bytes up to the CR (a byte
        // that is neither ends it), then CRLF. Lines are short: a search per line cost more.
        let colon = line.iter().position(|b| !is_token_char(*b))?;
        if colon == 0 || line[colon] != b':' {
            return None;
        }
        let value = &line[colon + 1..];
        let end = value.iter().position(|b| !is_value_byte(*b))?;
        if !value[end..].starts_with(b"\r\n") {
            return None;
        }
        at += colon + 1 + end + 2;
        let value = value[..end].trim_ascii_start();
        let value = match value.iter().rposition(|b| *b != b' ' && *b != b'\t') {
            Some(last) => &value[..=last],
            None => &value[..0],
        };
        fact(&line[..colon], value, head);
    }
}

/// HTTP/1.0 or 1.1 (httparse takes no other).
fn version(bytes: &[u8]) -> Option<u8> {
    match bytes {
        b"HTTP/1.0" => Some(0),
        b"HTTP/1.1" => Some(1),
        _ => None,
    }
}

/// A request head that `bytes` hold whole and plain (see [`scan_headers`]), read in one pass:
/// most heads. `None` leaves the rest to httparse.
fn plain_request(bytes: &[u8]) -> Option<RequestHead> {
    let eol = memchr::memchr(b'\n', bytes)?;
    let line = bytes[..eol].strip_suffix(b"\r")?;
    let method_len = line.iter().position(|b| !is_token_char(*b))?;
    if method_len == 0 || line[method_len] != b' ' {
        return None;
    }
    let rest = &line[method_len + 1..];
    let target_len = rest.iter().position(|b| !(0x21..=0x7e).contains(b))?;
    if target_len == 0 || rest[target_len] != b' ' {
        return None;
    }
    let minor = version(&rest[target_len + 1..])?;
    let mut head = Head {
        minor_version: Some(minor),
        ..Default::default()
    };
    head.len = Some(scan_headers(bytes, eol + 1, &mut head)?);
    // ASCII, checked above.
    let method = std::str::from_utf8(&line[..method_len]).ok()?;
    let target = std::str::from_utf8(&rest[..target_len]).ok()?;
    Some(RequestHead::new(method, target, head))
}

/// As [`plain_request`], for a response head.
fn plain_response(bytes: &[u8]) -> Option<ResponseHead> {
    let eol = memchr::memchr(b'\n', bytes)?;
    let line = bytes[..eol].strip_suffix(b"\r")?;
    let minor = version(line.get(..8)?)?;
    let (b' ', code @ [b'0'..=b'9', b'0'..=b'9', b'0'..=b'9']) = (*line.get(8)?, line.get(9..12)?)
    else {
        return None;
    };
    match line.get(12) {
        None => {}
        Some(b' ') if all_value_bytes(&line[13..]) => {}
        Some(_) => return None,
    }
    let status = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let mut head = Head {
        minor_version: Some(minor),
        ..Default::default()
    };
    head.len = Some(scan_headers(bytes, eol + 1, &mut head)?);
    Some(ResponseHead { status, head })
}

fn ends_with_ignore_case(bytes: &[u8], suffix: &[u8]) -> bool {
    bytes.len() >= suffix.len() && bytes[bytes.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// The first `max` characters of `s`.
fn first_chars(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s; // no more characters than bytes
    }
    s.char_indices().nth(max).map_or(s, |(end, _)| &s[..end])
}

/// The methods OTel names (`http.request.method`); any other token is a method too.
pub const KNOWN_METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// Longest method token looked for (WebDAV's are at most 16 bytes: `VERSION-CONTROL`).
const MAX_METHOD: usize = 32;

/// What the first bytes of a read or write say about a request starting there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestStart {
    /// A request line: a known method and a space, or any method token (RFC 9110 §9.1), a
    /// space, a request-target, a space and `HTTP/1.`.
    Yes,
    /// The bytes end before they can tell (a request line split across reads).
    Maybe,
    No,
}

/// `tchar` of RFC 9110 §5.6.2, by byte (looked up for every byte of every header name).
static TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    table
};

/// `tchar` of RFC 9110 §5.6.2.
fn is_token_char(b: u8) -> bool {
    TOKEN[b as usize]
}

/// Whether `bytes` start a request line. Known methods need only their space (so a request
/// line longer than the capture is still one); other tokens need the whole line up to
/// `HTTP/1.`, so that text protocols (`get key\r\n`, `EHLO host\r\n`) and binary data are not
/// taken for requests.
pub fn request_start(bytes: &[u8]) -> RequestStart {
    let method_len = bytes
        .iter()
        .take(MAX_METHOD + 1)
        .position(|b| !is_token_char(*b));
    let Some(method_len) = method_len else {
        return if bytes.len() <= MAX_METHOD {
            RequestStart::Maybe
        } else {
            RequestStart::No
        };
    };
    if method_len == 0 || bytes[method_len] != b' ' {
        return RequestStart::No;
    }
    if KNOWN_METHODS
        .iter()
        .any(|m| m.as_bytes() == &bytes[..method_len])
    {
        return RequestStart::Yes;
    }
    let rest = &bytes[method_len + 1..];
    let Some(target_len) = rest.iter().position(|b| *b == b' ' || b.is_ascii_control()) else {
        return RequestStart::Maybe;
    };
    if target_len == 0 || rest[target_len] != b' ' {
        return RequestStart::No;
    }
    let version = &rest[target_len + 1..];
    let want = b"HTTP/1.";
    if version.len() >= want.len() {
        if version.starts_with(want) {
            RequestStart::Yes
        } else {
            RequestStart::No
        }
    } else if want.starts_with(version) {
        RequestStart::Maybe
    } else {
        RequestStart::No
    }
}

/// Whether `bytes` certainly start a request (see [`request_start`]). Used where a stream is
/// resynchronised and where a connection's side is guessed, before httparse, so that binary
/// garbage is rejected cheaply and unambiguously.
pub fn looks_like_request(bytes: &[u8]) -> bool {
    request_start(bytes) == RequestStart::Yes
}

pub fn looks_like_response(bytes: &[u8]) -> bool {
    bytes.starts_with(b"HTTP/1.")
}

/// Parses the start of a request head.
pub fn request(bytes: &[u8]) -> Result<RequestHead, ParseError> {
    // Maybe: httparse says how far the line got (a line longer than the capture is kept).
    if request_start(bytes) == RequestStart::No {
        return Err(ParseError::Invalid);
    }
    if let Some(head) = plain_request(bytes) {
        return Ok(head);
    }
    match complete_request(bytes) {
        Some(head) => Ok(head),
        None => request_in_part(bytes),
    }
}

/// [`request`] for any bytes: a head cut short keeps what it got (its request line, the
/// headers before the cut).
fn request_in_part(bytes: &[u8]) -> Result<RequestHead, ParseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = req.parse(bytes);
    let len = match status {
        Ok(httparse::Status::Complete(n)) => Some(n),
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => None,
        // A head cut off by the capture limit in the middle of a header still has its
        // request line: keep it when httparse got that far.
        Err(_) if req.version.is_some() => None,
        Err(_) => return Err(ParseError::Invalid),
    };
    let (Some(method), Some(target)) = (req.method, req.path.or_else(|| cut_target(bytes))) else {
        return Err(ParseError::TooShort);
    };
    Ok(RequestHead::new(
        method,
        target,
        httparse_head(len, req.version, req.headers),
    ))
}

/// The facts of a head httparse read (`len`: its length, when whole).
fn httparse_head(
    len: Option<usize>,
    minor_version: Option<u8>,
    headers: &[httparse::Header<'_>],
) -> Head {
    let mut head = Head {
        len,
        minor_version,
        ..Default::default()
    };
    header_facts(headers, &mut head);
    head
}

/// A request head that `bytes` hold whole, parsed into headers left uninitialised: the common
/// case, without writing the 64 empty headers first (2 KiB per head, four heads per request).
/// Anything else (a head cut short, an error) goes the way that keeps the headers read so far.
fn complete_request(bytes: &[u8]) -> Option<RequestHead> {
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let Ok(httparse::Status::Complete(n)) = httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, bytes, &mut headers)
    else {
        return None;
    };
    Some(RequestHead::new(
        req.method?,
        req.path?,
        httparse_head(Some(n), req.version, req.headers),
    ))
}

/// As [`complete_request`], for a response head.
fn complete_response(bytes: &[u8]) -> Option<ResponseHead> {
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let Ok(httparse::Status::Complete(n)) = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, bytes, &mut headers)
    else {
        return None;
    };
    Some(ResponseHead {
        status: resp.code?,
        head: httparse_head(Some(n), resp.version, resp.headers),
    })
}

/// The request-target of a request line that `bytes` end inside of (cut by the capture, or
/// split across reads), as far as it goes; `None` before its first byte. Only after a known
/// method: [`request_start`] takes no other token without its whole line.
fn cut_target(bytes: &[u8]) -> Option<&str> {
    let space = bytes.iter().position(|b| *b == b' ')?;
    if !KNOWN_METHODS
        .iter()
        .any(|m| m.as_bytes() == &bytes[..space])
    {
        return None;
    }
    let target = &bytes[space + 1..];
    if target.is_empty() || !target.iter().all(u8::is_ascii_graphic) {
        return None;
    }
    std::str::from_utf8(target).ok()
}

/// Parses the start of a response head.
pub fn response(bytes: &[u8]) -> Result<ResponseHead, ParseError> {
    if bytes.len() < 12 {
        return if b"HTTP/1.".starts_with(&bytes[..bytes.len().min(7)]) {
            Err(ParseError::TooShort)
        } else {
            Err(ParseError::Invalid)
        };
    }
    if !looks_like_response(bytes) {
        return Err(ParseError::Invalid);
    }
    if let Some(head) = plain_response(bytes) {
        return Ok(head);
    }
    match complete_response(bytes) {
        Some(head) => Ok(head),
        None => response_in_part(bytes),
    }
}

/// [`response`] for any bytes, as [`request_in_part`].
fn response_in_part(bytes: &[u8]) -> Result<ResponseHead, ParseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => Some(n),
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => None,
        Err(_) if resp.code.is_some() => None,
        Err(_) => return Err(ParseError::Invalid),
    };
    let Some(status) = resp.code else {
        return Err(ParseError::TooShort);
    };
    Ok(ResponseHead {
        status,
        head: httparse_head(len, resp.version, resp.headers),
    })
}

impl RequestHead {
    /// A request's method, target (its first 2,048 characters) and head.
    fn new(method: &str, target: &str, head: Head) -> Self {
        Self {
            method: method.to_string(),
            target: first_chars(target, 2048).to_string(),
            head,
        }
    }

    /// RFC 9112 §6.3 for requests: no length and no chunking means no body.
    pub fn body(&self) -> Body {
        if self.head.chunked {
            Body::Chunked
        } else {
            match self.head.content_length {
                Some(0) | None => Body::None,
                Some(n) => Body::Length(n),
            }
        }
    }
}

impl ResponseHead {
    /// RFC 9112 §6.3 for responses to `method`.
    pub fn body(&self, method: &str) -> Body {
        if method == "HEAD" || self.status < 200 || self.status == 204 || self.status == 304 {
            Body::None
        } else if self.head.chunked {
            Body::Chunked
        } else if let Some(n) = self.head.content_length {
            if n == 0 { Body::None } else { Body::Length(n) }
        } else {
            Body::UntilClose
        }
    }
}

/// Whether the bytes end a chunked body: the last chunk `0\r\n` and the final CRLF. Only a
/// guess, for a body whose chunk sizes were lost (see [`Chunked::Blind`]): data may end so too.
pub fn ends_chunked_body(last_bytes: &[u8]) -> bool {
    last_bytes.ends_with(b"0\r\n\r\n")
}

/// A chunked body followed by its chunk sizes (RFC 9112 §7.1): where a decoder is between the
/// bytes it was given. Data is skipped by count, never looked into, so a body that merely ends
/// in `0\r\n\r\n` does not end early, and the message after it starts where the body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// In a chunk-size line's hex digits: the size so far and how many digits.
    Size { size: u64, digits: u8 },
    /// In a chunk-size line after its digits (extensions, whitespace, CR), up to its LF.
    SizeLine { size: u64 },
    /// In a chunk's data, with this many bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk (size 0), at the start of a trailer line or the final CRLF.
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// The final CRLF's CR seen.
    FinalLf,
    /// The sizes were lost (bytes not captured across a chunk boundary): the body's end can only
    /// be guessed from its last bytes ([`ends_chunked_body`]).
    Blind,
}

/// Bytes that cannot be a chunked body's framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkedError;

/// Hex digits a chunk size may have (a u64).
const MAX_SIZE_DIGITS: u8 = 16;

impl Chunked {
    /// At the start of a chunked body.
    pub const START: Self = Self::Size { size: 0, digits: 0 };

    /// Follows `bytes`: `Ok(Some(n))` when the body ends after its first `n` bytes, `Ok(None)`
    /// when all of them belong to it.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, ChunkedError> {
        let mut at = 0;
        while at < bytes.len() {
            if let Self::Data(left) = *self {
                let take = left.min((bytes.len() - at) as u64);
                at += take as usize;
                *self = if take == left {
                    Self::DataEnd
                } else {
                    Self::Data(left - take)
                };
                continue;
            }
            let byte = bytes[at];
            at += 1;
            if self.step(byte)? {
                return Ok(Some(at));
            }
        }
        Ok(None)
    }

    /// One framing byte; whether it ends the body.
    fn step(&mut self, byte: u8) -> Result<bool, ChunkedError> {
        *self = match (*self, byte) {
            (Self::Size { size, digits }, _) if byte.is_ascii_hexdigit() => {
                if digits == MAX_SIZE_DIGITS {
                    return Err(ChunkedError);
                }
                let digit = (byte as char).to_digit(16).expect("a hex digit") as u64;
                Self::Size {
                    size: size << 4 | digit,
                    digits: digits + 1,
                }
            }
            (Self::Size { digits: 0, .. }, _) => return Err(ChunkedError),
            (Self::Size { size, .. } | Self::SizeLine { size }, b'\n') => match size {
                0 => Self::TrailerStart,
                n => Self::Data(n),
            },
            (Self::Size { size, .. }, b';' | b' ' | b'\t' | b'\r') => Self::SizeLine { size },
            (Self::Size { .. }, _) => return Err(ChunkedError),
            (Self::SizeLine { size }, _) => Self::SizeLine { size },
            (Self::DataEnd, b'\r') => Self::DataEnd,
            (Self::DataEnd, b'\n') => Self::START,
            (Self::DataEnd, _) => return Err(ChunkedError),
            (Self::TrailerStart, b'\r') => Self::FinalLf,
            (Self::TrailerStart | Self::FinalLf, b'\n') => return Ok(true),
            (Self::FinalLf, _) => return Err(ChunkedError),
            (Self::Trailer, b'\n') => Self::TrailerStart,
            (Self::TrailerStart | Self::Trailer, _) => Self::Trailer,
            (Self::Data(_) | Self::Blind, _) => *self,
        };
        Ok(false)
    }

    /// `n` bytes went by unseen (not captured): fine inside one chunk's data; anywhere else the
    /// sizes are lost and the decoder goes [`Chunked::Blind`]. Whether it still knows where it is.
    pub fn skip(&mut self, n: u64) -> bool {
        match *self {
            _ if n == 0 => true,
            Self::Data(left) if n <= left => {
                *self = if n == left {
                    Self::DataEnd
                } else {
                    Self::Data(left - n)
                };
                true
            }
            _ => {
                *self = Self::Blind;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Heads, whole or cut, with headers that matter and others, in any case, with odd bytes.
    fn heads() -> impl Strategy<Value = Vec<u8>> {
        let line = prop::sample::select(vec![
            &b"Host: api.example:8080\r\n"[..],
            &b"host:  a \t\r\n"[..],
            &b"Content-Length: 42\r\n"[..],
            &b"content-length:7 \r\n"[..],
            &b"Transfer-Encoding: gzip, chunked\r\n"[..],
            &b"Connection: close\r\n"[..],
            &b"Expect: 100-continue\r\n"[..],
            &b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"[..],
            &b"X-Other: \x80\xff\r\n"[..],
            &b"X-Del: a\x7fb\r\n"[..],
            &b"X-Cr: a\rb\r\n"[..],
            &b"Bad Name: x\r\n"[..],
            &b"Empty:\r\n"[..],
            &b"Bare: lf\n"[..],
            &b" folded\r\n"[..],
            &b"\r\n"[..],
        ]);
        let start = prop::sample::select(vec![
            &b"GET /a/b?q=1 HTTP/1.1\r\n"[..],
            &b"PURGE /x HTTP/1.0\r\n"[..],
            &b"POST / HTTP/1.1\n"[..],
            &b"GET /\xc3\xa9 HTTP/1.1\r\n"[..],
            &b"HTTP/1.1 200 OK\r\n"[..],
            &b"HTTP/1.0 404\r\n"[..],
            &b"HTTP/1.1 204 No \x80Content\r\n"[..],
            &b"HTTP/1.1 2x0 OK\r\n"[..],
        ]);
        (
            start,
            prop::collection::vec(line, 0..80),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(start, lines, cut)| {
                let mut bytes = start.to_vec();
                for line in lines {
                    bytes.extend_from_slice(line);
                }
                bytes.extend_from_slice(b"\r\nbody");
                bytes.truncate(cut.index(bytes.len() + 1).max(1));
                bytes
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        /// The whole-head path finds what the path for heads in part finds, or leaves the
        /// head to it.
        #[test]
        fn whole_heads_parse_as_heads_in_part(bytes in heads()) {
            if let Some(head) = complete_request(&bytes) {
                prop_assert_eq!(Ok(head), request_in_part(&bytes));
            }
            if let Some(head) = complete_response(&bytes) {
                prop_assert_eq!(Ok(head), response_in_part(&bytes));
            }
            if let Some(head) = plain_request(&bytes) {
                prop_assert_eq!(Ok(head), request_in_part(&bytes));
            }
            if let Some(head) = plain_response(&bytes) {
                prop_assert_eq!(Ok(head), response_in_part(&bytes));
            }
        }
    }

    #[test]
    fn token_characters() {
        for b in 0..=255u8 {
            let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(is_token_char(b), tchar, "{b}");
        }
    }

    #[test]
    fn header_values_compared_in_place() {
        let req = request(
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked \r\nConnection:  CLOSE\r\n\
              Expect: 100-Continue\r\nHost:  example.org \r\n\r\n",
        )
        .unwrap();
        assert!(req.head.chunked);
        assert!(req.head.connection_close);
        assert!(req.head.expect_continue);
        assert_eq!(req.head.host.as_deref(), Some("example.org"));
        let resp =
            response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n").unwrap();
        assert!(!resp.head.chunked, "chunked must be the last coding");
        assert!(!resp.head.connection_close);
    }

    #[test]
    fn long_targets_are_cut_at_a_character() {
        assert_eq!(first_chars("/abc", 2048), "/abc");
        assert_eq!(first_chars("/é/é", 3), "/é/");
        let long = format!("/{}", "é".repeat(3000));
        assert_eq!(first_chars(&long, 2048).chars().count(), 2048);
    }

    #[test]
    fn complete_request_with_headers() {
        let r = request(
            b"POST /users/42?x=1 HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\n\
              traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\nhello",
        )
        .unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.target, "/users/42?x=1");
        assert_eq!(r.head.len, Some(131));
        assert_eq!(r.body(), Body::Length(5));
        assert_eq!(r.head.host.as_deref(), Some("api"));
        assert_eq!(
            r.head.traceparent.as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
    }

    #[test]
    fn truncated_request_keeps_its_request_line() {
        let r = request(b"GET /a HTTP/1.1\r\nHost: x\r\nUser-Agent: very-lo").unwrap();
        assert_eq!((r.method.as_str(), r.target.as_str()), ("GET", "/a"));
        assert_eq!(r.head.len, None);
    }

    #[test]
    fn any_method_token_starts_a_request_when_its_line_says_http() {
        use RequestStart::*;
        for (bytes, want) in [
            (&b"GET /"[..], Yes),
            (b"PURGE /cache/x HTTP/1.1\r\n", Yes),
            (b"PROPFIND /dav/ HTTP/1.1\r\n", Yes),
            (b"M-SEARCH * HTTP/1.1\r\n", Yes),
            (b"PURGE /cache/x HT", Maybe),
            (b"PURGE /cache", Maybe),
            (b"PURG", Maybe),
            (b"", Maybe),
            (b"get key\r\n", No),
            (b"EHLO mail.example.org\r\n", No),
            (b"PURGE /x SPDY/3\r\n", No),
            (b"PURGE  / HTTP/1.1\r\n", No),
            (b"\x16\x03\x01", No),
            (b"GET\x00/ HTTP/1.1", No),
        ] {
            assert_eq!(request_start(bytes), want, "{}", bytes.escape_ascii());
        }
        let long_token = [b'A'; MAX_METHOD + 1];
        assert_eq!(request_start(&long_token), No);
        let r = request(b"MKCOL /dav/new HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(
            (r.method.as_str(), r.target.as_str()),
            ("MKCOL", "/dav/new")
        );
        assert_eq!(request(b"PURGE /x HT").map(|r| r.head.len), Ok(None));
        assert_eq!(request(b"PURGE /cache"), Err(ParseError::TooShort));
    }

    #[test]
    fn garbage_is_invalid() {
        assert_eq!(
            request(b"\x16\x03\x01\x02\x00\x01"),
            Err(ParseError::Invalid)
        );
        assert_eq!(request(b"GET\x00/ HTTP/1.1\r\n"), Err(ParseError::Invalid));
        assert_eq!(response(b"SSH-2.0-OpenSSH_9.2"), Err(ParseError::Invalid));
        assert_eq!(response(b"HTTP/1"), Err(ParseError::TooShort));
    }

    #[test]
    fn response_bodies() {
        let chunked = response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert_eq!(chunked.body("GET"), Body::Chunked);
        let sized = response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\n").unwrap();
        assert_eq!((sized.status, sized.body("GET")), (404, Body::Length(9)));
        assert_eq!(sized.body("HEAD"), Body::None);
        let old = response(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\n").unwrap();
        assert_eq!(old.body("GET"), Body::UntilClose);
        let cont = response(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
        assert_eq!(cont.body("POST"), Body::None);
    }

    #[test]
    fn chunked_terminator() {
        assert!(ends_chunked_body(b"5\r\nhello\r\n0\r\n\r\n"));
        assert!(!ends_chunked_body(b"5\r\nhello\r\n"));
    }

    /// Feeds `bytes` in pieces of `step` bytes; where the body ended, counted from the start.
    fn chunked_end(bytes: &[u8], step: usize) -> Result<Option<usize>, ChunkedError> {
        let mut decoder = Chunked::START;
        for (i, piece) in bytes.chunks(step).enumerate() {
            if let Some(n) = decoder.feed(piece)? {
                return Ok(Some(i * step + n));
            }
        }
        Ok(None)
    }

    #[test]
    fn chunked_bodies_end_where_their_sizes_say_in_any_split() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
        for step in 1..=body.len() {
            assert_eq!(
                chunked_end(body, step),
                Ok(Some(body.len())),
                "pieces of {step}"
            );
        }
        // The next message starts right after: its bytes are not the body's.
        let pipelined = [&body[..], b"GET /next HTTP/1.1\r\n\r\n"].concat();
        assert_eq!(chunked_end(&pipelined, 7), Ok(Some(body.len())));
        let trailers = b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nX-Other: 2\r\n\r\n";
        assert_eq!(chunked_end(trailers, 2), Ok(Some(trailers.len())));
        assert_eq!(chunked_end(b"0\n\n", 1), Ok(Some(3)), "bare LFs");
    }

    #[test]
    fn data_that_looks_like_the_end_is_data() {
        // CSV rows whose last one ends in "0\r\n", in a chunk: not the end of the body.
        let rows = b"a,10\r\nb,0\r\n\r\n";
        let body = [format!("{:x}\r\n", rows.len()).as_bytes(), rows, b"\r\n"].concat();
        assert!(
            ends_chunked_body(&body[..body.len() - 2]),
            "the suffix test is fooled"
        );
        assert_eq!(chunked_end(&body, 4), Ok(None), "the decoder is not");
        let whole = [&body[..], b"0\r\n\r\n"].concat();
        assert_eq!(chunked_end(&whole, 4), Ok(Some(whole.len())));
    }

    #[test]
    fn unseen_bytes_inside_one_chunk_keep_the_place_and_elsewhere_lose_it() {
        let mut decoder = Chunked::START;
        assert_eq!(decoder.feed(b"2800\r\nxy"), Ok(None));
        assert!(decoder.skip(0x2800 - 3), "inside the chunk's data");
        assert_eq!(decoder, Chunked::Data(1));
        assert_eq!(decoder.feed(b"z\r\n0\r\n\r\n"), Ok(Some(8)));
        let mut decoder = Chunked::START;
        assert!(!decoder.skip(5), "a size line went by unseen");
        assert_eq!(decoder, Chunked::Blind);
    }

    #[test]
    fn framing_that_is_not_chunked_is_an_error() {
        assert_eq!(chunked_end(b"zz\r\n", 1), Err(ChunkedError));
        assert_eq!(chunked_end(b"\r\n", 1), Err(ChunkedError), "no digits");
        assert_eq!(
            chunked_end(b"3\r\nabcX", 1),
            Err(ChunkedError),
            "no CRLF after data"
        );
        assert_eq!(
            chunked_end(b"11111111111111111\r\n", 1),
            Err(ChunkedError),
            "too long"
        );
    }

    #[test]
    fn a_request_line_longer_than_the_capture_keeps_its_method_and_target_so_far() {
        let line = format!("GET /users/{} HTTP/1.1\r\n", "9".repeat(700));
        let cut = &line.as_bytes()[..512];
        let head = request(cut).expect("a request");
        assert_eq!((head.method.as_str(), head.head.len), ("GET", None));
        assert_eq!(head.target.len(), 508);
        assert!(head.target.starts_with("/users/999"));
        assert_eq!(request(b"GET "), Err(ParseError::TooShort), "no target yet");
        assert_eq!(
            request(b"PURGE /x"),
            Err(ParseError::TooShort),
            "unknown: needs its line"
        );
    }
}
