//! Tables of requests that must be refused: each case is sent and checked on
//! its own, its result printed, and the test fails at the end naming every
//! case that failed (one wrong answer no longer hides the ones after it).

use reqwest::StatusCode;
use serde_json::Value;

/// A request and the error it must get.
#[derive(Debug)]
pub struct ErrorCase {
    pub name: &'static str,
    pub req: reqwest::RequestBuilder,
    pub status: StatusCode,
    /// `error.code` of the answer.
    pub code: &'static str,
    /// `error.field` of the answer, when the error names one.
    pub field: Option<&'static str>,
    /// Text that must not come back in the answer (neither in its bytes
    /// nor in its JSON read back as text).
    pub secrets: Vec<String>,
}

impl ErrorCase {
    pub fn new(
        name: &'static str,
        req: reqwest::RequestBuilder,
        status: StatusCode,
        code: &'static str,
        field: Option<&'static str>,
    ) -> Self {
        Self {
            name,
            req,
            status,
            code,
            field,
            secrets: Vec::new(),
        }
    }

    /// The case, with `secrets` that the answer must not echo.
    pub fn never_echoing<S: Into<String>>(mut self, secrets: impl IntoIterator<Item = S>) -> Self {
        self.secrets.extend(secrets.into_iter().map(Into::into));
        self
    }

    /// Sends the request: every way the answer differs from the case.
    async fn check(self) -> Vec<String> {
        let mut wrong = Vec::new();
        let r = match self.req.send().await {
            Ok(r) => r,
            Err(e) => return vec![format!("the request failed: {e}")],
        };
        let status = r.status();
        let text = match r.text().await {
            Ok(t) => t,
            Err(e) => return vec![format!("reading the answer failed: {e}")],
        };
        if status != self.status {
            wrong.push(format!("status {status}, expected {}", self.status));
        }
        let body: Value = match serde_json::from_str(&text) {
            Ok(b) => b,
            Err(e) => {
                wrong.push(format!("the error body is not JSON ({e}): {text}"));
                return wrong;
            }
        };
        if body["error"]["code"] != self.code {
            wrong.push(format!("error.code is not {:?}: {body}", self.code));
        }
        if body["error"]["message"]
            .as_str()
            .is_none_or(|m| m.is_empty())
        {
            wrong.push(format!("no error.message: {body}"));
        }
        if let Some(f) = self.field
            && body["error"]["field"] != f
        {
            wrong.push(format!("error.field is not {f:?}: {body}"));
        }
        let reread = body.to_string();
        for s in &self.secrets {
            if text.contains(s.as_str()) || reread.contains(s.as_str()) {
                wrong.push(format!("echoes {s:?}: {text}"));
            }
        }
        wrong
    }
}

/// Sends every case in order, printing each one's result; panics at the end
/// naming every case that got a wrong answer.
pub async fn check_all(cases: Vec<ErrorCase>) {
    let total = cases.len();
    let mut failed = Vec::new();
    for case in cases {
        let name = case.name;
        let wrong = case.check().await;
        if wrong.is_empty() {
            println!("ok      {name}");
        } else {
            println!("FAILED  {name}: {}", wrong.join("; "));
            failed.push(format!("{name}: {}", wrong.join("; ")));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {total} cases got a wrong answer:\n{}",
        failed.len(),
        failed.join("\n")
    );
}
