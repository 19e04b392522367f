//! What a hostile client costs in the log: a huge line is logged cut to `log_line_bytes`, and
//! refusals are logged at most once a second. The log is captured from a `tracing`
//! subscriber installed for this test binary (and from a bulk message log).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

mod common;

use common::{spec, start_spec};
use herd_net::{Limits, MessageLog, ServerHandle, ServerSpec};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Everything logged through `tracing` in this process, at `info` and above.
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Capture(writer.clone()))
            .init();
        buf
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A bulk message log that keeps what it is given.
#[derive(Default)]
struct Bulk(Mutex<Vec<u8>>);

impl MessageLog for Bulk {
    fn write_lines(&self, lines: &[u8]) {
        self.0.lock().unwrap().extend_from_slice(lines);
    }
}

fn log_lines(bytes: &[u8], containing: &str) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| l.contains(containing))
        .map(str::to_owned)
        .collect()
}

async fn start(spec: ServerSpec) -> (ServerHandle, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_spec(spec, listener)
}

/// Sends `data`, half-closes and reads everything back, on a blocking thread.
async fn exchange(handle: &ServerHandle, data: Vec<u8>) -> Vec<u8> {
    let addr = handle.local_addr();
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(&data).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        out
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_random_line_is_logged_cut_with_its_length_in_both_log_paths() {
    let log = captured();
    // 60,000 random bytes, none a line end: a line the server answers with `? LINE`.
    let mut line: Vec<u8> = (0..60_000)
        .map(|_| rand::random::<u8>())
        .map(|b| if b == b'\n' || b == b'\r' { b'x' } else { b })
        .collect();
    line.push(b'\n');
    let bulk = Arc::new(Bulk::default());
    let mut with_bulk = spec("G", vec![], None);
    with_bulk.message_log = Some(bulk.clone());
    for spec in [with_bulk, spec("G", vec![], None)] {
        let is_bulk = spec.message_log.is_some();
        let (handle, token) = start(spec).await;
        let reply = exchange(&handle, line.clone()).await;
        assert_eq!(reply.len(), 60_003, "the reply is `? LINE` in full");
        token.cancel();
        let lines = if is_bulk {
            log_lines(&bulk.0.lock().unwrap(), "client message")
        } else {
            log_lines(&log.lock().unwrap(), "client message")
        };
        let ours: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains("(60000 bytes)"))
            .collect();
        assert_eq!(ours.len(), 1, "bulk {is_bulk}: {lines:?}");
        let l = ours[0];
        assert!(l.len() < 1500, "bulk {is_bulk}: {} bytes", l.len());
        assert!(l.contains("(60003 bytes)"), "the reply is cut too: {l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_over_max_clients_are_counted_each_and_logged_once_a_second() {
    let log = captured();
    let mut s = spec("G", vec![], None);
    s.limits = Limits {
        max_clients: 2,
        ..Limits::default()
    };
    let (handle, token) = start(s).await;
    let addr = handle.local_addr();
    let started = Instant::now();
    let elapsed = tokio::task::spawn_blocking(move || {
        let held: Vec<TcpStream> = (0..2)
            .map(|i| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s.write_all(format!("IAMAT held{i} +1+1 1\n").as_bytes())
                    .unwrap();
                let mut b = [0u8; 64];
                assert!(s.read(&mut b).unwrap() > 0, "held connection {i} served");
                s
            })
            .collect();
        for _ in 0..40 {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = s.write_all(b"IAMAT over +1+1 1\n");
            let mut out = Vec::new();
            // Closed at once, unanswered (a reset or an end of stream).
            let _ = s.read_to_end(&mut out);
            assert!(out.is_empty(), "{out:?}");
        }
        let elapsed = started.elapsed();
        drop(held);
        elapsed
    })
    .await
    .unwrap();
    assert_eq!(handle.stats().refusals.max_clients, 40);
    let logged = log_lines(&log.lock().unwrap(), "too many client connections;");
    // One line per second at most (plus the first).
    let bound = elapsed.as_secs() as usize + 2;
    assert!(
        !logged.is_empty() && logged.len() <= bound,
        "{} lines in {elapsed:?}",
        logged.len()
    );
    token.cancel();
}
