//! Links into the HTTP surface (dashboard page, event stream) that other front-ends hand out,
//! e.g. the MCP tools' `dashboard_url` and `events_url`.
//!
//! Invariant: every link carries the access token (`?token=`), so whoever is given a link
//! can open it, and nobody else can guess one.

/// The base URL and token of a running HTTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Links {
    /// `http://HOST:PORT` without a trailing slash.
    pub base: String,
    pub token: String,
}

impl Links {
    /// The dashboard page of one workflow.
    pub fn dashboard(&self, thread_id: &str) -> String {
        format!(
            "{}/?token={}#/workflows/{}",
            self.base,
            self.token,
            encode(thread_id)
        )
    }

    /// The server-sent event stream of one workflow.
    pub fn events(&self, thread_id: &str) -> String {
        format!(
            "{}/api/workflows/{}/events?token={}",
            self.base,
            encode(thread_id),
            self.token
        )
    }
}

/// Thread ids are `[A-Za-z0-9-_.:/]`; anything else is percent-encoded anyway.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Links;

    #[test]
    fn links_carry_the_token_and_encode_the_id() {
        let l = Links {
            base: "http://127.0.0.1:9".into(),
            token: "t0k".into(),
        };
        assert_eq!(
            l.events("a b"),
            "http://127.0.0.1:9/api/workflows/a%20b/events?token=t0k"
        );
        assert_eq!(
            l.dashboard("w1"),
            "http://127.0.0.1:9/?token=t0k#/workflows/w1"
        );
    }
}
