//! A `redis-server` per test: started on a free port (never 6379, where a shared server
//! may run), killed with SIGKILL when a test needs Redis to die, and on drop; plus a tiny
//! RESP client and the TLS certificates for the `rediss://` test.

use crate::support::DEADLINE;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A `redis-server` child process on 127.0.0.1, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    args: Vec<String>,
    _dir: Option<tempfile::TempDir>,
}

fn redis_server_binary() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("redis-server"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "redis-server is not on PATH; the Redis tests start their own. \
                 Install the Debian package `redis-server` (apt-get install redis-server)"
            )
        })
}

/// A port nothing listens on right now (never 6379, where a shared server may run).
pub fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port != 6379 {
            return port;
        }
    }
}

impl RedisServer {
    /// A throwaway server: no RDB, no AOF (a restart comes back empty).
    pub async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    /// A throwaway server on `port`.
    pub async fn start_on(port: u16) -> Self {
        let args = ["--save", "", "--appendonly", "no"];
        Self::launch(port, args.iter().map(|s| (*s).to_owned()).collect(), None).await
    }

    /// A server that keeps every acknowledged write across a restart (AOF, fsync always).
    pub async fn start_durable() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let args = vec![
            "--save".to_owned(),
            String::new(),
            "--appendonly".to_owned(),
            "yes".to_owned(),
            "--appendfsync".to_owned(),
            "always".to_owned(),
            "--dir".to_owned(),
            dir.path().display().to_string(),
        ];
        Self::launch(free_port(), args, Some(dir)).await
    }

    pub async fn launch(port: u16, args: Vec<String>, dir: Option<tempfile::TempDir>) -> Self {
        let mut server = Self {
            port,
            child: None,
            args,
            _dir: dir,
        };
        server.spawn();
        server.wait_ready().await;
        server
    }

    fn spawn(&mut self) {
        let child = Command::new(redis_server_binary())
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server did not start");
        self.child = Some(child);
    }

    async fn wait_ready(&mut self) {
        let port = self.port;
        let child = self.child.as_mut().unwrap();
        let start = tokio::time::Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("redis-server on port {port} exited at startup: {status}");
            }
            // With --requirepass, an unauthenticated PING is refused: it answers all the same.
            let reply = redis_cmd(port, &["PING"]).await.unwrap_or_default();
            if reply == "+PONG" || reply.starts_with("-NOAUTH") {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "redis-server on port {port} never answered PING"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `redis://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL: no shutdown, no final save.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same port with the same options.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends one command and returns the first line of the reply (`+PONG`, `:3`, `-ERR …`),
/// or `None` if the server cannot be reached.
pub async fn redis_cmd(port: u16, args: &[&str]) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).await.ok()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 256];
    while !reply.ends_with(b"\r\n") {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&reply);
    Some(line.lines().next().unwrap_or_default().to_owned())
}

/// Sends several commands on one connection (e.g. `AUTH`, `SELECT`, then a query) and
/// returns the first line of each reply.
pub async fn redis_cmds(port: u16, cmds: &[&[&str]]) -> Vec<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut replies = Vec::new();
    for args in cmds {
        let mut req = format!("*{}\r\n", args.len());
        for a in *args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).await.unwrap();
        let mut line = Vec::new();
        while !line.ends_with(b"\r\n") {
            let mut byte = [0u8; 1];
            let n = tokio::time::timeout(DEADLINE, s.read(&mut byte))
                .await
                .unwrap()
                .unwrap();
            assert!(n == 1, "redis closed the connection");
            line.push(byte[0]);
        }
        replies.push(String::from_utf8_lossy(&line).trim_end().to_owned());
    }
    replies
}

/// A CA and a server certificate for 127.0.0.1 in `dir` (`ca.pem`, `server.pem`, `server.key`).
pub fn make_test_certs(dir: &std::path::Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "the rediss:// test needs the openssl command (Debian package `openssl`): {e}"
                )
            });
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"],
            &ec[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=ssegate test CA",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"],
            &ec[..],
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}
