//! [`Cause`]: what went wrong underneath a module's error, kept whole. A
//! variant such as `ServiceError::Internal` used to hold only the text of
//! the error it came from; holding a `Cause` keeps that error as the
//! `source()` of the chain, for logs and for callers that look inside.

use std::fmt;

type Inner = Box<dyn std::error::Error + Send + Sync>;

/// A message, and the error it came from when there is one.
#[derive(Debug)]
pub struct Cause {
    message: String,
    source: Option<Inner>,
}

impl Cause {
    /// From an error: its message, with the error itself as the source.
    pub fn of(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            message: e.to_string(),
            source: Some(Box::new(e)),
        }
    }

    /// `context: <e>`, with `e` as the source.
    pub fn context(
        context: impl fmt::Display,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: format!("{context}: {e}"),
            source: Some(Box::new(e)),
        }
    }

    /// A message with no error beneath it.
    pub fn msg(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::Cause;
    use std::error::Error;

    #[test]
    fn the_error_beneath_stays_reachable() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let c = Cause::context("reading the KEK", io);
        assert_eq!(c.to_string(), "reading the KEK: no such file");
        let source = c.source().expect("a source");
        assert_eq!(
            source.downcast_ref::<std::io::Error>().map(|e| e.kind()),
            Some(std::io::ErrorKind::NotFound)
        );
        assert!(Cause::msg("plain").source().is_none());
    }
}
