//! `tyrd observe` against real processes on this kernel (root): exec and
//! exit, file opens by absolute path, relative path and dirfd, and IPv4 and
//! IPv6 connects.

mod support;

use std::net::{TcpListener, TcpStream};
use std::process::Command;

use support::{Observer, field, marker, meta};

#[test]
fn exec_with_arguments_and_its_exit() {
    let observer = Observer::start(&["--kind", "exec", "--kind", "exit"]);
    let tag = marker("arg-");
    let child = Command::new("/usr/bin/printf").args(["%s", &tag]).output().expect("run printf");
    assert!(child.status.success());
    // The pid is the child's: find it through its arguments.
    let exec = observer.wait_for("printf exec", |e| field(e, "kind") == "EXEC" && field(e, "cmdline").contains(&tag));
    let pid = exec["pid"].as_i64().expect("pid");
    let exit = observer.wait_for("printf exit", |e| field(e, "kind") == "EXIT" && e["pid"].as_i64() == Some(pid));
    let observed = observer.stop();

    assert_eq!(field(&exec, "resource"), "/usr/bin/printf");
    assert_eq!(field(&exec, "process_exe"), "/usr/bin/printf");
    assert_eq!(field(&exec, "cmdline"), format!("/usr/bin/printf %s {tag}"));
    assert_eq!(exec["ppid"].as_i64(), Some(i64::from(std::process::id())), "parent is this test");
    assert_eq!(meta(&exec, "argc"), "3");
    assert_eq!(field(&exec, "verdict"), "ALLOW");
    assert!(exec["seq"].as_u64().expect("seq") > 0);
    assert_eq!(uuid::Uuid::parse_str(field(&exec, "event_id")).expect("uuid").get_version_num(), 7);
    assert_eq!(meta(&exit, "exit_code"), "0");
    assert_eq!(field(&exit, "process_exe"), "/usr/bin/printf");
    assert!(exit["timestamp_ns"].as_i64() >= exec["timestamp_ns"].as_i64());
    assert_eq!(observed.counters["decode_failed"], 0);
}

#[test]
fn file_opens_resolve_to_absolute_paths() {
    let dir = std::env::temp_dir().join(marker("tyr-files-"));
    std::fs::create_dir_all(dir.join("sub")).expect("temp dir");
    let read_abs = dir.join("read-abs.txt");
    let read_rel = dir.join("read-rel.txt");
    let read_at = dir.join("sub").join("read-at.txt");
    let written = dir.join("written.txt");
    for path in [&read_abs, &read_rel, &read_at] {
        std::fs::write(path, b"x").expect("seed file");
    }

    let observer = Observer::start(&["--kind", "file_read", "--kind", "file_write"]);
    std::fs::File::open(&read_abs).expect("open for reading");
    std::fs::File::create(&written).expect("open for writing");
    // Relative to the cwd, and through openat(2) with a directory fd, in a child.
    let script = "import os\n\
                  os.close(os.open('read-rel.txt', os.O_RDONLY))\n\
                  d = os.open('sub', os.O_RDONLY | os.O_DIRECTORY)\n\
                  os.close(os.open('read-at.txt', os.O_RDONLY, dir_fd=d))\n\
                  try:\n    os.open('missing/../nope.txt', os.O_RDONLY)\nexcept OSError:\n    pass\n";
    let status = Command::new("python3").args(["-c", script]).current_dir(&dir).status().expect("python3");
    assert!(status.success());

    let me = i64::from(std::process::id());
    let find = |kind: &str, path: &std::path::Path| {
        let path = path.to_str().expect("utf-8").to_owned();
        let kind = kind.to_owned();
        observer.wait_for(&format!("{kind} {path}"), move |e| field(e, "kind") == kind && field(e, "resource") == path)
    };
    let abs = find("FILE_READ", &read_abs);
    let write = find("FILE_WRITE", &written);
    let rel = find("FILE_READ", &read_rel);
    let at = find("FILE_READ", &read_at);
    let missing = find("FILE_READ", &dir.join("nope.txt"));
    observer.stop();

    assert_eq!(abs["pid"].as_i64(), Some(me));
    assert_eq!(write["pid"].as_i64(), Some(me));
    assert!(meta(&write, "flags").contains("O_CREAT"), "{write}");
    assert!(meta(&abs, "flags").starts_with("O_RDONLY"), "{abs}");
    assert_ne!(rel["pid"].as_i64(), Some(me), "opened by the child");
    assert_eq!(rel["pid"], at["pid"]);
    assert_eq!(field(&rel, "process_exe"), field(&at, "process_exe"));
    assert!(field(&rel, "process_exe").contains("python3"), "{rel}");
    assert_eq!(meta(&missing, "error"), "ENOENT");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ipv4_and_ipv6_connects() {
    let v4 = TcpListener::bind("127.0.0.1:0").expect("bind v4");
    let v6 = TcpListener::bind("[::1]:0").expect("bind v6");
    let observer = Observer::start(&["--kind", "net_connect", "--pid", &std::process::id().to_string()]);
    let _a = TcpStream::connect(v4.local_addr().expect("addr")).expect("connect v4");
    let _b = TcpStream::connect(v6.local_addr().expect("addr")).expect("connect v6");
    let v4_port = v4.local_addr().expect("addr").port().to_string();
    let v6_port = v6.local_addr().expect("addr").port().to_string();
    let e4 = observer.wait_for("v4 connect", |e| field(e, "resource") == format!("127.0.0.1:{v4_port}"));
    let e6 = observer.wait_for("v6 connect", |e| field(e, "resource") == format!("[::1]:{v6_port}"));
    let observed = observer.stop();
    for (event, ip, port) in [(&e4, "127.0.0.1", &v4_port), (&e6, "::1", &v6_port)] {
        assert_eq!(field(event, "kind"), "NET_CONNECT");
        assert_eq!(meta(event, "remote_ip"), ip);
        assert_eq!(meta(event, "remote_port"), port.as_str());
        assert_eq!(meta(event, "protocol"), "tcp");
        assert_eq!(event["pid"].as_i64(), Some(i64::from(std::process::id())));
    }
    // The pid filter let nothing else through.
    assert!(observed.events.iter().all(|e| e["pid"].as_i64() == Some(i64::from(std::process::id()))));
}
