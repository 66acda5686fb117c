//! hyper's own answers, in our error shape. hyper refuses a request head it cannot parse (400),
//! one over `MAX_HEADER_BYTES` or with too many headers (431), and a target over 64 KiB (414)
//! before any of our code runs, with a head and no body; every other refusal here is JSON.
//!
//! hyper 1.x has no hook for these answers: `Conn::on_parse_error` builds a head from the
//! status alone (`Server::on_error` in its `proto/h1/role.rs`), writes it, and closes the
//! connection. So the connection's IO ([`crate::serve`]) recognises that head as hyper hands it
//! over and writes ours in its place. Parsing heads ourselves before hyper would mean a second
//! HTTP parser that must refuse exactly what hyper refuses.
//!
//! What is recognised cannot be one of our router's answers: hyper's head carries only
//! `connection`, `content-length: 0` and `date`, and every answer of the router carries an
//! `x-request-id` (startup.rs), and a refusal also a JSON body. If a later hyper shaped its head
//! otherwise, the answer would pass unchanged (tests/api/edges.rs would fail).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::AsyncWrite;

use crate::error::ApiError;

/// hyper's head is under 200 bytes; anything longer is not it, whatever it holds.
const LONGEST_OWN_HEAD: usize = 512;

/// Our answer in place of `written`, if `written` is exactly one of hyper's own refusals.
pub fn json_answer(written: &[u8]) -> Option<Vec<u8>> {
    if written.len() > LONGEST_OWN_HEAD || !written.starts_with(b"HTTP/1.") {
        return None;
    }
    let head = std::str::from_utf8(written)
        .ok()?
        .strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let refusal = match status_line.get(8..13)? {
        " 400 " => ApiError::MalformedHead,
        " 414 " => ApiError::UriTooLong,
        " 431 " => ApiError::HeadTooLarge,
        _ => return None,
    };
    let mut kept = Vec::new();
    let mut empty_body = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" if value.trim() == "0" => empty_body = true,
            "connection" | "date" => kept.push(line),
            _ => return None,
        }
    }
    if !empty_body {
        return None;
    }
    let body = refusal.json_body();
    let mut answer = format!("{status_line}\r\n");
    for line in kept {
        answer.push_str(line);
        answer.push_str("\r\n");
    }
    answer.push_str(&format!(
        "content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    ));
    let mut answer = answer.into_bytes();
    answer.extend_from_slice(&body);
    Some(answer)
}

/// Our answer, accepted from hyper in place of its own and not yet all written to the socket.
/// hyper flushes and then shuts the connection down after its answer; both finish this first.
#[derive(Default)]
pub struct Replacement {
    bytes: Vec<u8>,
    written: usize,
}

impl Replacement {
    /// Takes `written` (what hyper asks to write) in place of our answer if it is hyper's own
    /// refusal; then the caller reports `written` as all written.
    pub fn take(&mut self, written: &[u8]) -> bool {
        match json_answer(written) {
            Some(answer) => {
                *self = Self {
                    bytes: answer,
                    written: 0,
                };
                true
            }
            None => false,
        }
    }

    /// Writes what is left of the answer to `io`; ready at once when nothing is.
    pub fn poll_write_to<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.written < self.bytes.len() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.bytes[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYPER_431: &[u8] =
        b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n\
        content-length: 0\r\ndate: Thu, 03 Dec 2026 23:45:28 GMT\r\n\r\n";

    #[test]
    fn hyper_s_refusal_becomes_json_with_its_status_and_date() {
        let answer = String::from_utf8(json_answer(HYPER_431).unwrap()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("\r\nconnection: close\r\n"));
        assert!(head.contains("\r\ndate: Thu, 03 Dec 2026 23:45:28 GMT"));
        assert!(head.contains("\r\ncontent-type: application/json\r\n"));
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "header_too_large");
    }

    #[test]
    fn the_router_s_answers_pass_unchanged() {
        for written in [
            // Any header of the router's (x-request-id is on every answer).
            &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-request-id: a\r\n\r\n"[..],
            // A body.
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}",
            // Another status.
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            // No length at all.
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n",
            // Part of a head.
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
        ] {
            assert!(
                json_answer(written).is_none(),
                "{}",
                String::from_utf8_lossy(written)
            );
        }
    }
}
