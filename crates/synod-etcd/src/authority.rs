//! Accepting etcdctl's `:authority` of `http://host:port`.
//!
//! etcdctl (3.4, and its `--cluster` forms always) dials client URLs as they
//! are written, and gRPC-Go then sends the whole URL as the HTTP/2
//! `:authority`. etcd's Go server ignores it; the Rust HTTP/2 server (h2)
//! checks it as a URI authority and resets every stream that carries one
//! ("malformed authority"), and offers no setting to relax that.
//!
//! [`AuthorityFix`] sits between the socket and the HTTP/2 server and looks
//! at a connection's first header block. If its authority has no scheme, the
//! connection is handed through untouched from then on (no copy, no decode:
//! the normal case costs one header decode per connection). If it has one,
//! every header block of the connection is decoded and re-encoded with the
//! scheme removed from `:authority`; the rest of the bytes pass unchanged.
//! Only the client-to-server direction is read; writes go straight to the
//! socket.

use loona_hpack::{Decoder, Encoder};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame we emit: HTTP/2's default SETTINGS_MAX_FRAME_SIZE,
/// which every server accepts.
const MAX_FRAME: usize = 16_384;
/// A header block larger than this is not ours to fix: pass the connection
/// through and let the HTTP/2 server judge it.
const MAX_BLOCK: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Until the first header block: buffering to decide.
    Sniff,
    /// Re-encoding every header block.
    Rewrite,
    /// Plain bytes from here on.
    Pass,
}

/// A header block being collected: its stream, whether it ends the stream,
/// the fragments, and (while sniffing) the original frames.
struct Block {
    stream: u32,
    end_stream: bool,
    fragment: Vec<u8>,
    raw: Vec<u8>,
}

/// A connection whose incoming header blocks have `:authority` fixed.
pub struct AuthorityFix<S> {
    inner: S,
    mode: Mode,
    preface_seen: bool,
    /// Bytes read from the socket, not yet looked at.
    input: Vec<u8>,
    /// Bytes ready for the HTTP/2 server, from `out_pos`.
    output: Vec<u8>,
    out_pos: usize,
    block: Option<Block>,
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
    eof: bool,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> AuthorityFix<S> {
        AuthorityFix {
            inner,
            mode: Mode::Sniff,
            preface_seen: false,
            input: Vec::new(),
            output: Vec::new(),
            out_pos: 0,
            block: None,
            decoder: Decoder::new(),
            encoder: Encoder::new(),
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Moves what can be decided from `input` to `output`.
    fn process(&mut self) {
        if !self.preface_seen {
            if self.input.len() < PREFACE.len() {
                return;
            }
            if !self.input.starts_with(PREFACE) {
                // Not HTTP/2 with prior knowledge: nothing for us to fix.
                self.pass_rest();
                return;
            }
            self.output.extend(self.input.drain(..PREFACE.len()));
            self.preface_seen = true;
        }
        while self.mode != Mode::Pass && self.input.len() >= FRAME_HEADER {
            let len = u32::from_be_bytes([0, self.input[0], self.input[1], self.input[2]]) as usize;
            if self.input.len() < FRAME_HEADER + len {
                if len > MAX_BLOCK {
                    self.give_up();
                }
                return;
            }
            let frame: Vec<u8> = self.input.drain(..FRAME_HEADER + len).collect();
            self.frame(&frame);
        }
        if self.mode == Mode::Pass {
            self.pass_rest();
        }
    }

    fn pass_rest(&mut self) {
        if let Some(b) = self.block.take() {
            self.output.extend_from_slice(&b.raw);
        }
        self.output.append(&mut self.input);
        self.mode = Mode::Pass;
    }

    /// Something we cannot parse: hand everything through as it came (the
    /// HTTP/2 server will say what is wrong), unless header blocks were
    /// already re-encoded, when the connection cannot be continued.
    fn give_up(&mut self) {
        if self.mode == Mode::Rewrite {
            self.input.clear();
            self.block = None;
            self.eof = true;
        } else {
            self.pass_rest();
        }
    }

    fn frame(&mut self, frame: &[u8]) {
        let (kind, flags) = (frame[3], frame[4]);
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER..];
        match (kind, self.block.is_some()) {
            (HEADERS, false) => {
                let Some(fragment) = headers_fragment(flags, payload) else {
                    return self.give_up();
                };
                self.block = Some(Block {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    fragment: fragment.to_vec(),
                    raw: frame.to_vec(),
                });
            }
            (CONTINUATION, true) => {
                let b = self.block.as_mut().expect("a block is open");
                b.fragment.extend_from_slice(payload);
                b.raw.extend_from_slice(frame);
                if b.fragment.len() > MAX_BLOCK {
                    return self.give_up();
                }
            }
            (_, true) => return self.give_up(),
            (_, false) => {
                self.output.extend_from_slice(frame);
                return;
            }
        }
        if flags & END_HEADERS != 0 {
            let b = self.block.take().expect("a block is open");
            self.end_block(b);
        }
    }

    fn end_block(&mut self, b: Block) {
        let Ok(mut headers) = self.decoder.decode(&b.fragment) else {
            self.block = Some(b);
            return self.give_up();
        };
        let fixed = fix_authority(&mut headers);
        if self.mode == Mode::Sniff && !fixed {
            self.output.extend_from_slice(&b.raw);
            self.mode = Mode::Pass;
            return;
        }
        self.mode = Mode::Rewrite;
        let block = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut chunks = block.chunks(MAX_FRAME).peekable();
        let mut first = true;
        // An empty block still needs its HEADERS frame.
        let empty: &[u8] = &[];
        let mut next = chunks.next().or(Some(empty));
        while let Some(chunk) = next {
            next = chunks.next();
            let mut flags = 0;
            if first && b.end_stream {
                flags |= END_STREAM;
            }
            if next.is_none() {
                flags |= END_HEADERS;
            }
            let kind = if first { HEADERS } else { CONTINUATION };
            let len = (chunk.len() as u32).to_be_bytes();
            self.output.extend_from_slice(&len[1..]);
            self.output.extend_from_slice(&[kind, flags]);
            self.output.extend_from_slice(&b.stream.to_be_bytes());
            self.output.extend_from_slice(chunk);
            first = false;
        }
    }
}

/// The header block fragment inside a HEADERS frame's payload.
fn headers_fragment(flags: u8, payload: &[u8]) -> Option<&[u8]> {
    let mut p = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        pad = *p.first()? as usize;
        p = &p[1..];
    }
    if flags & PRIORITY != 0 {
        p = p.get(5..)?;
    }
    p.get(..p.len().checked_sub(pad)?)
}

