//! Kernel capture: loads tyr's eBPF objects, shares their maps, attaches
//! every hook this kernel allows, and records what loaded and what did not
//! (the capability report). One object per hook family, so that a hook the
//! kernel refuses (BPF LSM on many hosts) costs only itself and its
//! fallback takes over, visibly.

pub mod client_hello;
mod file_hooks;
mod health;
pub mod mounts;
pub mod record;

use std::fs::File;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, MapHandle, OpenMapMut, OpenObject};
use serde::Serialize;

use crate::bpf::{connect, file_lsm, file_syscalls, process, records, tls_egress};
use crate::host::HostFacts;
use crate::kinds::{KIND_COUNT, KindSet};
use file_hooks::load_file_hooks;
pub use health::KernelHealth;
use health::{Fault, HEALTH_COUNT, fault_injected, fault_injection};
use mounts::{MountTable, MountTableStats, own_mount_namespace};
use tyr_proto::EventKind as Kind;

/// The BPF LSM hooks that decide file opens and execs.
pub const FILE_OPEN_LSM: &str = "lsm/file_open";
pub const EXEC_LSM: &str = "lsm/bprm_check_security";
/// Where an exec begins: clears what a failed exec left for the exec record.
pub const EXEC_BEGIN_LSM: &str = "lsm/bprm_creds_for_exec";
/// Hooks holding governed processes to their file rules when they link,
/// rename or mount (and, on request, create user namespaces).
pub const LINK_LSM: &str = "lsm/path_link";
pub const RENAME_LSM: &str = "lsm/path_rename";
pub const MOUNT_LSM: &str = "lsm/sb_mount";
pub const MOVE_MOUNT_LSM: &str = "lsm/move_mount";
pub const USERNS_LSM: &str = "lsm/userns_create";
/// Connecting or sending to a unix socket, decided as a write of its file.
pub const UNIX_CONNECT_LSM: &str = "lsm/unix_stream_connect";
pub const UNIX_SEND_LSM: &str = "lsm/unix_may_send";
/// Reaching into another process (ptrace, pidfd_getfd, process_vm_writev).
pub const PTRACE_LSM: &str = "lsm/ptrace_access_check";
/// Names made, removed or cut short by path.
pub const SYMLINK_LSM: &str = "lsm/path_symlink";
pub const MKNOD_LSM: &str = "lsm/path_mknod";
pub const UNLINK_LSM: &str = "lsm/path_unlink";
pub const TRUNCATE_LSM: &str = "lsm/path_truncate";
/// Every hook holding governed processes to their policy beyond opens and execs.
pub const GOVERNING_LSM: [&str; 12] = [
    LINK_LSM,
    RENAME_LSM,
    MOUNT_LSM,
    MOVE_MOUNT_LSM,
    USERNS_LSM,
    UNIX_CONNECT_LSM,
    UNIX_SEND_LSM,
    PTRACE_LSM,
    SYMLINK_LSM,
    MKNOD_LSM,
    UNLINK_LSM,
    TRUNCATE_LSM,
];

/// What serves execs when `lsm/bprm_check_security` cannot: the exec
/// tracepoint sees every exec after the fact, and exec rules are decided
/// from it in userspace (reported, not enforced).
pub const EXEC_FALLBACK: &str = "tp/sched/sched_process_exec (exec rules decided in userspace, not enforced)";
/// Hook serving file opens when `lsm/file_open` cannot.
pub const FILE_FALLBACK: &str = "tp/syscalls/sys_{enter,exit}_{openat,openat2,open,creat}";

/// Set to any value to see libbpf's log (verifier output) on stderr.
pub const BPF_LOG_ENV: &str = "TYR_BPF_LOG";

/// What to capture.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// Event kinds traced in the kernel.
    pub kinds: KindSet,
    /// Only processes with one of these comms (empty: all).
    pub comms: Vec<String>,
    /// Only these thread-group ids (empty: all).
    pub pids: Vec<u32>,
    /// Bytes of the ring buffer (a power of two, at least one page).
    pub ring_bytes: u32,
    /// Enforce policy: load the enforcing hooks (connect, BPF LSM) even when
    /// their events are not wanted, and let the hooks whose records policy is
    /// decided from in userspace (TLS; file opens without BPF LSM) see
    /// every process, whatever the filters.
    pub enforce: bool,
    /// Keep governed agents out of new user namespaces (`lsm/userns_create`).
    pub agent_userns_deny: bool,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            kinds: KindSet::all(),
            comms: Vec::new(),
            pids: Vec::new(),
            ring_bytes: 32 << 20,
            enforce: false,
            agent_userns_deny: false,
        }
    }
}

