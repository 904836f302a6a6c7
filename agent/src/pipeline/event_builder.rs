//! Turns decoded records into `Event`s: wall-clock time, a UUIDv7 id, the
//! acting process's exe, command line and lineage from the process cache,
//! and per-kind metadata (flags, addresses, SNI and LLM provider).
//!
//! The per-host sequence number is not stamped here: events are filtered
//! after this stage, and the sink numbers what actually leaves the host, so
//! the numbers the server sees are contiguous.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::path::{Component, Path, PathBuf};

use tyr_common::providers::provider_for_server_name;
use tyr_proto::{Event, EventKind, Severity, Verdict};
use uuid::{NoContext, Timestamp, Uuid};

use super::clock::BootClock;
use super::file_event::{self, FileRecord};
use super::open_flags::open_flags_text;
use super::process_cache::{ProcessCache, ProcessInfo};
use crate::capture::client_hello;
use crate::capture::record::{self, DecodeError, FLAG_DIRECTORY, FLAG_OWNER_UNKNOWN, Header, KernelDecision, Record};
use crate::detect::tracker::{AgentLabel, AgentTracker, UNREGISTERED_AGENT};
use crate::enforce::PolicyVersions;
use crate::redact;
use tyr_common::policy::compile::UNREGISTERED;
use tyr_common::policy::model::{Request, Severity as PolicySeverity, Verdict as PolicyVerdict};

/// Builds events from raw records, keeping the process cache current.
#[derive(Debug)]
pub struct EventBuilder {
    cache: ProcessCache,
    clock: BootClock,
    agents: AgentTracker,
    /// Rule names of the policies the kernel decided under.
    policies: PolicyVersions,
    /// TLS records whose ClientHello could not be parsed (still emitted).
    pub tls_unparsed: u64,
}

impl EventBuilder {
    /// A builder enriching from `cache`, timing with `clock` and labelling agents through `agents`.
    pub fn new(cache: ProcessCache, clock: BootClock, agents: AgentTracker) -> Self {
        Self { cache, clock, agents, policies: PolicyVersions::default(), tls_unparsed: 0 }
    }

    /// A builder with a cache of `capacity` and an agent tracker attached to
    /// nothing (benchmarks, replays).
    pub fn in_memory(capacity: NonZeroUsize) -> Self {
        Self::new(ProcessCache::new(capacity), BootClock::now(), AgentTracker::detached())
    }

    /// Resolve kernel policy decisions' rule names through `policies`.
    pub fn with_policies(mut self, policies: PolicyVersions) -> Self {
        self.policies = policies;
        self
    }

    /// The agent tracker (discovered agents, counters).
    pub fn agents(&self) -> &AgentTracker {
        &self.agents
    }

    /// The agent tracker, to change (operators' overrides).
    pub fn agents_mut(&mut self) -> &mut AgentTracker {
        &mut self.agents
    }

    /// The process cache (for listing and statistics).
    pub fn cache(&self) -> &ProcessCache {
        &self.cache
    }

    /// Decodes one raw record and builds its event.
    pub fn build(&mut self, raw: &[u8]) -> Result<Event, DecodeError> {
        let record = record::decode(raw)?;
        Ok(self.event(&record))
    }

