//! `herd-cli fence` and `load --fences` against small fake fence servers on loopback that
//! speak the FENCE protocol of docs/client-protocol.md as it is fixed (`FENCED` echoes,
//! `? ` refusals, pushed `ENTER`/`EXIT` lines). The same commands against a real herd-server
//! are in `server.rs` (ignored until the server side lands).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const AT: &str = "AT Hands +0.000123456 kiwi +34.068930-118.445127 1520023934.918963997";

/// What a fake fence server does on each connection.
#[derive(Clone)]
struct Script {
    /// Refuse (`? <line>`) the FENCEs whose radius is this.
    refuse_radius: Option<&'static str>,
    /// Lines pushed after the first acknowledgement, before the others.
    between: Vec<String>,
    /// Lines pushed after every acknowledgement.
    after: Vec<String>,
    /// Close once `after` is written (else wait for the client to close).
    close: bool,
}

/// A fake fence server; counts its connections and the FENCE lines it got.
struct FakeFences {
    addr: String,
    connections: Arc<AtomicUsize>,
    fences: Arc<AtomicUsize>,
}

fn fake_fences(script: Script) -> FakeFences {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let connections = Arc::new(AtomicUsize::new(0));
    let fences = Arc::new(AtomicUsize::new(0));
    let (conns, count) = (connections.clone(), fences.clone());
    thread::spawn(move || {
        for s in listener.incoming().flatten() {
            conns.fetch_add(1, Ordering::SeqCst);
            let script = script.clone();
            let count = count.clone();
            thread::spawn(move || serve(s, &script, &count));
        }
    });
    FakeFences {
        addr,
        connections,
        fences,
    }
}

fn serve(s: std::net::TcpStream, script: &Script, count: &AtomicUsize) {
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut acked = 0;
    let mut line = String::new();
    loop {
        line.clear();
        // The client never half-closes a fence connection: a short read timeout tells when
        // it has sent all its FENCEs (they come in one write).
        r.get_ref()
            .set_read_timeout(Some(Duration::from_millis(if acked == 0 {
                5000
            } else {
                200
            })))
            .unwrap();
        match r.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(_) => break,
        }
        let l = line.trim_end_matches('\n');
        let fields: Vec<&str> = l.split(' ').collect();
        let reply = match fields.as_slice() {
            ["FENCE", _, _, km] if script.refuse_radius != Some(*km) => {
                format!("FENCED {}\n", &l["FENCE ".len()..])
            }
            _ => format!("? {l}\n"),
        };
        count.fetch_add(1, Ordering::SeqCst);
        w.write_all(reply.as_bytes()).unwrap();
        acked += 1;
        if acked == 1 {
            for p in &script.between {
                w.write_all(format!("{p}\n").as_bytes()).unwrap();
            }
        }
    }
    for p in &script.after {
        if w.write_all(format!("{p}\n").as_bytes()).is_err() {
            return;
        }
    }
    if script.close {
        return;
    }
    // Hold the connection until the client closes it (bounded).
    r.get_ref()
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut sink = Vec::new();
    let _ = r.read_to_end(&mut sink);
}

fn script() -> Script {
    Script {
        refuse_radius: None,
        between: Vec::new(),
        after: Vec::new(),
        close: false,
    }
}