/// Whether governed agents may create user namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AgentUserns {
    #[default]
    Allow,
    Deny,
}

/// Sets [`AgentUserns`] for `tyrd observe` and `tyrd run`.
pub const AGENT_USERNS_ENV: &str = "TYR_AGENT_USERNS";

impl AgentUserns {
    /// The setting [`AGENT_USERNS_ENV`] asks for (allow when unset or unknown).
    pub fn from_env() -> Self {
        match std::env::var(AGENT_USERNS_ENV).as_deref() {
            Ok("deny") => Self::Deny,
            _ => Self::Allow,
        }
    }
}

/// Test-only fault injection, from this variable: `scratch` makes every
/// kernel scratch claim of a policy decision fail (`enum tyr_fault`);
/// `connect-attach` makes attaching `cgroup/connect4` fail. Never set in
/// production.
pub const FAULT_INJECT_ENV: &str = "TYRD_FAULT_INJECT";

/// Why capture could not start.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("loading {object}: {source}")]
    Load { object: &'static str, source: libbpf_rs::Error },
    #[error("attaching {hook}: {source}")]
    Attach { hook: String, source: libbpf_rs::Error },
    #[error("ring size {0} is not a power of two of at least 4096 bytes")]
    RingSize(u32),
    #[error("comm filter {0:?} is longer than 15 bytes")]
    CommTooLong(String),
    #[error("no cgroup2 hierarchy is mounted: connect and TLS capture need one")]
    NoCgroup2,
    #[error("opening cgroup2 root {path}: {source}")]
    Cgroup { path: String, source: std::io::Error },
    #[error("writing the {map} map: {source}")]
    Map { map: &'static str, source: libbpf_rs::Error },
}

/// One hook: did it attach, and if not, why and what serves instead.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HookStatus {
    /// Attach point, e.g. `lsm/file_open`.
    pub name: String,
    pub attached: bool,
    /// Why it is not attached (empty when attached).
    pub error: String,
    /// Hook serving instead (empty when none).
    pub fallback: String,
}

/// What this kernel let tyrd do: the content of CapabilityReport.
#[derive(Debug, Clone, Serialize)]
pub struct Capabilities {
    pub kernel_version: String,
    pub arch: String,
    pub agent_version: String,
    pub host: HostFacts,
    pub hooks: Vec<HookStatus>,
    /// lsm/* programs load and attach.
    pub bpf_lsm: bool,
    /// ClientHello capture at the socket layer is attached.
    pub tls_capture: bool,
    /// The hook serving file opens.
    pub file_open_source: String,
    /// Deny rules that this kernel can enforce, per operation.
    pub enforce_file: bool,
    pub enforce_exec: bool,
    pub enforce_net: bool,
}

impl Capabilities {
    /// The wire form.
    pub fn to_proto(&self) -> tyr_proto::CapabilityReport {
        tyr_proto::CapabilityReport {
            kernel_version: self.kernel_version.clone(),
            arch: self.arch.clone(),
            agent_version: self.agent_version.clone(),
            hooks: self
                .hooks
                .iter()
                .map(|h| tyr_proto::HookStatus {
                    name: h.name.clone(),
                    attached: h.attached,
                    error: h.error.clone(),
                    fallback: h.fallback.clone(),
                })
                .collect(),
            bpf_lsm: self.bpf_lsm,
            tls_capture: self.tls_capture,
            enforce_file: self.enforce_file,
            enforce_exec: self.enforce_exec,
            enforce_net: self.enforce_net,
        }
    }
}

/// Handles on the kernel's policy maps (see `enforce`).
#[derive(Debug)]
pub struct PolicyMaps {
    /// The one-word switch: 0 none, 1 slot 0, 2 slot 1.
    pub active: MapHandle,
    /// Per-slot version and default verdict.
    pub slots: MapHandle,
    /// Connect rules, when the connect hooks loaded.
    pub net: Option<NetPolicyMaps>,
    /// File and exec rules, when the BPF LSM hooks loaded.
    pub path: Option<PathPolicyMaps>,
    /// Protected names kept on inodes (`tyr_inode_ids`), when the BPF LSM
    /// hooks loaded: filled for links made before the policy.
    pub inode_ids: Option<MapHandle>,
}

