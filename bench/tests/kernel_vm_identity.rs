//! File rules an adversarial agent cannot walk around, in a real kernel
//! with BPF LSM (Debian's, under QEMU). With a rule denying a governed
//! agent reads and writes under `/home/*/.ssh/`: its direct open, an open
//! through a bind mount it made as an unprivileged user in its own user and
//! mount namespace, an open after chrooting, a hard link, a rename of the
//! file and of its directory (and of the directories above a rule's fully
//! literal path), a mount over the directory, and opens through
//! hard links and moves an ungoverned process made (before and after the
//! policy was loaded) all fail with
//! EPERM, each with a DENY event naming the rule (and, for the namespace
//! ones, the path asked for beside the identity decided). An ungoverned
//! process does all of it unhindered. Then, with the kernel's scratch
//! forced to fail: a governed process is refused (counted, and the event
//! says why), an ungoverned one is let through; and the same when a name
//! or check of an operation cannot be resolved.

use tyr_bench::kernel_vm::{EPERM, TYRD_SHELL, boot, debian_kernel, find_line, prefixed, result_lines, tyrd_image};

use std::time::Duration;

const POLICY: &str = r#"name: vm-identity
default_verdict: allow
rules:
  - name: alert-nothing-much
    action: exec
    paths: ["/work/bin/never-run"]
    verdict: alert
overlays:
  claude-code:
    - name: claude-no-ssh-read
      action: file_read
      paths: ["/home/*/.ssh/*"]
      verdict: deny
    - name: claude-no-ssh-write
      action: file_write
      paths: ["/home/*/.ssh/*"]
      verdict: deny
    - name: claude-no-session-bus
      action: file_write
      paths: ["/run/user/*/bus", "/run/user/*/dgram", "/tmp/.X11-unix/*"]
      verdict: deny
    - name: claude-notes-watched
      action: file_read
      paths: ["/srv/app/notes/*"]
      verdict: alert
    - name: claude-aws-config
      action: file_read
      paths: ["/srv/app/.config/aws/config"]
      verdict: allow
    - name: claude-no-aws-credentials
      action: file_read
      paths: ["/srv/app/.config/aws/credentials"]
      verdict: deny
"#;

/// The operations both the agent and a plain process try (see `probe agent`).
const OPERATIONS: &str = "open:/home/u/.ssh/id_test \
    bind:1000:/home/u/.ssh:/tmp/x:id_test \
    chroot:1000:/home/u:.ssh/id_test \
    overlay:1000:/home/u/.ssh:/tmp/o:id_test \
    bindmv:1000:/home/u:/tmp/h:evil:.ssh/authorized_keys \
    link:/work/decoy:/home/u/.ssh/id_new \
    symlink:/work/decoy:/home/u/.ssh/id_sym \
    fifo:/home/u/.ssh/id_fifo \
    unlink:/home/u/.ssh/spare \
    truncate:/home/u/.ssh/spare2 \
    link:/home/u/.ssh/id_test:/work/newlink \
    rename:/home/u/.ssh/id_test:/work/moved \
    rename:/home/u/.ssh:/work/sshdir \
    mount:/home/u/.ssh \
    open:/work/prelink \
    rename:/srv/app/.config/aws:/work/awsdir \
    rename:/srv/app:/work/appdir \
    uconnect:/run/user/1000/bus \
    usend:/run/user/1000/dgram \
    ptrace:/run/serve.pid \
    uconnect:@/tmp/.X11-unix/X0 \
    deep:/work \
    symlink:/work/open:/home/w/.ssh \
    exchange:/work/xfile:/home/x/.ssh";

