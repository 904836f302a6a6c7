//! BPF LSM enforcement in a real kernel: Debian's kernel booted under QEMU
//! (the CI host refuses BPF LSM), tyrd enforcing a local policy, the static
//! test program doing the opens and execs. Shown here: a denied open fails
//! with EPERM while an allowed one opens; a denied exec fails with EPERM;
//! the child of a governed agent is governed from its first syscall; every
//! denial is an event with verdict DENY, the rule and the policy version;
//! globs decide in the kernel as in the model;
//! policy hot-swapped 50+ times under a loop of opens never gives a mixed
//! verdict; unregistered agents are quarantined or denied.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tyr_bench::kernel_vm::{EPERM, TYRD_SHELL, boot, debian_kernel, find_line, prefixed, result_lines, tyrd_image};

const MAIN_POLICY: &str = r#"name: vm-main
default_verdict: allow
rules:
  - name: deny-secret-read
    action: file_read
    paths: ["/work/secret/"]
    verdict: deny
    severity: critical
  - name: alert-secret-write
    action: file_write
    paths: ["/work/secret/*"]
    verdict: alert
  - name: deny-forbidden-exec
    action: exec
    paths: ["/work/bin/forbidden"]
    verdict: deny
  - name: alert-script
    action: exec
    paths: ["/work/bin/alerted.sh"]
    verdict: alert
  - name: deny-glob-keys
    action: file_read
    paths: ["/work/glob/*/keys/*.pem", "/work/glob/deep/**/id_*"]
    verdict: deny
overlays:
  claude-code:
    - name: claude-no-agent-secret
      action: file_read
      paths: ["/work/agent-secret/*"]
      verdict: deny
"#;

/// Paths checked against `deny-glob-keys` in the kernel and in the model:
/// glob tails of every length around the kernel's 16-byte stride, matches
/// and near misses.
const GLOB_PATHS: [&str; 14] = [
    "/work/glob/a/keys/b.pem",
    "/work/glob/abcdef/keys/.pem",
    "/work/glob/abcdefg/keys/.pem",
    "/work/glob/abcdefghijklmnopqrstu/keys/.pem",
    "/work/glob/abcdefghijklmnopqrstuv/keys/.pem",
    "/work/glob/abcdefghijklmnopqrstuv/keys/.pen",
    "/work/glob/a-directory-name-longer-than-sixteen-bytes/keys/server-private-key.pem",
    "/work/glob/a-directory-name-longer-than-sixteen-bytes/keys/server-private-key.pem.bak",
    "/work/glob/x/notkeys/y.pem",
    "/work/glob/x/keys/sub/dir/y.pem",
    "/work/glob/deep/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/id_rsa",
    "/work/glob/deep/id_rsa",
    "/work/glob/deep/x/id_",
    "/work/glob/deep/x/idrsa",
];

fn swap_policy(letter: char, denied: &str, alerted: &str) -> String {
    format!(
        "name: swap-{letter}\ndefault_verdict: allow\nrules:\n  - name: swap-{letter}-deny\n    action: file_read\n    paths: [\"/work/swap/{denied}\"]\n    verdict: deny\n  - name: swap-{letter}-alert\n    action: file_read\n    paths: [\"/work/swap/{alerted}\"]\n    verdict: alert\n"
    )
}

const FLIPS: usize = 52;

