//! Where the control plane listens: a Unix socket or a loopback TCP address,
//! parsed from and displayed as `unix:/path` / `tcp:127.0.0.1:7737`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use crate::ControlError;

/// A control plane address.
///
/// Accepted forms: `unix:/path`, a bare absolute path (`/path`),
/// `tcp:127.0.0.1:7737`, `127.0.0.1:7737` (IPv6 as `[::1]:7737`).
/// TCP addresses must be loopback; port 0 means "any free port" when binding.
/// [`Display`](fmt::Display) writes the `unix:` / `tcp:` form, which parses back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Listen {
    /// A Unix domain socket.
    Unix(PathBuf),
    /// A loopback TCP address.
    Tcp(SocketAddr),
}

impl Listen {
    /// A TCP address, refused unless it is loopback.
    pub fn tcp(addr: SocketAddr) -> Result<Listen, ControlError> {
        if addr.ip().is_loopback() {
            Ok(Listen::Tcp(addr))
        } else {
            Err(ControlError::NonLoopback(addr))
        }
    }
}

impl FromStr for Listen {
    type Err = ControlError;

    fn from_str(s: &str) -> Result<Listen, ControlError> {
        let invalid = |reason| ControlError::InvalidListen {
            input: s.to_owned(),
            reason,
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(invalid("empty socket path"));
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        if s.starts_with('/') {
            return Ok(Listen::Unix(PathBuf::from(s)));
        }
        let addr = s.strip_prefix("tcp:").unwrap_or(s);
        let addr: SocketAddr = addr.parse().map_err(|_| {
            invalid("expected unix:/path, /path, tcp:IP:PORT or IP:PORT (IP must be loopback)")
        })?;
        Listen::tcp(addr)
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
            Listen::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Listen, ControlError> {
        s.parse()
    }

    #[test]
    fn unix_forms() {
        let want = Listen::Unix(PathBuf::from("/run/spfs/vfs.sock"));
        assert_eq!(parse("unix:/run/spfs/vfs.sock").ok(), Some(want.clone()));
        assert_eq!(parse("/run/spfs/vfs.sock").ok(), Some(want));
        assert_eq!(
            parse("unix:rel.sock").ok(),
            Some(Listen::Unix(PathBuf::from("rel.sock")))
        );
        assert!(parse("unix:").is_err());
    }

    #[test]
    fn tcp_forms() {
        let want = Listen::Tcp("127.0.0.1:7737".parse().unwrap());
        assert_eq!(parse("tcp:127.0.0.1:7737").ok(), Some(want.clone()));
        assert_eq!(parse("127.0.0.1:7737").ok(), Some(want));
        assert_eq!(
            parse("tcp:[::1]:0").ok(),
            Some(Listen::Tcp("[::1]:0".parse().unwrap()))
        );
        assert!(parse("127.0.0.2:1").is_ok(), "all of 127/8 is loopback");
    }

    #[test]
    fn refuses_non_loopback() {
        for s in [
            "tcp:10.0.0.1:1",
            "0.0.0.0:7737",
            "tcp:[::]:1",
            "192.168.1.1:22",
        ] {
            assert!(
                matches!(parse(s), Err(ControlError::NonLoopback(_))),
                "{s} accepted"
            );
        }
    }

    #[test]
    fn refuses_garbage() {
        for s in [
            "",
            "tcp:",
            "localhost:7737",
            "tcp:127.0.0.1",
            "rel/path",
            "http://x",
        ] {
            assert!(
                matches!(parse(s), Err(ControlError::InvalidListen { .. })),
                "{s} accepted"
            );
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["unix:/tmp/a b.sock", "tcp:127.0.0.1:7737", "tcp:[::1]:9"] {
            let l = parse(s).unwrap();
            assert_eq!(l.to_string(), s);
            assert_eq!(parse(&l.to_string()).unwrap(), l);
        }
        assert_eq!(parse("/x").unwrap().to_string(), "unix:/x");
        assert_eq!(parse("127.0.0.1:1").unwrap().to_string(), "tcp:127.0.0.1:1");
    }
}
