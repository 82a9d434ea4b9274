//! Reading a server-sent-events stream from the node's API (the client side of
//! `GET /v1/topics/{topic}/messages`).

use anyhow::{Context, Result, bail};

/// Longest event accepted from the node; a longer one means something is wrong.
const MAX_EVENT_LEN: usize = 1 << 20;

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// Its `event:` field (`message` if there was none).
    pub event: String,
    /// Its `data:` lines, joined by newlines.
    pub data: String,
}

/// Events arriving on an HTTP response, in order.
#[derive(Debug)]
pub struct EventStream {
    response: reqwest::Response,
    buf: Vec<u8>,
}

impl EventStream {
    pub(super) fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            buf: Vec::new(),
        }
    }

    /// The next event; `None` when the node ends the stream.
    pub async fn next(&mut self) -> Result<Option<SseEvent>> {
        loop {
            while let Some(block) = take_block(&mut self.buf) {
                if let Some(event) = parse_block(&block) {
                    return Ok(Some(event));
                }
            }
            if self.buf.len() > MAX_EVENT_LEN {
                bail!("the node sent an event longer than {MAX_EVENT_LEN} bytes");
            }
            match self
                .response
                .chunk()
                .await
                .context("lost the node's event stream")?
            {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => return Ok(None),
            }
        }
    }
}

/// Removes and returns the first complete event block (up to a blank line) from `buf`.
fn take_block(buf: &mut Vec<u8>) -> Option<String> {
    let mut end = None;
    for i in 0..buf.len() {
        if buf[i] == b'\n' {
            let rest = &buf[i + 1..];
            if rest.first() == Some(&b'\n') {
                end = Some((i + 1, i + 2));
            } else if rest.starts_with(b"\r\n") {
                end = Some((i + 1, i + 3));
            }
            if end.is_some() {
                break;
            }
        }
    }
    let (text_end, drain_end) = end?;
    let block = String::from_utf8_lossy(&buf[..text_end]).into_owned();
    buf.drain(..drain_end);
    Some(block)
}

/// An event from one block's lines; `None` for a block of comments only (keep-alives).
fn parse_block(block: &str) -> Option<SseEvent> {
    let mut event = None;
    let mut data: Vec<&str> = Vec::new();
    for line in block.lines() {
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => event = Some(value.to_string()),
            "data" => data.push(value),
            _ => {} // comments (empty field), `id`, `retry`
        }
    }
    if event.is_none() && data.is_empty() {
        return None;
    }
    Some(SseEvent {
        event: event.unwrap_or_else(|| "message".into()),
        data: data.join("\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_split_on_blank_lines_and_keep_alives_are_skipped() {
        let mut buf = b":\n\nevent: message\ndata: {\"a\":1}\n\nevent: lag".to_vec();
        let first = take_block(&mut buf).unwrap();
        assert_eq!(parse_block(&first), None);
        let second = take_block(&mut buf).unwrap();
        assert_eq!(
            parse_block(&second),
            Some(SseEvent {
                event: "message".into(),
                data: "{\"a\":1}".into()
            })
        );
        assert_eq!(take_block(&mut buf), None, "an incomplete block waits");
        buf.extend_from_slice(b"ged\r\ndata: x\r\ndata: y\r\n\r\n");
        let third = take_block(&mut buf).unwrap();
        assert_eq!(
            parse_block(&third),
            Some(SseEvent {
                event: "lagged".into(),
                data: "x\ny".into()
            })
        );
        assert!(buf.is_empty());
    }
}