/// Per slot: IPv4 and IPv6 prefix tries, candidate lists.
#[derive(Debug)]
pub struct NetPolicyMaps {
    pub v4: [MapHandle; 2],
    pub v6: [MapHandle; 2],
    pub lists: [MapHandle; 2],
}

/// Per slot: the path trie, candidate lists, glob automata.
#[derive(Debug)]
pub struct PathPolicyMaps {
    pub tries: [MapHandle; 2],
    pub lists: [MapHandle; 2],
    pub globs: [MapHandle; 2],
}

/// Handles on the maps every object shares (created by the process object).
#[derive(Debug)]
pub(crate) struct SharedMaps {
    events: MapHandle,
    lost: MapHandle,
    config: MapHandle,
    comms: MapHandle,
    pids: MapHandle,
    sock_owners: MapHandle,
    scratch: MapHandle,
    agents: MapHandle,
    policy_active: MapHandle,
    policy_slots: MapHandle,
    exec_decisions: MapHandle,
    undecided: MapHandle,
    refused: MapHandle,
    health: MapHandle,
    task_agents: MapHandle,
    task_scratch: MapHandle,
    mounts: MapHandle,
    canonical_mounts: MapHandle,
}

fn reuse(map: &mut OpenMapMut<'_>, handle: &MapHandle) -> libbpf_rs::Result<()> {
    map.reuse_fd(handle.as_fd())
}

/// Points an object's copies of the shared maps at the process object's.
macro_rules! share_maps {
    ($open:expr, $shared:expr) => {{
        let maps = &mut $open.maps;
        reuse(&mut maps.tyr_events, &$shared.events)
            .and_then(|()| reuse(&mut maps.tyr_lost, &$shared.lost))
            .and_then(|()| reuse(&mut maps.tyr_config_map, &$shared.config))
            .and_then(|()| reuse(&mut maps.tyr_filter_comms, &$shared.comms))
            .and_then(|()| reuse(&mut maps.tyr_filter_pids, &$shared.pids))
            .and_then(|()| reuse(&mut maps.tyr_sock_owners, &$shared.sock_owners))
            .and_then(|()| reuse(&mut maps.tyr_scratch_map, &$shared.scratch))
            .and_then(|()| reuse(&mut maps.tyr_agents, &$shared.agents))
            .and_then(|()| reuse(&mut maps.tyr_policy_active, &$shared.policy_active))
            .and_then(|()| reuse(&mut maps.tyr_policy_slots, &$shared.policy_slots))
            .and_then(|()| reuse(&mut maps.tyr_exec_decisions, &$shared.exec_decisions))
            .and_then(|()| reuse(&mut maps.tyr_undecided, &$shared.undecided))
            .and_then(|()| reuse(&mut maps.tyr_refused, &$shared.refused))
            .and_then(|()| reuse(&mut maps.tyr_health, &$shared.health))
            .and_then(|()| reuse(&mut maps.tyr_task_agents, &$shared.task_agents))
            .and_then(|()| reuse(&mut maps.tyr_task_scratch, &$shared.task_scratch))
            .and_then(|()| reuse(&mut maps.tyr_mounts, &$shared.mounts))
            .and_then(|()| reuse(&mut maps.tyr_canonical_mounts, &$shared.canonical_mounts))
    }};
}

/// Storage for an object that lives as long as tyrd's capture. Leaked on
/// purpose: a skeleton borrows it for 'static, and tyrd starts capture once
/// per process (the storage is one pointer).
fn object_storage() -> &'static mut MaybeUninit<OpenObject> {
    Box::leak(Box::new(MaybeUninit::uninit()))
}