/// Strips a scheme from `:authority`; true if there was one.
fn fix_authority(headers: &mut [(Vec<u8>, Vec<u8>)]) -> bool {
    let mut fixed = false;
    for (name, value) in headers.iter_mut() {
        if name.as_slice() != b":authority" {
            continue;
        }
        if let Some(at) = value.windows(3).position(|w| w == b"://") {
            value.drain(..at + 3);
            while value.last() == Some(&b'/') {
                value.pop();
            }
            fixed = true;
        }
    }
    fixed
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.out_pos < this.output.len() {
                let n = buf.remaining().min(this.output.len() - this.out_pos);
                buf.put_slice(&this.output[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.output.len() {
                    this.output.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.mode == Mode::Pass || this.eof {
                if this.eof {
                    return Poll::Ready(Ok(()));
                }
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut chunk = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    // End of stream: whatever was held goes as it came.
                    if this.mode == Mode::Sniff {
                        this.pass_rest();
                    }
                    this.eof = true;
                }
                Poll::Ready(Ok(())) => {
                    this.input.extend_from_slice(rb.filled());
                    this.process();
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for AuthorityFix<tokio::net::TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn request(enc: &mut Encoder<'static>, stream: u32, authority: &str) -> Vec<u8> {
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/etcdserverpb.Maintenance/Status"),
            (b":authority", authority.as_bytes()),
            (b"content-type", b"application/grpc"),
        ];
        let block = enc.encode(headers);
        // Split over HEADERS + CONTINUATION, as large blocks are.
        let (a, b) = block.split_at(block.len() / 2);
        let mut out = frame(HEADERS, 0, stream, a);
        out.extend(frame(CONTINUATION, END_HEADERS, stream, b));
        out.extend(frame(0x0, END_STREAM, stream, b"\0\0\0\0\0"));
        out
    }

    /// Runs `input` through the filter and decodes the header blocks the
    /// server would see, with the bytes it gets.
    async fn through(input: Vec<u8>) -> (Vec<Vec<(Vec<u8>, Vec<u8>)>>, Vec<u8>) {
        let mut fix = AuthorityFix::new(&input[..]);
        let mut out = Vec::new();
        fix.read_to_end(&mut out).await.unwrap();
        assert!(out.starts_with(PREFACE));
        let mut dec = Decoder::new();
        let mut blocks = Vec::new();
        let (mut rest, mut block) = (&out[PREFACE.len()..], Vec::new());
        while rest.len() >= FRAME_HEADER {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let (kind, flags) = (rest[3], rest[4]);
            let payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
            if kind == HEADERS || kind == CONTINUATION {
                block.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    blocks.push(dec.decode(&block).unwrap());
                    block.clear();
                }
            }
            rest = &rest[FRAME_HEADER + len..];
        }
        (blocks, out)
    }

    fn authority(block: &[(Vec<u8>, Vec<u8>)]) -> String {
        let (_, v) = block.iter().find(|(n, _)| n == b":authority").unwrap();
        String::from_utf8(v.clone()).unwrap()
    }

    #[tokio::test]
    async fn a_url_authority_loses_its_scheme_on_every_request() {
        let mut enc = Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        input.extend(request(&mut enc, 1, "http://127.0.0.1:2379"));
        input.extend(request(&mut enc, 3, "http://127.0.0.1:2379"));
        let (blocks, _) = through(input).await;
        assert_eq!(blocks.len(), 2);
        for b in &blocks {
            assert_eq!(authority(b), "127.0.0.1:2379");
            assert_eq!(b.len(), 5, "every other header kept");
        }
    }

    #[tokio::test]
    async fn a_plain_authority_passes_byte_for_byte() {
        let mut enc = Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(request(&mut enc, 1, "127.0.0.1:2379"));
        input.extend(request(&mut enc, 3, "http://127.0.0.1:2379"));
        let (_, out) = through(input.clone()).await;
        assert_eq!(out, input);
    }

    #[tokio::test]
    async fn padded_and_prioritised_headers_and_non_http2_input() {
        let mut enc = Encoder::new();
        let block = enc.encode(vec![(&b":authority"[..], &b"http://h:1"[..])]);
        let mut payload = vec![2]; // pad length
        payload.extend_from_slice(&[0, 0, 0, 0, 16]); // priority
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&[0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS | PADDED | PRIORITY, 1, &payload));
        let (blocks, _) = through(input).await;
        assert_eq!(authority(&blocks[0]), "h:1");

        let http1 = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let mut fix = AuthorityFix::new(&http1[..]);
        let mut out = Vec::new();
        fix.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, http1);
    }
}