    /// Builds the event for a decoded record.
    pub fn event(&mut self, record: &Record<'_>) -> Event {
        let header = *record.header();
        // Kernel agent entries are written only for processes as old as this record.
        self.agents.at(header.boot_ns);
        let mut metadata = BTreeMap::new();
        metadata.insert("uid".to_owned(), header.uid.to_string());
        metadata.insert("comm".to_owned(), header.comm().into_owned());
        if header.truncated() {
            metadata.insert("truncated".to_owned(), "true".to_owned());
        }
        let mut exit_label = None;
        let mut decision = None;
        let (kind, resource, process) = match record {
            Record::Exec { exe, result, decision: kernel, failsafe, .. } if *result != 0 => {
                // Refused by policy: the process keeps its image.
                decision = Some(*kernel);
                metadata.insert("error".to_owned(), errno_text(-result));
                if let Some(reason) = file_event::failsafe_text(*failsafe) {
                    metadata.insert(file_event::FAILSAFE_KEY.to_owned(), reason.to_owned());
                }
                (EventKind::Exec, String::from_utf8_lossy(exe).into_owned(), self.cache.get(header.pid))
            }
            Record::Exec { exe, argv, decision: kernel, .. } => {
                decision = kernel.decided().then_some(*kernel);
                let exe = String::from_utf8_lossy(exe);
                // Credentials out before argv is kept anywhere (event, fingerprint, registry).
                let argv = &redact::argv(argv, header.truncated());
                let info = self.cache.on_exec(header.pid, header.ppid, &exe, argv);
                if let Some(sha) = self.agents.on_exec(header.pid, header.ppid, &exe, argv, header.agent) {
                    metadata.insert("exe_sha256".to_owned(), sha);
                }
                metadata
                    .insert("argc".to_owned(), argv.split(|&b| b == 0).filter(|a| !a.is_empty()).count().to_string());
                (EventKind::Exec, exe.into_owned(), info)
            }
            Record::Fork { child_pid, .. } => {
                self.cache.on_fork(header.pid, *child_pid);
                self.agents.on_fork(header.pid, *child_pid, header.agent);
                metadata.insert("child_pid".to_owned(), child_pid.to_string());
                (EventKind::Fork, child_pid.to_string(), self.cache.get(header.pid))
            }
            Record::Exit { exit_code, .. } => {
                let info = self.cache.on_exit(header.pid);
                // Labelled before the tracker forgets the process.
                exit_label = Some(self.agents.label(header.pid, header.agent));
                self.agents.on_exit(header.pid);
                metadata.insert("exit_code".to_owned(), ((exit_code >> 8) & 0xff).to_string());
                if exit_code & 0x7f != 0 {
                    metadata.insert("signal".to_owned(), (exit_code & 0x7f).to_string());
                }
                (EventKind::Exit, info.exe.to_string(), info)
            }
            Record::File {
                result,
                open_flags,
                path,
                name,
                source,
                op,
                identity,
                decided_on_identity,
                failsafe,
                decision: kernel,
                ..
            } => {
                decision = kernel.decided().then_some(*kernel);
                let kind =
                    if header.kind == EventKind::FileWrite as u16 { EventKind::FileWrite } else { EventKind::FileRead };
                let opened = *op == 0;
                if opened {
                    metadata.insert("flags".to_owned(), open_flags_text(*open_flags));
                }
                metadata.insert("source".to_owned(), if *source == 1 { "lsm" } else { "syscall" }.to_owned());
                let asked = if *result >= 0 {
                    if opened {
                        metadata.insert("fd".to_owned(), result.to_string());
                    }
                    String::from_utf8_lossy(path).into_owned()
                } else {
                    metadata.insert("error".to_owned(), errno_text(-result));
                    if opened { join_lexically(path, name) } else { String::from_utf8_lossy(path).into_owned() }
                };
                let record = FileRecord {
                    op: *op,
                    path: asked,
                    name,
                    identity,
                    decided_on_identity: *decided_on_identity,
                    failsafe: *failsafe,
                    directory: header.flags & FLAG_DIRECTORY != 0,
                };
                let resource = file_event::resource(record, &mut metadata);
                self.agents.on_file(header.pid, &resource, kind == EventKind::FileWrite);
                (kind, resource, self.cache.get(header.pid))
            }
            Record::Connect { remote, port, sock_type, decision: kernel, .. } => {
                decision = kernel.decided().then_some(*kernel);
                metadata.insert("remote_ip".to_owned(), remote.to_string());
                metadata.insert("remote_port".to_owned(), port.to_string());
                metadata.insert("protocol".to_owned(), socket_protocol(*sock_type).to_owned());
                (EventKind::NetConnect, socket_address(*remote, *port), self.cache.get(header.pid))
            }
            Record::Tls { remote, remote_port, hello, .. } => {
                let resource = self.tls_resource(&header, *remote, *remote_port, hello, &mut metadata);
                let process = if header.flags & FLAG_OWNER_UNKNOWN != 0 {
                    metadata.insert("owner".to_owned(), "unknown".to_owned());
                    None
                } else {
                    Some(self.cache.get(header.pid))
                };
                (EventKind::Tls, resource, process.unwrap_or_default())
            }
        };
        let label = match exit_label {
            Some(label) => label,
            None if header.flags & FLAG_OWNER_UNKNOWN != 0 => self.agents.label(0, 0),
            None => self.agents.label(header.pid, header.agent),
        };
        // Decided from the tracker's label, not read back from the rendered event.
        let unregistered = label.metadata.iter().any(|(key, value)| *key == UNREGISTERED_AGENT && &**value == "true");
        let mut event = self.assemble(&header, kind, resource, &process, metadata, &label);
        if event.metadata.contains_key("fingerprint_mismatch") {
            event.severity = Severity::High as i32;
        }
        match decision {
            Some(decision) => self.apply_decision(&mut event, &decision),
            None => self.report_unenforced(&mut event, kind, unregistered),
        }
        event
    }

