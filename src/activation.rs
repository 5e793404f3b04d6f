//! Listening sockets handed over by systemd socket activation (`LISTEN_FDS`), so that
//! connections queue in the kernel instead of being refused while ssegate restarts.
//!
//! A socket is used for `listen` when its name (`FileDescriptorName=`, passed as
//! `LISTEN_FDNAMES`) is `proxy`, for `admin_listen` when it is `admin`; any other socket
//! (systemd names them after their unit by default) is matched by its address. A listener
//! without a socket is bound as usual.

use std::net::{SocketAddr, TcpListener};

/// The listeners received from the service manager, if any.
#[derive(Debug, Default)]
pub struct Inherited {
    /// For `listen`.
    pub proxy: Option<TcpListener>,
    /// For `admin_listen`.
    pub admin: Option<TcpListener>,
}

impl Inherited {
    /// Takes the sockets passed in the environment. Call it before any other thread
    /// exists: it removes `LISTEN_FDS` and `LISTEN_PID` from the environment.
    pub fn from_env(listen: SocketAddr, admin_listen: SocketAddr) -> Result<Self, String> {
        let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
        let mut fds = listenfd::ListenFd::from_env();
        let mut sockets = Vec::new();
        for (i, name) in (0..fds.len()).zip(names.split(':').chain(std::iter::repeat(""))) {
            match fds.take_tcp_listener(i) {
                Ok(Some(l)) => sockets.push((name.to_owned(), l)),
                Ok(None) => {}
                Err(e) => return Err(format!("socket {i} from the service manager: {e}")),
            }
        }
        Self::assign(sockets, listen, admin_listen)
    }

    /// Assigns named or addressed sockets to the two listeners.
    pub fn assign(
        sockets: Vec<(String, TcpListener)>,
        listen: SocketAddr,
        admin_listen: SocketAddr,
    ) -> Result<Self, String> {
        let mut inherited = Self::default();
        for (name, socket) in sockets {
            let addr = socket.local_addr().map_err(|e| e.to_string())?;
            let slot = match name.as_str() {
                "proxy" => &mut inherited.proxy,
                "admin" => &mut inherited.admin,
                _ if addr == listen => &mut inherited.proxy,
                _ if addr == admin_listen => &mut inherited.admin,
                _ => {
                    return Err(format!(
                        "a socket from the service manager ({addr}, name {name:?}) is neither \
                         listen {listen} nor admin_listen {admin_listen}; name it proxy or admin"
                    ));
                }
            };
            if slot.replace(socket).is_some() {
                return Err(format!(
                    "two sockets from the service manager for the same listener ({addr})"
                ));
            }
        }
        Ok(inherited)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn socket() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").unwrap()
    }

    #[test]
    fn sockets_go_by_name_then_by_address() {
        let (a, b) = (socket(), socket());
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let any: SocketAddr = "0.0.0.0:1".parse().unwrap();
        let i =
            Inherited::assign(vec![("admin".into(), a), ("proxy".into(), b)], any, any).unwrap();
        assert_eq!(i.admin.unwrap().local_addr().unwrap(), a_addr);
        assert_eq!(i.proxy.unwrap().local_addr().unwrap(), b_addr);

        let a = socket();
        let a_addr = a.local_addr().unwrap();
        let i = Inherited::assign(vec![(String::new(), a)], any, a_addr).unwrap();
        assert!(i.proxy.is_none());
        assert_eq!(i.admin.unwrap().local_addr().unwrap(), a_addr);

        let e = Inherited::assign(vec![("x".into(), socket())], any, any).unwrap_err();
        assert!(e.contains("name it proxy or admin"), "{e}");
        let e = Inherited::assign(
            vec![("proxy".into(), socket()), ("proxy".into(), socket())],
            any,
            any,
        )
        .unwrap_err();
        assert!(e.contains("two sockets"), "{e}");
    }
}
