//! Start-up: a listener address that is briefly taken (a restart right after a crash) is
//! retried for a few seconds; one that stays taken is a clear "cannot listen" error.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use mecha_integration::{free_addr, http_get, mecha_run_command, TempDir, READY_TIMEOUT};

fn config(listener: std::net::SocketAddr, admin: std::net::SocketAddr) -> String {
    format!(
        "admin: {{ address: {admin} }}\n\
         listeners:\n  - {{ name: runtime, address: {listener}, filters: [{{ type: capability }}] }}\n\
         components:\n  - {{ name: statestore, type: state.memory }}\n"
    )
}

#[tokio::test]
async fn a_briefly_taken_address_is_retried_until_it_frees() {
    let (listener, admin) = (free_addr(), free_addr());
    let holder = std::net::TcpListener::bind(listener).expect("hold the listener address");
    let dir = TempDir::new("startup");
    let path = dir.write("mecha.yaml", &config(listener, admin));
    let mut child = mecha_run_command(&path, dir.path())
        .spawn()
        .expect("spawn mecha");
    let stderr = child.stderr.take().expect("stderr piped");
    // Readiness signal: mecha says it is retrying the taken address; then free it.
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("address in use; retrying") {
                let _ = seen_tx.send(());
            }
            lines.push(line);
        }
        lines.join("\n")
    });
    let said = seen_rx.recv_timeout(Duration::from_secs(20));
    drop(holder);
    assert!(said.is_ok(), "mecha did not report the taken address");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(r) = http_get(admin, "/ready").await {
            if r.status == 200 {
                break;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "mecha exited ({status}) instead of retrying:\n{}",
                reader.join().unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "mecha never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn an_address_that_stays_taken_is_a_clear_error() {
    let (listener, admin) = (free_addr(), free_addr());
    let _holder = std::net::TcpListener::bind(listener).expect("hold the listener address");
    let dir = TempDir::new("startup");
    let path = dir.write("mecha.yaml", &config(listener, admin));
    let mut cmd = mecha_run_command(&path, dir.path());
    // run_with_timeout gives no stdin: the EOF guard would end the run at once.
    cmd.env_remove("MECHA_EXIT_ON_STDIN_EOF");
    let out = mecha_integration::run_with_timeout(&mut cmd, Duration::from_secs(30))
        .expect("mecha exits by itself");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("listeners.runtime") && stderr.contains("cannot listen"),
        "{stderr}"
    );
    assert!(stderr.contains(&listener.to_string()), "{stderr}");
}