fn init_script() -> String {
    let glob_paths = GLOB_PATHS.join(" ");
    format!(
        r#"W=/work
mkdir -p $W/secret $W/open $W/agent-secret $W/swap $W/bin /var/lib/tyr
echo s > $W/secret/key; echo o > $W/open/file; echo a > $W/agent-secret/key; echo a > $W/swap/a; echo b > $W/swap/b
cp /bin/busybox $W/bin/forbidden; cp /bin/probe $W/bin/claude; cp /bin/probe $W/bin/cursor
{TYRD_SHELL}
events() {{ grep '"verdict":"\(DENY\|ALERT\)"' $1 | grep '/work/' | sed 's/^/TYR-VM-EVENT /'; }}

tyrd probe > /probe.json 2>/dev/null
echo "TYR-VM probe $(grep -o '"enforce_[a-z]*": [a-z]*' /probe.json | tr -d '" ' | tr ':' '=' | tr '\n' ' ')"
echo "TYR-VM phase name=enforce"
cp /policy-main.yaml /policy.yaml
start_tyrd /ev1.json /log1.txt
probe open $W/secret/key
probe open $W/open/file
probe write $W/secret/key
probe rdwr $W/secret/key
probe exec $W/bin/forbidden
printf '#!/bin/sh\nexit 0\n' > $W/bin/alerted.sh; chmod +x $W/bin/alerted.sh
$W/bin/alerted.sh && echo "TYR-VM exec path=$W/bin/alerted.sh errno=0"
for f in {glob_paths}; do mkdir -p "${{f%/*}}"; echo g > "$f"; probe open "$f"; done
/bin/true && echo "TYR-VM exec path=/bin/true errno=0"
probe open $W/agent-secret/key
CLAUDECODE=1 $W/bin/claude governed-child $W/agent-secret/key
sleep 1; stop_tyrd; events /ev1.json

echo "TYR-VM phase name=swap"
cp /policy-a.yaml /policy.yaml
start_tyrd /ev2.json /log2.txt
rm -f /stop; probe swap /stop $W/swap/a $W/swap/b > /swap.out &
P=$!
n=0
while [ $n -lt {FLIPS} ]; do
  if [ $((n % 2)) = 0 ]; then cp /policy-b.yaml /policy.tmp; else cp /policy-a.yaml /policy.tmp; fi
  mv /policy.tmp /policy.yaml; kill -HUP $TYRD; n=$((n+1))
  i=0; while [ $(grep -c "policy version" /log2.txt) -le $n ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
done
touch /stop; wait $P; cat /swap.out
sleep 1; stop_tyrd
grep "policy version" /log2.txt | sed 's/^/TYR-VM-LOG /'
awk '/"\/work\/swap\// {{ r=$0; sub(/.*"resource":"/,"",r); sub(/".*/,"",r); v=$0; sub(/.*"verdict":"/,"",v); sub(/".*/,"",v); p=$0; sub(/.*"policy_version":/,"",p); sub(/[,}}].*/,"",p); u=$0; sub(/.*"rule":"/,"",u); sub(/".*/,"",u); print "TYR-VM-SWAP " r " " v " " p " " u }}' /ev2.json

echo "TYR-VM phase name=unregistered"
cp /policy-main.yaml /policy.yaml
start_tyrd /ev3.json /log3.txt --unregistered-agents quarantine
$W/bin/cursor governed-child $W/open/out write
sleep 1; stop_tyrd; events /ev3.json
start_tyrd /ev4.json /log4.txt --unregistered-agents deny
$W/bin/cursor governed-child $W/open/file
sleep 1; stop_tyrd; events /ev4.json
"#
    )
}

#[test]
fn bpf_lsm_enforcement_in_a_kernel_vm() {
    let work = std::env::temp_dir().join(format!("tyr-kernel-vm-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    let image = tyrd_image(&work).expect("image with tyrd and the test program");
    image.add_file("/policy-main.yaml", MAIN_POLICY.as_bytes(), 0o644).expect("policy");
    image.add_file("/policy-a.yaml", swap_policy('a', "a", "b").as_bytes(), 0o644).expect("policy a");
    image.add_file("/policy-b.yaml", swap_policy('b', "b", "a").as_bytes(), 0o644).expect("policy b");
    let initrd = work.join("initrd.gz");
    image.pack(&init_script(), &initrd).expect("pack");

    let started = Instant::now();
    let console = boot(&debian_kernel().expect("kernel"), &initrd, Duration::from_secs(170)).expect("boot");
    let elapsed = started.elapsed();
    println!("VM run: {:.1} s", elapsed.as_secs_f64());
    // Kept for whoever reads a failure.
    let console_file = std::env::temp_dir().join("tyr-kernel-vm-console.txt");
    let _ = std::fs::write(&console_file, &console);
    println!("console: {}", console_file.display());
    assert!(console.contains("TYR-VM-DONE"), "the VM script did not finish:\n{console}");
    let lines = result_lines(&console);
    for log in prefixed(&console, "TYR-VM-LOG ").filter(|l| !l.contains("policy version")) {
        println!("tyrd: {log}");
    }
    for counters in prefixed(&console, "TYR-VM-COUNTERS ") {
        println!("tyrd counters: {counters}");
        assert!(
            counters.contains("\"undecided\":{\"EXEC\":0,\"EXIT\":0,\"FILE_READ\":0,\"FILE_WRITE\":0"),
            "{counters}"
        );
    }

    // This kernel has BPF LSM: the capability report says every deny is enforceable.
    let probe = lines.iter().find(|l| l.test == "probe").expect("probe line");
    for capability in ["enforce_file", "enforce_exec", "enforce_net"] {
        assert_eq!(probe.fields.get(capability).map(String::as_str), Some("true"), "{probe:?}");
    }

    // Files and execs: denied ones fail with EPERM in the kernel, allowed ones work.
    assert_eq!(find_line(&lines, "open", "/work/secret/key").num("errno"), Some(EPERM), "{console}");
    assert_eq!(find_line(&lines, "open", "/work/open/file").num("errno"), Some(0));
    assert_eq!(find_line(&lines, "write", "/work/secret/key").num("errno"), Some(0), "alert lets the write through");
    // Read and write: the read rule's deny is stricter than the write rule's alert.
    assert_eq!(find_line(&lines, "rdwr", "/work/secret/key").num("errno"), Some(EPERM));
    assert_eq!(find_line(&lines, "exec", "/work/bin/forbidden").num("errno"), Some(EPERM));
    assert_eq!(find_line(&lines, "exec", "/bin/true").num("errno"), Some(0));
    assert_eq!(find_line(&lines, "exec", "/work/bin/alerted.sh").num("errno"), Some(0), "alert lets the script run");
    // Globs: the kernel's automaton decides every path as the model does.
    let policy = tyr_common::policy::parse_policy("main.yaml", MAIN_POLICY).expect("policy");
    let mut denied_globs = 0;
    for path in GLOB_PATHS {
        let model = policy.base.decide(&tyr_common::policy::Request::File { write: false, path });
        let denied = model.verdict == tyr_common::policy::Verdict::Deny;
        denied_globs += usize::from(denied);
        let errno = find_line(&lines, "open", path).num("errno");
        assert_eq!(errno, Some(if denied { EPERM } else { 0 }), "{path}: the model says {:?}", model.verdict);
    }
    assert!((5..GLOB_PATHS.len() - 3).contains(&denied_globs), "{denied_globs} glob paths denied: both kinds needed");
    // The overlay governs only its agent: a plain process may read what claude-code may not.
    assert_eq!(find_line(&lines, "open", "/work/agent-secret/key").num("errno"), Some(0));
    let child = find_line(&lines, "governed-child", "/work/agent-secret/key");
    assert_eq!(child.num("parent_errno"), Some(EPERM), "the stand-in was classified as claude-code: {child:?}");
    assert_eq!(child.num("child_errno"), Some(EPERM), "the child is governed from its first syscall: {child:?}");

    // Every denial is an event with DENY, the rule and the policy version.
    let events: Vec<serde_json::Value> =
        prefixed(&console, "TYR-VM-EVENT ").map(|l| serde_json::from_str(l).expect("event JSON")).collect();
    let event = |resource: &str, rule: &str| {
        events
            .iter()
            .find(|e| e["resource"] == resource && e["metadata"]["rule"] == rule)
            .unwrap_or_else(|| panic!("no event for {resource} by {rule}: {events:#?}"))
    };
    for (resource, rule, verdict, kind) in [
        ("/work/secret/key", "deny-secret-read", "DENY", "FILE_READ"),
        ("/work/secret/key", "alert-secret-write", "ALERT", "FILE_WRITE"),
        ("/work/bin/forbidden", "deny-forbidden-exec", "DENY", "EXEC"),
        ("/work/agent-secret/key", "claude-no-agent-secret", "DENY", "FILE_READ"),
    ] {
        let e = event(resource, rule);
        assert_eq!(e["verdict"], verdict, "{e}");
        assert_eq!(e["kind"], kind, "{e}");
        assert!(e["policy_version"].as_i64().is_some_and(|v| v > 0), "{e}");
        if verdict == "DENY" {
            assert_eq!(e["metadata"]["enforced"], "true", "{e}");
        }
    }
    // A script is checked, then its interpreter (the exec's binary, the
    // event's resource): the script's own alert stands.
    let script = events
        .iter()
        .find(|e| e["metadata"]["rule"] == "alert-script")
        .unwrap_or_else(|| panic!("no ALERT for the script: {events:#?}"));
    assert_eq!((&script["kind"], &script["verdict"]), (&"EXEC".into(), &"ALERT".into()), "{script}");
    assert!(script["cmdline"].as_str().is_some_and(|c| c.contains("/work/bin/alerted.sh")), "{script}");
    let child_pid = child.num("child_pid").expect("child pid");
    let child_event = events
        .iter()
        .find(|e| e["pid"].as_i64() == Some(child_pid) && e["metadata"]["rule"] == "claude-no-agent-secret")
        .unwrap_or_else(|| panic!("no DENY event for the child {child_pid}"));
    assert_eq!(child_event["agent_type"], "claude-code", "{child_event}");

    // Hot swap: every decision belongs to one whole version.
    let swap = lines.iter().find(|l| l.test == "swap").expect("swap result");
    let installed = prefixed(&console, "TYR-VM-LOG ").filter(|l| l.contains("policy version")).count();
    assert!(installed > FLIPS, "only {installed} policy versions installed");
    let mut letter_of_version = BTreeMap::new();
    let (mut denied, mut allowed) = ([0i64; 2], [0i64; 2]);
    let mut decisions = 0;
    for line in prefixed(&console, "TYR-VM-SWAP ") {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [resource, verdict, version, rule] = fields[..] else { panic!("bad swap line {line}") };
        let letter = rule.strip_prefix("swap-").and_then(|r| r.chars().next()).expect("rule of a swap policy");
        let path = usize::from(!resource.ends_with("/a"));
        let denied_path = usize::from(letter != 'a');
        let want = if path == denied_path { "DENY" } else { "ALERT" };
        assert_eq!(verdict, want, "version {version} ({rule}) decided {resource} as {verdict}: a mixed policy");
        assert_eq!(*letter_of_version.entry(version.to_owned()).or_insert(letter), letter, "version {version} mixed");
        if verdict == "DENY" {
            denied[path] += 1;
        } else {
            allowed[path] += 1;
        }
        decisions += 1;
    }
    println!("hot swap: {decisions} opens decided under {} versions ({installed} installed)", letter_of_version.len());
    assert!(letter_of_version.len() > FLIPS * 3 / 4, "the opens saw only {} versions", letter_of_version.len());
    // What the program saw is what the events say.
    assert_eq!(swap.num("a_denied"), Some(denied[0]), "{swap:?}");
    assert_eq!(swap.num("b_denied"), Some(denied[1]), "{swap:?}");
    assert_eq!(swap.num("a_allowed"), Some(allowed[0]), "{swap:?}");
    assert_eq!(swap.num("b_allowed"), Some(allowed[1]), "{swap:?}");
    assert_eq!(swap.num("other"), Some(0));

    // Unregistered agents: quarantine refuses writes outside scratch space,
    // deny refuses everything; children included.
    let quarantined = find_line(&lines, "governed-child", "/work/open/out");
    assert_eq!((quarantined.num("parent_errno"), quarantined.num("child_errno")), (Some(EPERM), Some(EPERM)));
    event("/work/open/out", "quarantine-default-file-write");
    let denied_agent = find_line(&lines, "governed-child", "/work/open/file");
    assert_eq!((denied_agent.num("parent_errno"), denied_agent.num("child_errno")), (Some(EPERM), Some(EPERM)));
    let e = event("/work/open/file", "unregistered-agents-deny-file-read");
    assert_eq!(e["metadata"]["unregistered_agent"], "true", "{e}");

    assert!(elapsed < Duration::from_secs(180), "the VM suite took {elapsed:?}");
    let _ = std::fs::remove_dir_all(&work);
}