/// Loaded objects and their attachments. Dropping it detaches everything.
pub struct Capture {
    // Links first: they drop (detach) before the objects they belong to.
    links: Vec<Link>,
    _process: process::ProcessSkel<'static>,
    _file_lsm: Option<file_lsm::FileLsmSkel<'static>>,
    _file_syscalls: Option<file_syscalls::FileSyscallsSkel<'static>>,
    _connect: Option<connect::ConnectSkel<'static>>,
    _tls: Option<tls_egress::TlsEgressSkel<'static>>,
    mount_table: Option<MountTable>,
    shared: SharedMaps,
    capabilities: Capabilities,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("links", &self.links.len())
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

/// Collects hook statuses and links while attaching.
#[derive(Default)]
pub(crate) struct Attacher {
    links: Vec<Link>,
    hooks: Vec<HookStatus>,
}

impl Attacher {
    /// Attaches one program; a failure is recorded, not fatal.
    pub(crate) fn attach(&mut self, hook: &str, result: libbpf_rs::Result<Link>) -> bool {
        match result {
            Ok(link) => {
                self.links.push(link);
                self.record(hook, None, "");
                true
            }
            Err(error) => {
                self.record(hook, Some(error.to_string()), "");
                false
            }
        }
    }

    /// Records a hook's outcome; `error` None means attached.
    pub(crate) fn record(&mut self, hook: &str, error: Option<String>, fallback: &str) {
        self.hooks.push(HookStatus {
            name: hook.to_owned(),
            attached: error.is_none(),
            error: error.unwrap_or_default(),
            fallback: fallback.to_owned(),
        });
    }

    fn attached(&self, hook: &str) -> bool {
        self.hooks.iter().any(|h| h.name == hook && h.attached)
    }
}

impl Capture {
    /// Loads and attaches everything `config` asks for that this kernel allows.
    pub fn start(config: &CaptureConfig) -> Result<Self, CaptureError> {
        if !config.ring_bytes.is_power_of_two() || config.ring_bytes < 4096 {
            return Err(CaptureError::RingSize(config.ring_bytes));
        }
        // libbpf's own log (verifier output and the like) explains failures
        // the capability report already records; show it only on request.
        if std::env::var_os(BPF_LOG_ENV).is_none() {
            libbpf_rs::set_print(None);
        }
        crate::host::ensure_kernel_filesystems();
        let host = HostFacts::read();
        let mut attacher = Attacher::default();

        // The process object owns the shared maps; lifecycle is always on.
        let mut open = process::ProcessSkelBuilder::default()
            .open(object_storage())
            .map_err(|source| CaptureError::Load { object: "process", source })?;
        open.maps
            .tyr_events
            .set_max_entries(config.ring_bytes)
            .map_err(|source| CaptureError::Load { object: "process", source })?;
        let process = open.load().map_err(|source| CaptureError::Load { object: "process", source })?;
        let shared = SharedMaps {
            events: handle(&process.maps.tyr_events)?,
            lost: handle(&process.maps.tyr_lost)?,
            config: handle(&process.maps.tyr_config_map)?,
            comms: handle(&process.maps.tyr_filter_comms)?,
            pids: handle(&process.maps.tyr_filter_pids)?,
            sock_owners: handle(&process.maps.tyr_sock_owners)?,
            scratch: handle(&process.maps.tyr_scratch_map)?,
            agents: handle(&process.maps.tyr_agents)?,
            policy_active: handle(&process.maps.tyr_policy_active)?,
            policy_slots: handle(&process.maps.tyr_policy_slots)?,
            exec_decisions: handle(&process.maps.tyr_exec_decisions)?,
            undecided: handle(&process.maps.tyr_undecided)?,
            refused: handle(&process.maps.tyr_refused)?,
            health: handle(&process.maps.tyr_health)?,
            task_agents: handle(&process.maps.tyr_task_agents)?,
            task_scratch: handle(&process.maps.tyr_task_scratch)?,
            mounts: handle(&process.maps.tyr_mounts)?,
            canonical_mounts: handle(&process.maps.tyr_canonical_mounts)?,
        };
        write_config(&shared, config)?;

        for (hook, prog) in [
            ("tp/sched/sched_process_exec", &process.progs.tyr_exec),
            ("tp_btf/sched_process_fork", &process.progs.tyr_fork),
            ("tp/sched/sched_process_exit", &process.progs.tyr_exit),
        ] {
            // Without lifecycle records nothing else makes sense: fatal.
            let link = prog.attach().map_err(|source| CaptureError::Attach { hook: hook.to_owned(), source })?;
            attacher.attach(hook, Ok(link));
        }

        // Enforcing, tyrd decides TLS policy (and file policy without BPF
        // LSM) in userspace, so those hooks load and see everything whatever
        // the filters: decisions are always reported.
        let wants_files =
            config.enforce || config.kinds.contains(Kind::FileRead) || config.kinds.contains(Kind::FileWrite);
        let (file_lsm, file_syscalls) =
            if wants_files { load_file_hooks(&shared, &mut attacher) } else { (None, None) };

        let wants_net = config.enforce || config.kinds.contains(Kind::NetConnect) || config.kinds.contains(Kind::Tls);
        let cgroup = if wants_net { Some(open_cgroup_root(&host)?) } else { None };
        let connect = match &cgroup {
            Some(root) => load_connect(&shared, root, &mut attacher),
            None => None,
        };
        let tls = match &cgroup {
            Some(root) if config.enforce || config.kinds.contains(Kind::Tls) => load_tls(&shared, root, &mut attacher),
            _ => None,
        };

        let bpf_lsm = attacher.attached(FILE_OPEN_LSM);
        let enforce_exec = attacher.attached(EXEC_LSM);
        // Identities need to know where each filesystem sits here; kept
        // current as mounts come and go.
        let mount_table = bpf_lsm.then(|| MountTable::start(&shared.mounts, &shared.canonical_mounts));
        // Connect rules hold only when both families' hooks are attached.
        let enforce_net =
            connect.is_some() && attacher.attached("cgroup/connect4") && attacher.attached("cgroup/connect6");
        let capabilities = Capabilities {
            kernel_version: host.kernel_release.clone(),
            arch: host.arch.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            hooks: attacher.hooks,
            bpf_lsm,
            tls_capture: tls.is_some(),
            file_open_source: if bpf_lsm { FILE_OPEN_LSM.to_owned() } else { FILE_FALLBACK.to_owned() },
            enforce_file: bpf_lsm,
            enforce_exec,
            enforce_net,
            host,
        };
        Ok(Self {
            links: attacher.links,
            _process: process,
            _file_lsm: file_lsm,
            _file_syscalls: file_syscalls,
            _connect: connect,
            _tls: tls,
            mount_table,
            shared,
            capabilities,
        })
    }