    /// Records the kernel's policy decision on an event: verdict, policy
    /// version, rule name and severity.
    fn apply_decision(&self, event: &mut Event, decision: &KernelDecision) {
        let (version, rule) = (i64::try_from(decision.policy_version).unwrap_or(i64::MAX), decision.rule);
        event.verdict = i32::try_from(decision.verdict).unwrap_or(0);
        event.policy_version = version;
        // Refusals that are not rule decisions name why instead of a rule.
        let not_a_rule =
            match (event.metadata.get(file_event::FAILSAFE_KEY), event.metadata.get(file_event::OPERATION_KEY)) {
                (Some(reason), _) if reason == file_event::STACKED_MOUNT => Some(file_event::STACKED_MOUNT_RULE),
                (Some(_), _) => Some(file_event::FAILSAFE_RULE),
                (None, Some(operation)) if operation == "userns_create" => Some(file_event::USERNS_RULE),
                (None, Some(operation)) if operation == file_event::PTRACE_OPERATION => Some(file_event::PTRACE_RULE),
                _ => None,
            };
        if let Some(name) = not_a_rule {
            event.metadata.insert("rule".to_owned(), name.to_owned());
        } else {
            match self.policies.rule(version, rule) {
                Some(info) => {
                    event.metadata.insert("rule".to_owned(), info.name);
                    event.severity = severity_of(info.severity) as i32;
                }
                None if rule == 0 => {
                    event.metadata.insert("rule".to_owned(), "default".to_owned());
                }
                None => {
                    event.metadata.insert("rule".to_owned(), format!("#{rule}"));
                }
            }
        }
        if event.verdict == Verdict::Deny as i32 {
            // Refused in the kernel: EPERM (files, execs), ECONNREFUSED (connects).
            event.metadata.insert("enforced".to_owned(), "true".to_owned());
        }
    }

    /// Rules the kernel did not decide — file and exec rules where BPF LSM
    /// is missing, TLS rules always (the server name is only known once the
    /// ClientHello is parsed here): evaluate them here and say what the
    /// policy wanted and that it was not enforced, so an allowed operation
    /// is never mistaken for a policy decision.
    fn report_unenforced(&self, event: &mut Event, kind: EventKind, unregistered: bool) {
        let request = match kind {
            EventKind::Exec => Request::Exec { path: &event.resource },
            EventKind::FileRead | EventKind::FileWrite => {
                Request::File { write: kind == EventKind::FileWrite, path: &event.resource }
            }
            EventKind::Tls => match (
                event.metadata.get("sni"),
                event.metadata.get("remote_ip").and_then(|a| a.parse().ok()),
                event.metadata.get("remote_port").and_then(|p| p.parse().ok()),
            ) {
                (Some(server_name), Some(addr), Some(port)) => Request::Tls { server_name, addr, port },
                _ => return,
            },
            _ => return,
        };
        let Some((version, policy)) = self.policies.in_force() else { return };
        // Unregistered agents are governed by their own overlay.
        let agent_type = if unregistered { UNREGISTERED } else { event.agent_type.as_str() };
        let decision = policy.decide(agent_type, &request);
        let Some(rule) = decision.rule else { return };
        if decision.verdict == PolicyVerdict::Allow {
            return;
        }
        let (name, verdict, severity) = (rule.name.clone(), decision.verdict, rule.severity);
        event.policy_version = version;
        event.metadata.insert("rule".to_owned(), name);
        event.metadata.insert("policy_verdict".to_owned(), verdict.as_str().to_ascii_uppercase());
        event.metadata.insert("enforced".to_owned(), "false".to_owned());
        event.severity = severity_of(severity) as i32;
    }