fn init_script() -> String {
    format!(
        r#"W=/work
setup_home() {{
  umount /home/u/.ssh 2>/dev/null; rm -rf /home/u /home/w /home/x /work/xfile /work/newlink /work/moved /work/sshdir /work/latelink /work/movedout /work/awsdir /work/appdir /srv/app
  mkdir -p /home/u/.ssh /srv/app/.config/aws /srv/app/notes /tmp/x /tmp/x2 /tmp/h /tmp/o $W/bin $W/open /var/lib/tyr; chmod 1777 /tmp
  mkdir -p /home/w /home/x/.ssh; echo k > /home/x/.ssh/k; echo x > /work/xfile; echo e > /home/u/evil; echo s > /home/u/.ssh/spare; echo s > /home/u/.ssh/spare2; echo d > /work/decoy
  echo k > /home/u/.ssh/id_test; echo a > /srv/app/.config/aws/credentials; echo m > /home/u/.ssh/marker; echo o > $W/open/file
  chown -R 1000:1000 /home/u; chmod 777 /tmp/x /tmp/x2 /tmp/h /tmp/o $W
}}
{TYRD_SHELL}
events() {{ grep '"verdict":"DENY"' $1 | sed 's/^/TYR-VM-EVENT /'; }}

# libbpf's log (the verifier's, when a hook does not load) goes to the console.
TYR_BPF_LOG=1 tyrd probe > /probe.json 2> /probe.log
grep -B6 -E "^processed" /probe.log | tail -n 20 | sed 's/^/TYR-VM-BPFLOG /'
echo "TYR-VM hooks $(tr -d ' \n' < /probe.json | grep -o '"name":"lsm/[a-z_]*","attached":[a-z]*' | sed 's/"name":"lsm\/\([a-z_]*\)","attached":\([a-z]*\)/\1=\2/' | tr '\n' ' ')"

echo "TYR-VM phase name=identity"
setup_home
# A hard link made before the policy is loaded.
mkdir -p /home/v/.ssh; echo p > /home/v/.ssh/pre; ln /home/v/.ssh/pre $W/prelink
cp /bin/probe $W/bin/claude
# A service outside any agent's lineage (a session bus, say), reached by its sockets.
mkdir -p /run/user/1000; probe serve /run/user/1000/bus /run/user/1000/dgram /run/serve.pid @/tmp/.X11-unix/X0 &
start_tyrd /ev1.json /log1.txt
probe agent - {OPERATIONS}
setup_home
# Made by an ungoverned process after the policy is loaded: a hard link to
# a protected file, and a protected file moved out of its directory.
echo o > /home/u/.ssh/other
ln /home/u/.ssh/id_test $W/latelink; mv /home/u/.ssh/other $W/movedout
# The root filesystem mounted a second time: its files are named by identity.
echo s > /home/u/.ssh/second; mkdir -p /mnt/again; mount --bind / /mnt/again
# A file a rule only watches, moved over one a rule protects: both names decide.
echo n > /srv/app/notes/n1; mv /srv/app/notes/n1 /srv/app/.config/aws/credentials
CLAUDECODE=1 $W/bin/claude agent /home/u/.ssh/marker {OPERATIONS} open:$W/latelink open:$W/movedout \
  bind:1000:/srv/app/.config/aws:/tmp/x2:credentials open:/mnt/again/home/u/.ssh/second
sleep 1; stop_tyrd; events /ev1.json; umount /mnt/again

echo "TYR-VM phase name=failsafe"
setup_home
TYRD_FAULT_INJECT=scratch start_tyrd /ev2.json /log2.txt
probe agent - open:$W/open/file
CLAUDECODE=1 $W/bin/claude agent $W/open/file open:$W/open/file
sleep 1; stop_tyrd; grep '"failsafe"' /ev2.json | sed 's/^/TYR-VM-FAILSAFE /'

echo "TYR-VM phase name=incomplete"
setup_home
TYRD_FAULT_INJECT=incomplete start_tyrd /ev3.json /log3.txt
probe agent - rename:$W/open/file:$W/open/plain-moved
CLAUDECODE=1 $W/bin/claude agent /home/u/.ssh/marker rename:$W/open/plain-moved:$W/open/agent-moved
sleep 1; stop_tyrd; grep '"failsafe"' /ev3.json | sed 's/^/TYR-VM-INCOMPLETE /'
"#
    )
}