    /// What the mount table watcher counts (None: file identities are off).
    pub fn mount_stats(&self) -> Option<std::sync::Arc<MountTableStats>> {
        self.mount_table.as_ref().map(|table| std::sync::Arc::clone(&table.stats))
    }

    /// What loaded and attached on this kernel.
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// A handle on the ring every record goes through.
    pub fn ring(&self) -> Result<MapHandle, CaptureError> {
        MapHandle::try_from(&self.shared.events).map_err(|source| CaptureError::Map { map: "tyr_events", source })
    }

    /// A handle on the pid -> agent map processes inherit on fork.
    pub fn agent_map(&self) -> Result<MapHandle, CaptureError> {
        MapHandle::try_from(&self.shared.agents).map_err(|source| CaptureError::Map { map: "tyr_agents", source })
    }

    /// The maps policy is installed into, when an enforcing hook loaded.
    pub fn policy_maps(&self) -> Result<Option<PolicyMaps>, CaptureError> {
        let map = |m: &libbpf_rs::MapMut<'_>, name: &'static str| {
            MapHandle::try_from(m).map_err(|source| CaptureError::Map { map: name, source })
        };
        let net = match &self._connect {
            Some(connect) => {
                let maps = &connect.maps;
                Some(NetPolicyMaps {
                    v4: [map(&maps.tyr_net4_slot0, "tyr_net4_slot0")?, map(&maps.tyr_net4_slot1, "tyr_net4_slot1")?],
                    v6: [map(&maps.tyr_net6_slot0, "tyr_net6_slot0")?, map(&maps.tyr_net6_slot1, "tyr_net6_slot1")?],
                    lists: [
                        map(&maps.tyr_net_lists_slot0, "tyr_net_lists_slot0")?,
                        map(&maps.tyr_net_lists_slot1, "tyr_net_lists_slot1")?,
                    ],
                })
            }
            None => None,
        };
        let path = match &self._file_lsm {
            Some(lsm) => {
                let maps = &lsm.maps;
                Some(PathPolicyMaps {
                    tries: [map(&maps.tyr_path_slot0, "tyr_path_slot0")?, map(&maps.tyr_path_slot1, "tyr_path_slot1")?],
                    lists: [
                        map(&maps.tyr_path_lists_slot0, "tyr_path_lists_slot0")?,
                        map(&maps.tyr_path_lists_slot1, "tyr_path_lists_slot1")?,
                    ],
                    globs: [
                        map(&maps.tyr_globs_slot0, "tyr_globs_slot0")?,
                        map(&maps.tyr_globs_slot1, "tyr_globs_slot1")?,
                    ],
                })
            }
            None => None,
        };
        if net.is_none() && path.is_none() {
            return Ok(None);
        }
        let inode_ids = match &self._file_lsm {
            Some(lsm) => Some(map(&lsm.maps.tyr_inode_ids, "tyr_inode_ids")?),
            None => None,
        };
        Ok(Some(PolicyMaps {
            active: MapHandle::try_from(&self.shared.policy_active)
                .map_err(|source| CaptureError::Map { map: "tyr_policy_active", source })?,
            slots: MapHandle::try_from(&self.shared.policy_slots)
                .map_err(|source| CaptureError::Map { map: "tyr_policy_slots", source })?,
            net,
            path,
            inode_ids,
        }))
    }