    /// The resource of a TLS event (its server name, or the address when
    /// there is none) and its metadata: addresses, SNI, provider, ALPN, and
    /// a fingerprint mismatch when the SNI contradicts the process's agent.
    fn tls_resource(
        &mut self,
        header: &Header,
        remote: IpAddr,
        port: u16,
        hello: &[u8],
        metadata: &mut BTreeMap<String, String>,
    ) -> String {
        metadata.insert("remote_ip".to_owned(), remote.to_string());
        metadata.insert("remote_port".to_owned(), port.to_string());
        let parsed = match client_hello::parse(hello) {
            Ok(parsed) => parsed,
            Err(error) => {
                self.tls_unparsed += 1;
                metadata.insert("sni_error".to_owned(), error.to_string());
                return socket_address(remote, port);
            }
        };
        if !parsed.alpn.is_empty() {
            metadata.insert("alpn".to_owned(), parsed.alpn.join(","));
        }
        let Some(sni) = parsed.server_name else { return socket_address(remote, port) };
        if let Some(provider) = provider_for_server_name(&sni) {
            metadata.insert("provider".to_owned(), provider.to_owned());
        }
        if header.flags & FLAG_OWNER_UNKNOWN == 0
            && let Some(reason) = self.agents.on_tls(header.pid, &sni)
        {
            metadata.insert("fingerprint_mismatch".to_owned(), reason);
        }
        metadata.insert("sni".to_owned(), sni.clone());
        sni
    }

    fn assemble(
        &mut self,
        header: &Header,
        kind: EventKind,
        resource: String,
        process: &ProcessInfo,
        mut metadata: BTreeMap<String, String>,
        label: &AgentLabel,
    ) -> Event {
        for (key, value) in &label.metadata {
            metadata.insert((*key).to_owned(), value.to_string());
        }
        let timestamp_ns = self.clock.to_unix_ns(header.boot_ns);
        let seconds = u64::try_from(timestamp_ns.div_euclid(1_000_000_000)).unwrap_or(0);
        let nanos = u32::try_from(timestamp_ns.rem_euclid(1_000_000_000)).unwrap_or(0);
        Event {
            event_id: Uuid::new_v7(Timestamp::from_unix(NoContext, seconds, nanos)).to_string(),
            agent_id: String::new(),
            discovered_agent_id: label.discovered_agent_id.clone(),
            kind: kind as i32,
            resource,
            verdict: Verdict::Allow as i32,
            severity: Severity::Info as i32,
            pid: i64::from(header.pid),
            process_exe: process.exe.to_string(),
            cmdline: process.cmdline.to_string(),
            timestamp_ns,
            metadata: with_lineage(metadata, process),
            // Stamped by the sink, after filtering.
            seq: 0,
            ppid: i64::from(if header.ppid != 0 { header.ppid } else { process.ppid }),
            agent_type: label.agent_type.to_owned(),
            policy_version: 0,
        }
    }
}

fn severity_of(severity: PolicySeverity) -> Severity {
    match severity {
        PolicySeverity::Info => Severity::Info,
        PolicySeverity::Low => Severity::Low,
        PolicySeverity::Medium => Severity::Medium,
        PolicySeverity::High => Severity::High,
        PolicySeverity::Critical => Severity::Critical,
    }
}

fn with_lineage(mut metadata: BTreeMap<String, String>, process: &ProcessInfo) -> BTreeMap<String, String> {
    if !process.lineage.is_empty() {
        metadata.insert("lineage".to_owned(), process.lineage.to_string());
    }
    metadata
}

fn socket_address(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

fn socket_protocol(sock_type: u16) -> &'static str {
    match sock_type {
        1 => "tcp",
        2 => "udp",
        _ => "other",
    }
}