#[test]
fn fence_prints_the_acknowledgements_then_events_up_to_count() {
    let fake = fake_fences(Script {
        between: vec![format!("ENTER f1 {AT}")],
        after: vec![
            format!("EXIT f1 {AT}"),
            format!("ENTER f2 {AT}"),
            format!("EXIT f2 {AT}"),
        ],
        ..script()
    });
    // Options after the fences, and a location that starts with a minus.
    let out = run(&[
        "--server",
        &fake.addr,
        "fence",
        "f1",
        "+34.068930-118.445127",
        "1",
        "f2",
        "-33.9249+18.4241",
        "0.5",
        "--count",
        "3",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let want = format!(
        "FENCED f1 +34.068930-118.445127 1\nENTER f1 {AT}\nFENCED f2 -33.9249+18.4241 0.5\n\
         EXIT f1 {AT}\nENTER f2 {AT}\n"
    );
    assert_eq!(stdout(&out), want);
    assert_eq!(fake.fences.load(Ordering::SeqCst), 2);
}

#[test]
fn fence_json_names_every_field_of_an_event() {
    let fake = fake_fences(Script {
        after: vec![format!("ENTER f1 {AT}"), format!("EXIT f1 {AT}")],
        ..script()
    });
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let out = run(&[
        "--server", &fake.addr, "--json", "fence", "f1", "+34-118", "2", "--count", "2",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = json_lines(&out);
    assert_eq!(v.len(), 3, "{v:?}");
    assert_eq!(v[0]["reply"], "fenced");
    assert_eq!(v[0]["fence"], "f1");
    assert_eq!(v[0]["location"], "+34-118");
    assert_eq!(v[0]["radius_km"], "2");
    for (e, kind) in v[1..].iter().zip(["enter", "exit"]) {
        assert_eq!(e["kind"], kind, "{e}");
        assert_eq!(e["fence"], "f1");
        assert_eq!(e["client"], "kiwi");
        assert_eq!(e["server"], "Hands");
        assert_eq!(e["diff"], "+0.000123456");
        assert_eq!(e["location"], "+34.068930-118.445127");
        assert_eq!(e["time"], "1520023934.918963997");
        assert_eq!(e["line"], AT);
        let at: f64 = e["received_at"].as_str().unwrap().parse().unwrap();
        assert!(at >= before - 1.0 && at < before + 60.0, "{e}");
    }
}

#[test]
fn fence_stops_at_its_duration_and_at_count_zero() {
    let fake = fake_fences(script());
    let started = Instant::now();
    let out = run(&[
        "--server",
        &fake.addr,
        "fence",
        "f1",
        "+1+1",
        "1",
        "--duration",
        "400ms",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "FENCED f1 +1+1 1\n");
    assert!(started.elapsed() >= Duration::from_millis(400));
    let out = run(&[
        "--server", &fake.addr, "fence", "--count", "0", "f1", "+1+1", "1",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "FENCED f1 +1+1 1\n");
}

#[test]
fn a_refused_fence_exits_1_and_says_why() {
    let fake = fake_fences(Script {
        refuse_radius: Some("3"),
        ..script()
    });
    let out = run(&[
        "--server", &fake.addr, "fence", "a", "+1+1", "1", "b", "+2+2", "3",
    ]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert_eq!(stdout(&out), "FENCED a +1+1 1\n? FENCE b +2+2 3\n");
    assert!(stderr(&out).contains("1 of 2 FENCE"), "{}", stderr(&out));
    let out = run(&["--server", &fake.addr, "--json", "fence", "b", "+2+2", "3"]);
    assert_eq!(code(&out), 1);
    let v = json_lines(&out);
    assert_eq!(v[0]["reply"], "invalid");
    assert_eq!(v[0]["request"], "FENCE b +2+2 3");
}

#[test]
fn a_server_that_closes_or_sends_nonsense_exits_2_after_the_events() {
    let fake = fake_fences(Script {
        after: vec![format!("ENTER f1 {AT}")],
        close: true,
        ..script()
    });
    let out = run(&["--server", &fake.addr, "fence", "f1", "+1+1", "1"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("FENCED f1 +1+1 1\nENTER f1 {AT}\n"));
    assert!(
        stderr(&out).contains("closed the connection"),
        "{}",
        stderr(&out)
    );
    let fake = fake_fences(Script {
        after: vec!["ENTER f1 AT not-an-at-line".into()],
        ..script()
    });
    let out = run(&["--server", &fake.addr, "fence", "f1", "+1+1", "1"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("malformed"), "{}", stderr(&out));
}

#[test]
fn fence_usage_errors_exit_64_before_connecting() {
    let silent = SilentServer::start();
    let long = "x".repeat(65);
    for args in [
        vec!["f1", "+1+1"],
        vec!["f1", "+1+1", "1", "f2"],
        vec!["f1", "1+1", "1"],
        vec!["f1", "+1+1", "0"],
        vec!["f1", "+1+1", "50.01"],
        vec![long.as_str(), "+1+1", "1"],
        vec!["f1", "+1+1", "1", "--duration", "0s"],
        vec!["f1", "+1+1", "1", "--count", "x"],
    ] {
        let mut all = vec!["--server", silent.addr.as_str(), "fence"];
        all.extend(&args);
        let out = run_with(&all, b"", Duration::from_secs(20));
        assert_eq!(code(&out), 64, "{args:?}: {}", stderr(&out));
    }
    let out = run(&["fence", "--all", "f1", "+1+1", "1"]);
    assert_eq!(code(&out), 64);
}

#[test]
fn load_keeps_its_fences_open_on_bounded_connections() {
    let echo = EchoServer::start();
    let fake = fake_fences(Script {
        // An event about a client that is not the run's: counted apart.
        after: vec![format!("ENTER load-fence-0 {AT}")],
        ..script()
    });
    let out = run(&[
        "--server",
        &echo.addr(),
        "--json",
        "load",
        "-n",
        "2000",
        "-c",
        "4",
        "-k",
        "100",
        "--fresh",
        "--area",
        "5",
        "--fences",
        "250",
        "--fences-per-conn",
        "100",
        "--fence-server",
        &fake.addr,
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = &json_lines(&out)[0];
    assert_eq!(v["ok"], 2000, "{v}");
    let f = &v["fences"];
    assert_eq!(f["open"], 250, "{v}");
    assert_eq!(f["connections"], 3, "{v}");
    assert_eq!(f["lost_connections"], 0, "{v}");
    assert_eq!(fake.connections.load(Ordering::SeqCst), 3);
    assert_eq!(fake.fences.load(Ordering::SeqCst), 250);
    // Each of the three connections got the one foreign event.
    assert_eq!(
        (f["events"].as_u64(), f["foreign"].as_u64()),
        (Some(3), Some(3)),
        "{v}"
    );
}

#[test]
fn load_with_fences_stops_before_the_load_when_the_server_refuses_them() {
    let echo = EchoServer::start();
    let fake = fake_fences(Script {
        refuse_radius: Some("0.1"),
        ..script()
    });
    let out = run(&[
        "--server",
        &echo.addr(),
        "load",
        "-n",
        "100",
        "--fresh",
        "--fences",
        "3",
        "--fence-server",
        &fake.addr,
    ]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not support FENCE"),
        "{}",
        stderr(&out)
    );
    // Usage: fences need --fresh; --fence-server needs --fences.
    for args in [
        vec!["load", "-n", "1", "--fences", "3"],
        vec!["load", "-n", "1", "--fence-server", "127.0.0.1:1"],
        vec![
            "load",
            "-n",
            "1",
            "--fresh",
            "--fences",
            "3",
            "--fence-km",
            "60",
        ],
        vec![
            "load",
            "-n",
            "1",
            "--fresh",
            "--fences",
            "3",
            "--fences-per-conn",
            "0",
        ],
    ] {
        let mut all = vec!["--server", fake.addr.as_str()];
        all.extend(&args);
        assert_eq!(code(&run(&all)), 64, "{args:?}");
    }
}