    /// Operations let through because policy could not be checked (no
    /// scratch space on the CPU), per event kind number.
    pub fn undecided(&self) -> Result<[u64; KIND_COUNT], CaptureError> {
        per_kind_totals(&self.shared.undecided, "tyr_undecided")
    }

    /// Records the kernel could not emit, per event kind number.
    pub fn lost(&self) -> Result<[u64; KIND_COUNT], CaptureError> {
        per_kind_totals(&self.shared.lost, "tyr_lost")
    }

    /// Operations of governed processes refused because the kernel could
    /// not decide them (fail closed), per event kind number.
    pub fn refused(&self) -> Result<[u64; KIND_COUNT], CaptureError> {
        per_kind_totals(&self.shared.refused, "tyr_refused")
    }

    /// The kernel's health counters (`enum tyr_health_counter`).
    pub fn health(&self) -> Result<KernelHealth, CaptureError> {
        let totals = per_index_totals::<{ HEALTH_COUNT }>(&self.shared.health, "tyr_health")?;
        Ok(KernelHealth::from_totals(totals))
    }
}

/// Sums a per-CPU array of per-kind u64 counters.
fn per_kind_totals(map: &MapHandle, name: &'static str) -> Result<[u64; KIND_COUNT], CaptureError> {
    per_index_totals::<KIND_COUNT>(map, name)
}

/// Sums a per-CPU array of N u64 counters.
fn per_index_totals<const N: usize>(map: &MapHandle, name: &'static str) -> Result<[u64; N], CaptureError> {
    let mut totals = [0u64; N];
    for (kind, total) in totals.iter_mut().enumerate() {
        let key = (kind as u32).to_ne_bytes();
        let per_cpu = map
            .lookup_percpu(&key, MapFlags::ANY)
            .map_err(|source| CaptureError::Map { map: name, source })?
            .unwrap_or_default();
        *total = per_cpu
            .iter()
            .filter_map(|bytes| bytes.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes))
            .sum();
    }
    Ok(totals)
}

fn handle(map: &libbpf_rs::MapMut<'_>) -> Result<MapHandle, CaptureError> {
    MapHandle::try_from(map).map_err(|source| CaptureError::Map { map: "shared", source })
}

