//! A local `moto_server` (AWS S3 and KMS look-alike, PyPI `moto[server]`, installed by
//! `./test.sh` into the repository's `.venv`) started by the test itself on a free port and
//! killed on drop. The tests fail, never skip, without it: with one line that says how to
//! install it (`tkms_testkit::missing`).
//!
//! The port is found by binding port 0 and closing the listener, so it is free only at that
//! instant: during moto's multi-second start another test of the same binary (or its moto)
//! can take it. A start therefore counts only once moto itself has said it listens on that
//! port (werkzeug's ` * Running on http://127.0.0.1:<port>` on stderr, printed after the
//! bind) and an S3 answer comes from it; if moto exits at start-up (its port taken) or never
//! gets there, it is started again on a new port, [`ATTEMPTS`] times at most.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const INSTALL_HINT: &str =
    "moto_server is needed for the S3 and KMS tests: run `./test.sh --setup` to install it";

/// Starts tried before a test gives up.
pub const ATTEMPTS: usize = 5;

/// Longest wait for one start (moto imports for seconds, more on a loaded machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// moto's own server, but serving one request at a time (`threaded=False`), with the imports
/// of `moto/server.py` (moto 5). Arguments: host, port.
const SINGLE_THREADED: &str = "\
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
run_simple(sys.argv[1], int(sys.argv[2]), DomainDispatcherApplication(create_backend_app), threaded=False)
";

/// How moto serves requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Threading {
    /// `moto_server`: a thread per request.
    Threaded,
    /// One request at a time: each request's check and write are atomic, as on S3.
    Single,
}

/// A running `moto_server`, killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http(port: u16, method: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Whether an HTTP response (as [`http`] returns it) has status 200. A single-threaded
/// werkzeug answers in HTTP/1.0, a threaded one in HTTP/1.1.
pub fn is_ok(response: &str) -> bool {
    response.starts_with("HTTP/1.") && response.split_whitespace().nth(1) == Some("200")
}

/// Whether moto's S3 answers on `port`: `GET /` lists the buckets (any other server, even one
/// answering 200, does not produce this).
fn s3_answers(port: u16) -> bool {
    http(port, "GET", "/").is_some_and(|r| is_ok(&r) && r.contains("<ListAllMyBucketsResult"))
}

/// Whether a werkzeug start-up line says it listens on `port` (and not on a longer port
/// number starting with the same digits).
fn announces(line: &str, port: u16) -> bool {
    line.split_once("Running on http://127.0.0.1:")
        .is_some_and(|(_, rest)| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits == port.to_string()
        })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The command that starts moto on `port`: `moto_server` from the repository's `.venv` (or
/// `PATH`), or the same server through [`tkms_testkit::python`]. Fails the test with one line
/// when moto is not installed.
fn command(threading: Threading, port: u16) -> Command {
    let port_s = port.to_string();
    let moto_server = tkms_testkit::python_tool("moto_server");
    if moto_server.is_none() || threading == Threading::Single {
        tkms_testkit::require_python_module("moto.server", "moto[server]");
    }
    let mut c = match (threading, moto_server) {
        (Threading::Threaded, Some(exe)) => {
            let mut c = Command::new(exe);
            c.args(["-H", "127.0.0.1", "-p", &port_s]);
            c
        }
        (Threading::Threaded, None) => {
            let mut c = Command::new(tkms_testkit::python());
            c.args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port_s]);
            c
        }
        (Threading::Single, _) => {
            let mut c = Command::new(tkms_testkit::python());
            c.args(["-c", SINGLE_THREADED, "127.0.0.1", &port_s]);
            c
        }
    };
    // As `moto_server` sets it for the services that put their own URL in answers.
    c.env("MOTO_PORT", &port_s);
    c
}

impl Moto {
    /// moto as `moto_server` runs it: a thread per request.
    pub fn start() -> Self {
        Self::start_with(Threading::Threaded)
    }

    /// moto serving one request at a time. Its threaded server does not lock a conditional
    /// put's check (If-Match) with its write, so two conditional puts on one object can both
    /// succeed; S3 makes them atomic, and so does a single thread.
    pub fn start_single_threaded() -> Self {
        Self::start_with(Threading::Single)
    }

    fn start_with(threading: Threading) -> Self {
        let mut failures = Vec::new();
        for _ in 0..ATTEMPTS {
            match Self::try_start(threading) {
                Ok(moto) => return moto,
                Err(failure) => failures.push(failure),
            }
        }
        panic!(
            "moto_server did not start in {ATTEMPTS} attempts:\n{}\n{INSTALL_HINT}",
            failures.join("\n")
        );
    }

    /// One start on a new port: `Err` (with moto's start-up output) if it exits or is not
    /// ready within [`START_TIMEOUT`].
    fn try_start(threading: Threading) -> Result<Self, String> {
        let port = free_port();
        let mut child = command(threading, port)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start moto_server ({e}); {INSTALL_HINT}"));
        // stderr is read to its end by a thread of its own, so that moto, which logs every
        // request there, never blocks on a full pipe; the lines come here until start-up is
        // over, and are dropped after.
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut moto = Moto { child, port };
        let mut output = Vec::new();
        let mut listening = false;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            while let Ok(line) = lines.try_recv() {
                listening |= announces(&line, port);
                output.push(line);
            }
            if let Some(status) = moto.child.try_wait().unwrap() {
                // What it said before exiting (e.g. "Address already in use").
                while let Ok(line) = lines.recv_timeout(Duration::from_secs(1)) {
                    output.push(line);
                }
                return Err(format!(
                    "  port {port}: exited at start-up ({status}): {}",
                    output.join(" | ")
                ));
            }
            if listening && s3_answers(port) {
                return Ok(moto);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "  port {port}: not ready within {START_TIMEOUT:?}: {}",
                    output.join(" | ")
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a symmetric KMS key in this moto (credentials `test`/`test`, us-east-1) and
    /// returns its id.
    pub async fn create_kms_key(&self) -> String {
        let conf = aws_sdk_kms::Config::builder()
            .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
            .region(aws_sdk_kms::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_kms::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .endpoint_url(self.endpoint())
            .build();
        let out = aws_sdk_kms::Client::from_conf(conf)
            .create_key()
            .send()
            .await
            .unwrap();
        out.key_metadata.unwrap().key_id
    }
}