#[test]
fn file_rules_hold_against_namespaces_links_renames_and_mounts_in_a_kernel_vm() {
    let work = std::env::temp_dir().join(format!("tyr-kernel-vm-identity-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    let image = tyrd_image(&work).expect("image with tyrd and the test program");
    image.add_file("/policy.yaml", POLICY.as_bytes(), 0o644).expect("policy");
    let initrd = work.join("initrd.gz");
    image.pack(&init_script(), &initrd).expect("pack");

    let console = boot(&debian_kernel().expect("kernel"), &initrd, Duration::from_secs(170)).expect("boot");
    let console_file = std::env::temp_dir().join("tyr-kernel-vm-identity-console.txt");
    let _ = std::fs::write(&console_file, &console);
    println!("console: {}", console_file.display());
    assert!(console.contains("TYR-VM-DONE"), "the VM script did not finish:\n{console}");
    let lines = result_lines(&console);
    for log in prefixed(&console, "TYR-VM-LOG ") {
        println!("tyrd: {log}");
    }

    // Every hook that holds governed processes to their file rules attached.
    let hooks = lines.iter().find(|l| l.test == "hooks").expect("hooks line");
    for hook in [
        "file_open",
        "path_link",
        "path_rename",
        "sb_mount",
        "move_mount",
        "userns_create",
        "unix_stream_connect",
        "unix_may_send",
        "ptrace_access_check",
    ] {
        assert_eq!(hooks.fields.get(hook).map(String::as_str), Some("true"), "{hook}: {hooks:?}");
    }

    // An ungoverned process: every operation works.
    for (test, path) in [
        ("plain-open", "/home/u/.ssh/id_test"),
        ("plain-bind", "/tmp/x/id_test"),
        ("plain-chroot", "/.ssh/id_test"),
        ("plain-link", "/home/u/.ssh/id_test"),
        ("plain-open", "/work/prelink"),
    ] {
        let line = find_line(&lines, test, path);
        assert_eq!(line.num("errno"), Some(0), "{line:?}");
        assert!(line.num("setup_errno").is_none_or(|e| e == 0), "{line:?}");
    }

    // The governed agent: refused whatever name or namespace it uses.
    let ready = lines.iter().find(|l| l.test == "agent-ready").expect("agent ready");
    assert_eq!(ready.num("errno"), Some(EPERM), "the stand-in was never classified: {ready:?}");
    assert_eq!(find_line(&lines, "agent-open", "/home/u/.ssh/id_test").num("errno"), Some(EPERM));
    for (test, path) in [("agent-bind", "/tmp/x/id_test"), ("agent-chroot", "/.ssh/id_test")] {
        let line = find_line(&lines, test, path);
        assert_eq!(line.num("setup_errno"), Some(0), "the namespace itself is allowed: {line:?}");
        assert_eq!(line.num("errno"), Some(EPERM), "{line:?}");
    }
    // An overlay (or FUSE) mount would serve the file under a name of its
    // own: governed agents may not make one; a plain process may.
    let overlay = find_line(&lines, "agent-overlay", "/tmp/o/id_test");
    assert_eq!(overlay.num("setup_errno"), Some(EPERM), "{overlay:?}");
    println!("plain overlay: {:?}", find_line(&lines, "plain-overlay", "/tmp/o/id_test"));
    assert_eq!(find_line(&lines, "agent-link", "/home/u/.ssh/id_test").num("errno"), Some(EPERM));
    assert_eq!(find_line(&lines, "agent-rename", "/home/u/.ssh/id_test").num("errno"), Some(EPERM));
    assert_eq!(find_line(&lines, "agent-rename", "/home/u/.ssh").num("errno"), Some(EPERM), "a directory too");
    assert_eq!(find_line(&lines, "agent-mount", "/home/u/.ssh").num("errno"), Some(EPERM));
    // Directories above a rule's fully literal path, however far up, an
    // allow rule before it notwithstanding.
    for dir in ["/srv/app/.config/aws", "/srv/app"] {
        assert_eq!(find_line(&lines, "agent-rename", dir).num("errno"), Some(EPERM), "{dir}");
        assert_eq!(find_line(&lines, "plain-rename", dir).num("errno"), Some(0), "{dir}");
    }
    // A hard link made, or a file moved out, by an ungoverned process after
    // the policy was loaded: the file keeps its protected name.
    assert_eq!(find_line(&lines, "agent-open", "/work/latelink").num("errno"), Some(EPERM));
    assert_eq!(find_line(&lines, "agent-open", "/work/movedout").num("errno"), Some(EPERM));
    // Through a bind mount, a file whose kept name is only watched is still
    // decided on its identity, which a rule protects.
    assert_eq!(find_line(&lines, "agent-bind", "/tmp/x2/credentials").num("errno"), Some(EPERM));
    // Work handed outside the agent's lineage: the service's sockets are
    // decided as writes of their files; its process cannot be attached to.
    for (test, path) in
        [("uconnect", "/run/user/1000/bus"), ("usend", "/run/user/1000/dgram"), ("ptrace", "/run/serve.pid")]
    {
        assert_eq!(find_line(&lines, &format!("plain-{test}"), path).num("errno"), Some(0), "{test}");
        assert_eq!(find_line(&lines, &format!("agent-{test}"), path).num("errno"), Some(EPERM), "{test}");
    }
    // The abstract socket is decided on the path its name mirrors.
    assert_eq!(find_line(&lines, "plain-uconnect", "@/tmp/.X11-unix/X0").num("errno"), Some(0));
    assert_eq!(find_line(&lines, "agent-uconnect", "@/tmp/.X11-unix/X0").num("errno"), Some(EPERM));
    // Names made at, removed from or cut short at a protected path; a move
    // to one through a bind mount in the agent's own namespace (decided on
    // where it really lands).
    for (test, path) in [
        ("bindmv", "/tmp/h/.ssh/authorized_keys"),
        ("link", "/work/decoy"),
        ("symlink", "/home/u/.ssh/id_sym"),
        ("fifo", "/home/u/.ssh/id_fifo"),
        ("unlink", "/home/u/.ssh/spare"),
        ("truncate", "/home/u/.ssh/spare2"),
        // A symlink at a directory's name, and a file exchanged with a
        // protected directory: decided as everything below the name.
        ("symlink", "/home/w/.ssh"),
        ("exchange", "/work/xfile"),
    ] {
        let plain = find_line(&lines, &format!("plain-{test}"), path);
        assert_eq!((plain.num("errno"), plain.num("setup_errno").unwrap_or(0)), (Some(0), 0), "{plain:?}");
        assert_eq!(find_line(&lines, &format!("agent-{test}"), path).num("errno"), Some(EPERM), "{test}");
    }
    // A file whose path is longer than the kernel resolves: no name to
    // decide on, so the governed agent is refused it.
    assert_eq!(find_line(&lines, "plain-deep", "/work").num("errno"), Some(0));
    assert_eq!(find_line(&lines, "agent-deep", "/work").num("errno"), Some(EPERM));
    // Through a second mount of the root filesystem.
    assert_eq!(find_line(&lines, "agent-open", "/mnt/again/home/u/.ssh/second").num("errno"), Some(EPERM));
    // A hard link made before the policy was loaded: found by tyrd's scan.
    assert_eq!(find_line(&lines, "agent-open", "/work/prelink").num("errno"), Some(EPERM));

    // Every refusal is a DENY event naming the rule.
    let events: Vec<serde_json::Value> =
        prefixed(&console, "TYR-VM-EVENT ").map(|l| serde_json::from_str(l).expect("event JSON")).collect();
    let deny = |resource: &str, rule: &str, check: &dyn Fn(&serde_json::Value) -> bool| {
        events
            .iter()
            .find(|e| e["resource"] == resource && e["metadata"]["rule"] == rule && check(e))
            .unwrap_or_else(|| panic!("no DENY of {resource} by {rule}: {events:#?}"))
            .clone()
    };
    let meta = |e: &serde_json::Value, key: &str| e["metadata"][key].as_str().unwrap_or_default().to_owned();
    deny("/home/u/.ssh/id_test", "claude-no-ssh-read", &|e| meta(e, "operation").is_empty());
    // Through the bind mount and the chroot: the resource is the identity
    // decided, the path asked for is kept.
    for asked in ["/tmp/x/id_test", "/.ssh/id_test"] {
        let e = deny("/home/u/.ssh/id_test", "claude-no-ssh-read", &|e| meta(e, "requested_path") == asked);
        assert_eq!(e["agent_type"], "claude-code", "{e}");
        assert_eq!(e["kind"], "FILE_READ", "{e}");
    }
    for (asked, identity) in [
        ("/work/latelink", "/home/u/.ssh/id_test"),
        ("/work/movedout", "/home/u/.ssh/other"),
        ("/work/prelink", "/home/v/.ssh/pre"),
    ] {
        deny(identity, "claude-no-ssh-read", &|e| meta(e, "requested_path") == asked);
    }
    deny("/home/u/.ssh/second", "claude-no-ssh-read", &|e| {
        meta(e, "requested_path") == "/mnt/again/home/u/.ssh/second"
    });
    deny("/srv/app/.config/aws/credentials", "claude-no-aws-credentials", &|e| {
        meta(e, "requested_path") == "/tmp/x2/credentials"
    });
    let moved = deny("/home/u/.ssh/authorized_keys", "claude-no-ssh-read", &|e| meta(e, "operation") == "rename");
    assert_eq!(meta(&moved, "new_path"), "/tmp/h/.ssh/authorized_keys", "{moved}");
    for socket in ["/run/user/1000/bus", "/run/user/1000/dgram", "/tmp/.X11-unix/X0"] {
        let e = deny(socket, "claude-no-session-bus", &|e| meta(e, "operation") == "connect");
        assert_eq!(e["kind"], "FILE_WRITE", "{e}");
    }
    events
        .iter()
        .find(|e| {
            e["metadata"]["rule"] == "agent-ptrace" && e["resource"].as_str().is_some_and(|r| r.starts_with("/proc/"))
        })
        .unwrap_or_else(|| panic!("no DENY for the ptrace attach: {events:#?}"));
    events
        .iter()
        .find(|e| e["metadata"]["failsafe"] == "incomplete" && e["agent_type"] == "claude-code")
        .unwrap_or_else(|| panic!("no DENY for the unnamed open: {events:#?}"));
    let link = deny("/home/u/.ssh/id_test", "claude-no-ssh-read", &|e| meta(e, "operation") == "link");
    assert_eq!(meta(&link, "link_name"), "/work/newlink", "{link}");
    let rename = deny("/home/u/.ssh/id_test", "claude-no-ssh-read", &|e| meta(e, "operation") == "rename");
    assert_eq!(meta(&rename, "new_path"), "/work/moved", "{rename}");
    let dir = deny("/home/u/.ssh", "claude-no-ssh-read", &|e| meta(e, "operation") == "rename");
    assert_eq!(meta(&dir, "scope"), "subtree", "{dir}");
    for dir in ["/srv/app/.config/aws", "/srv/app"] {
        let e = deny(dir, "claude-no-aws-credentials", &|e| meta(e, "operation") == "rename");
        assert_eq!(meta(&e, "scope"), "subtree", "{e}");
    }
    events
        .iter()
        .find(|e| e["metadata"]["rule"] == "agent-stacked-mount" && e["metadata"]["operation"] == "mount")
        .unwrap_or_else(|| panic!("no DENY for the overlay mount: {events:#?}"));
    let mount = deny("/home/u/.ssh", "claude-no-ssh-write", &|e| meta(e, "operation") == "mount");
    assert_eq!(mount["kind"], "FILE_WRITE", "{mount}");

    // Fail closed: the scratch forced to fail refuses the governed process
    // (even an open its policy allows), lets the ungoverned one through,
    // counts the refusal and says why.
    assert_eq!(find_line(&lines, "plain-open", "/work/open/file").num("errno"), Some(0));
    let refused = lines.iter().filter(|l| l.test == "agent-ready").nth(1).expect("second agent");
    assert_eq!(refused.num("errno"), Some(EPERM), "the governed process was not refused: {refused:?}");
    assert_eq!(find_line(&lines, "agent-open", "/work/open/file").num("errno"), Some(EPERM));
    let counters: Vec<&str> = prefixed(&console, "TYR-VM-COUNTERS ").collect();
    let last: serde_json::Value =
        serde_json::from_str(counters.get(1).expect("counters of the failsafe phase")).expect("counters JSON");
    let refused_reads = last["refused"]["FILE_READ"].as_u64().unwrap_or(0);
    assert!(refused_reads >= 2, "refusals not counted: {last}");
    assert!(last["undecided"]["FILE_READ"].as_u64().unwrap_or(0) >= 1, "ungoverned let through, counted: {last}");
    let failsafe = prefixed(&console, "TYR-VM-FAILSAFE ").next().expect("a failsafe event");
    let failsafe: serde_json::Value = serde_json::from_str(failsafe).expect("event JSON");
    assert_eq!(failsafe["verdict"], "DENY", "{failsafe}");
    assert_eq!(meta(&failsafe, "failsafe"), "no_scratch", "{failsafe}");
    assert_eq!(failsafe["agent_type"], "claude-code", "{failsafe}");

    // A name or check that could not be resolved (injected: every check
    // after the first is lost): the governed process is refused the
    // operation its policy allows, counted, and the event says why; the
    // ungoverned one is not.
    assert_eq!(find_line(&lines, "plain-rename", "/work/open/file").num("errno"), Some(0));
    let ready = lines.iter().filter(|l| l.test == "agent-ready").nth(2).expect("third agent");
    assert_eq!(ready.num("errno"), Some(EPERM), "one check, all of it decided: {ready:?}");
    assert_eq!(find_line(&lines, "agent-rename", "/work/open/plain-moved").num("errno"), Some(EPERM));
    let last: serde_json::Value =
        serde_json::from_str(counters.get(2).expect("counters of the incomplete phase")).expect("counters JSON");
    assert!(last["kernel"]["incomplete"].as_u64().unwrap_or(0) >= 1, "incomplete not counted: {last}");
    let incomplete = prefixed(&console, "TYR-VM-INCOMPLETE ").next().expect("an incomplete event");
    let incomplete: serde_json::Value = serde_json::from_str(incomplete).expect("event JSON");
    assert_eq!((meta(&incomplete, "failsafe"), meta(&incomplete, "operation")), ("incomplete".into(), "rename".into()));
    assert_eq!(incomplete["verdict"], "DENY", "{incomplete}");

    let _ = std::fs::remove_dir_all(&work);
}