fn write_config(shared: &SharedMaps, config: &CaptureConfig) -> Result<(), CaptureError> {
    for comm in &config.comms {
        let mut key = [0u8; 16];
        let bytes = comm.as_bytes();
        if bytes.len() > 15 {
            return Err(CaptureError::CommTooLong(comm.clone()));
        }
        key[..bytes.len()].copy_from_slice(bytes);
        shared
            .comms
            .update(&key, &[1], MapFlags::ANY)
            .map_err(|source| CaptureError::Map { map: "tyr_filter_comms", source })?;
    }
    for pid in &config.pids {
        shared
            .pids
            .update(&pid.to_ne_bytes(), &[1], MapFlags::ANY)
            .map_err(|source| CaptureError::Map { map: "tyr_filter_pids", source })?;
    }
    let ring_size = u64::from(config.ring_bytes);
    let value = records::tyr_config {
        kinds_enabled: config.kinds.bits(),
        filter_comm: u32::from(!config.comms.is_empty()),
        filter_pid: u32::from(!config.pids.is_empty()),
        self_tgid: std::process::id(),
        // Policy decided in userspace needs every record it decides from.
        policy_unfiltered: u32::from(config.enforce),
        fault_inject: fault_injection(),
        init_mnt_ns: own_mount_namespace(),
        agent_userns_deny: u32::from(config.agent_userns_deny),
        known_classes: tyr_common::agents::KNOWN_AGENTS.len() as u32,
        reserved: 0,
        ring_size,
        // An eighth of the ring stays free for lifecycle records.
        ring_headroom: ring_size / 8,
    };
    // SAFETY: tyr_config is a Plain repr(C) struct of integers.
    let bytes = unsafe { plain::as_bytes(&value) };
    shared
        .config
        .update(&0u32.to_ne_bytes(), bytes, MapFlags::ANY)
        .map_err(|source| CaptureError::Map { map: "tyr_config_map", source })
}

fn load_connect(shared: &SharedMaps, cgroup: &File, attacher: &mut Attacher) -> Option<connect::ConnectSkel<'static>> {
    match connect::ConnectSkel::open_shared(shared).and_then(|open| open.load()) {
        Ok(skel) => {
            let fd = cgroup.as_raw_fd();
            if fault_injected(Fault::ConnectAttach) {
                attacher.record("cgroup/connect4", Some("attach refused (fault injection)".to_owned()), "");
            } else {
                attacher.attach("cgroup/connect4", skel.progs.tyr_connect4.attach_cgroup(fd));
            }
            attacher.attach("cgroup/connect6", skel.progs.tyr_connect6.attach_cgroup(fd));
            Some(skel)
        }
        Err(error) => {
            attacher.record("cgroup/connect4", Some(error.to_string()), "");
            attacher.record("cgroup/connect6", Some(error.to_string()), "");
            None
        }
    }
}

fn load_tls(shared: &SharedMaps, cgroup: &File, attacher: &mut Attacher) -> Option<tls_egress::TlsEgressSkel<'static>> {
    match tls_egress::TlsEgressSkel::open_shared(shared).and_then(|open| open.load()) {
        Ok(skel) => attacher
            .attach("cgroup_skb/egress", skel.progs.tyr_tls_egress.attach_cgroup(cgroup.as_raw_fd()))
            .then_some(skel),
        Err(error) => {
            attacher.record("cgroup_skb/egress", Some(error.to_string()), "");
            None
        }
    }
}

fn open_cgroup_root(host: &HostFacts) -> Result<File, CaptureError> {
    let root = host.cgroup2_mount.as_deref().ok_or(CaptureError::NoCgroup2)?;
    open_dir(root)
}

fn open_dir(path: &Path) -> Result<File, CaptureError> {
    File::open(path).map_err(|source| CaptureError::Cgroup { path: path.display().to_string(), source })
}

/// Opening an object with its shared maps pointed at the process object's.
pub(crate) trait OpenShared: Sized {
    type Open;
    fn open_shared(shared: &SharedMaps) -> libbpf_rs::Result<Self::Open>;
}

macro_rules! open_shared_impl {
    ($skel:ty, $open:ty, $builder:ty) => {
        impl OpenShared for $skel {
            type Open = $open;
            fn open_shared(shared: &SharedMaps) -> libbpf_rs::Result<Self::Open> {
                let mut open = <$builder>::default().open(object_storage())?;
                share_maps!(open, shared)?;
                Ok(open)
            }
        }
    };
}

open_shared_impl!(file_lsm::FileLsmSkel<'static>, file_lsm::OpenFileLsmSkel<'static>, file_lsm::FileLsmSkelBuilder);
open_shared_impl!(
    file_syscalls::FileSyscallsSkel<'static>,
    file_syscalls::OpenFileSyscallsSkel<'static>,
    file_syscalls::FileSyscallsSkelBuilder
);
open_shared_impl!(connect::ConnectSkel<'static>, connect::OpenConnectSkel<'static>, connect::ConnectSkelBuilder);
open_shared_impl!(
    tls_egress::TlsEgressSkel<'static>,
    tls_egress::OpenTlsEgressSkel<'static>,
    tls_egress::TlsEgressSkelBuilder
);
