//! Load harness: the cost of `connect()` on loopback with `tyrd observe`
//! enforcing a 100-rule policy vs without tyrd, alternating rounds in one
//! run. Needs root. No packet leaves loopback: every rule targets private or
//! documentation ranges, and the connects go to 127.0.0.1.
//!
//! Usage: cargo run --release -p tyr-bench --bin connect_overhead -- [TYRD_PATH] [CONNECTS] [ROUNDS]

use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use tyr_bench::tyrd_process;

/// 100 rules: 98 deny/alert rules on ranges the benchmark never connects
/// to, one alert on a port range, and a final allow.
fn policy() -> String {
    let mut yaml = String::new();
    for i in 0..98 {
        let (verdict, field) = if i % 3 == 0 { ("alert", "cidr_allow") } else { ("deny", "cidr_deny") };
        yaml.push_str(&format!(
            "- name: rule-{i}\n  action: net_connect\n  {field}: [\"10.{}.{}.0/24\", \"fd00:{i:x}::/32\"]\n  verdict: {verdict}\n",
            i / 4,
            i % 250
        ));
    }
    yaml.push_str("- name: watch-high-ports\n  action: net_connect\n  ports: [\"60000-60100\"]\n  verdict: alert\n");
    yaml.push_str("- name: allow-rest\n  action: net_connect\n  verdict: allow\n");
    yaml
}

fn connects_per_second(listener: &TcpListener, connects: u32) -> f64 {
    let addr = listener.local_addr().expect("addr");
    let start = Instant::now();
    for _ in 0..connects {
        let stream = TcpStream::connect(addr).expect("connect");
        drop(stream);
    }
    f64::from(connects) / start.elapsed().as_secs_f64()
}

unsafe extern "C" {
    #[link_name = "listen"]
    fn libc_listen(fd: i32, backlog: i32) -> i32;
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let tyrd = args.get(1).cloned().unwrap_or_else(|| "target/release/tyrd".to_owned());
    let connects: u32 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let rounds: u32 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(5);
    let dir = std::env::temp_dir().join(format!("tyr-connect-overhead-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let policy_path = dir.join("policy.yaml");
    std::fs::write(&policy_path, policy()).expect("policy");

    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    // A deep accept queue: an overflowing one drops handshakes and turns the
    // measurement into one of SYN retransmits.
    // SAFETY: listen(2) again on our own listening socket, to raise its backlog.
    let raised = unsafe { libc_listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 65_535) };
    assert_eq!(raised, 0, "raise the listen backlog");
    let acceptor = listener.try_clone().expect("clone");
    std::thread::spawn(move || acceptor.incoming().for_each(drop));

    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let without = connects_per_second(&listener, connects);
        let policy_arg = policy_path.to_str().expect("utf-8 path");
        let tyrd_process = tyrd_process::start(&tyrd, &dir.join("state"), &["--policy", policy_arg]);
        let with = connects_per_second(&listener, connects);
        tyrd_process::stop(tyrd_process);
        let ratio = without / with;
        println!(
            "round {round}: {without:.0} connects/s without tyrd, {with:.0} with (100-rule policy); cost ratio {ratio:.3}"
        );
        ratios.push(ratio);
    }
    ratios.sort_by(f64::total_cmp);
    println!("median cost ratio (time per connect with tyrd / without): {:.3}", ratios[ratios.len() / 2]);
    let _ = std::fs::remove_dir_all(&dir);
}
