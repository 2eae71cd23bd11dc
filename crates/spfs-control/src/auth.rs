//! Who is calling: the [`Caller`] identity (Unix peer credentials or a bearer
//! token), the constant-time token check, and the token file helpers.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use tonic::transport::server::UdsConnectInfo;

use crate::limits::ConnInfo;
use tonic::{Request, Status};

/// The metadata key carrying the token, as `Bearer <token>`.
pub const AUTHORIZATION: &str = "authorization";

/// The identity of the peer of one request, as seen by the server.
///
/// Over a Unix socket `uid`/`pid` come from the kernel (`SO_PEERCRED`) and
/// can be trusted. Over TCP they are `None` and `via_token` is true: the
/// caller proved it could read the token file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Caller {
    /// The peer's user id, from the socket credentials.
    pub uid: Option<u32>,
    /// The peer's process id, from the socket credentials.
    pub pid: Option<u32>,
    /// The caller presented the right token.
    pub via_token: bool,
}

/// Identify the caller of `req`.
///
/// With `require_token` (TCP) a valid `authorization: Bearer <token>` is
/// mandatory. Otherwise (Unix socket) the peer credentials identify the
/// caller and a token, if one is presented, must still be the right one.
pub(crate) fn identify<T>(
    req: &Request<T>,
    token: Option<&str>,
    require_token: bool,
) -> Result<Caller, Status> {
    let cred = req
        .extensions()
        .get::<ConnInfo<UdsConnectInfo>>()
        .and_then(|info| info.transport.peer_cred);
    let mut caller = Caller {
        uid: cred.map(|c| c.uid()),
        pid: cred
            .and_then(|c| c.pid())
            .and_then(|p| u32::try_from(p).ok()),
        via_token: false,
    };
    match req.metadata().get(AUTHORIZATION) {
        Some(value) => {
            let presented = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            match (presented, token) {
                (Some(p), Some(t)) if constant_time_eq(p.as_bytes(), t.as_bytes()) => {
                    caller.via_token = true;
                }
                _ => return Err(Status::unauthenticated("invalid token")),
            }
        }
        None if require_token => return Err(Status::unauthenticated("missing token")),
        None => {}
    }
    if caller.uid.is_none() && !caller.via_token {
        return Err(Status::unauthenticated("caller cannot be identified"));
    }
    Ok(caller)
}

/// Compare two byte strings in time independent of where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Write a fresh random token (32 bytes from `/dev/urandom`, hex encoded)
/// to `path` and return it.
///
/// The file is created with mode 0600 under a temporary name in the same
/// directory and renamed over `path`, so readers never see a partial token
/// and the token is never readable by others. Missing parent directories are
/// created.
pub fn create_token_file(path: &Path) -> io::Result<String> {
    let mut bytes = [0u8; 32];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let token = hex(&bytes);

    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir)?;
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "token path has no file name")
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.{}.tmp", std::process::id(), hex(&bytes[..4])));
    let tmp = dir.join(tmp_name);

    let write = || -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(token.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(token)
}

/// Read a token written by [`create_token_file`] (surrounding whitespace is
/// ignored). An empty token, or one with characters that cannot travel in a
/// header, is refused as `InvalidData`.
pub fn read_token_file(path: &Path) -> io::Result<String> {
    let text = fs::read_to_string(path)?;
    let token = text.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} does not hold a valid token", path.display()),
        ));
    }
    Ok(token.to_owned())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn token_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/token");
        let token = create_token_file(&path).unwrap();
        assert_eq!(token.len(), 64);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(read_token_file(&path).unwrap(), token);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let again = create_token_file(&path).unwrap();
        assert_ne!(again, token);
        assert_eq!(read_token_file(&path).unwrap(), again);
        // Only the token file is left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn read_token_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, "  \n").unwrap();
        assert_eq!(
            read_token_file(&path).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        fs::write(&path, "a b").unwrap();
        assert!(read_token_file(&path).is_err());
    }
}