/// `dir` joined with `name` (or `name` alone when absolute), with `.` and
/// `..` resolved lexically: the best that can be said of a path that failed
/// to open, since nothing on disk resolves it.
fn join_lexically(dir: &[u8], name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    let mut joined = if name.starts_with('/') || dir.is_empty() {
        PathBuf::from(name.as_ref())
    } else {
        Path::new(String::from_utf8_lossy(dir).as_ref()).join(name.as_ref())
    };
    let mut clean = PathBuf::new();
    for component in joined.components() {
        match component {
            Component::ParentDir => {
                clean.pop();
            }
            Component::CurDir => {}
            other => clean.push(other),
        }
    }
    if clean.as_os_str().is_empty() {
        joined = PathBuf::from(".");
    } else {
        joined = clean;
    }
    joined.to_string_lossy().into_owned()
}

fn errno_text(errno: i32) -> String {
    let name = match errno {
        1 => "EPERM",
        2 => "ENOENT",
        13 => "EACCES",
        17 => "EEXIST",
        20 => "ENOTDIR",
        21 => "EISDIR",
        24 => "EMFILE",
        30 => "EROFS",
        36 => "ENAMETOOLONG",
        40 => "ELOOP",
        _ => return errno.to_string(),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::record::encode;

    fn builder() -> EventBuilder {
        EventBuilder::new(
            ProcessCache::with_proc_root(NonZeroUsize::new(64).expect("nonzero"), PathBuf::from("/nonexistent")),
            BootClock::with_offset(1_700_000_000_000_000_000),
            AgentTracker::detached(),
        )
    }

    #[test]
    fn exec_then_open_is_enriched() {
        let mut b = builder();
        let exec = b.build(&encode::exec(50, 1, "cat", "/usr/bin/cat", &["cat", "/etc/hosts"])).expect("exec");
        assert_eq!(exec.kind, EventKind::Exec as i32);
        assert_eq!(exec.resource, "/usr/bin/cat");
        assert_eq!(exec.cmdline, "cat /etc/hosts");
        assert_eq!(exec.seq, 0, "numbered by the sink, after filtering");
        assert_eq!(exec.timestamp_ns, 1_700_000_001_000_000_000);
        let open = b.build(&encode::file_open(50, "cat", "/etc/hosts", false)).expect("open");
        assert_eq!(open.kind, EventKind::FileRead as i32);
        assert_eq!(open.process_exe, "/usr/bin/cat");
        assert_eq!(open.cmdline, "cat /etc/hosts");
        assert_eq!(open.metadata["flags"], "O_RDONLY|O_CLOEXEC");
        let id = Uuid::parse_str(&open.event_id).expect("uuid");
        assert_eq!(id.get_version_num(), 7);
        let exit = b.build(&encode::exit(50, "cat", 3 << 8)).expect("exit");
        assert_eq!(exit.kind, EventKind::Exit as i32);
        assert_eq!(exit.metadata["exit_code"], "3");
        assert_eq!(exit.resource, "/usr/bin/cat");
    }

    #[test]
    fn exec_arguments_lose_their_credentials() {
        let mut b = builder();
        let argv = ["codex", "--openai-api-key", "sk-proj-0123456789abcdefghij", "--verbose"];
        let exec = b.build(&encode::exec(51, 1, "codex", "/usr/bin/codex", &argv)).expect("exec");
        assert_eq!(exec.cmdline, "codex --openai-api-key [REDACTED] --verbose");
        assert_eq!(exec.metadata["argc"], "4");
    }

    #[test]
    fn connect_metadata() {
        let mut b = builder();
        let event = b.build(&encode::connect(9, "curl", [127, 0, 0, 7], 8443)).expect("connect");
        assert_eq!(event.resource, "127.0.0.7:8443");
        assert_eq!(event.metadata["remote_port"], "8443");
        assert_eq!(event.metadata["protocol"], "tcp");
    }

    #[test]
    fn failed_paths_join_lexically() {
        assert_eq!(join_lexically(b"/home/u/src", b"../x/./y"), "/home/u/x/y");
        assert_eq!(join_lexically(b"/home/u", b"/etc/passwd"), "/etc/passwd");
        assert_eq!(join_lexically(b"", b"rel"), "rel");
        assert_eq!(open_flags_text(0o101 | 0o1000), "O_WRONLY|O_CREAT|O_TRUNC");
        assert_eq!(errno_text(2), "ENOENT");
        assert_eq!(errno_text(99), "99");
    }
}
