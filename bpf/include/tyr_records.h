/* Records tyr's eBPF programs write to the ring buffer, and the maps they
 * share. This header is the one definition of these layouts: tyrd reads
 * them through the types libbpf-cargo generates from it.
 *
 * Every record starts with struct tyr_record_header; a fixed part follows,
 * then variable-length data whose lengths the fixed part gives. */
#pragma once

/* Event kinds, numbered as tyr.v1.EventKind. Also the index of the per-kind
 * counters of records that could not be emitted. */
enum tyr_event_kind {
	TYR_KIND_UNSPECIFIED = 0,
	TYR_KIND_FILE_READ = 1,
	TYR_KIND_FILE_WRITE = 2,
	TYR_KIND_EXEC = 3,
	TYR_KIND_NET_CONNECT = 4,
	TYR_KIND_TLS = 5,
	TYR_KIND_EXIT = 6,
	TYR_KIND_FORK = 7,
	TYR_KIND_COUNT = 8,
};

/* Layouts of the records on the ring. */
enum tyr_record_type {
	TYR_REC_EXEC = 1,
	TYR_REC_FORK = 2,
	TYR_REC_EXIT = 3,
	TYR_REC_FILE = 4,
	TYR_REC_CONNECT = 5,
	TYR_REC_TLS = 6,
};

/* Where a file record came from. */
enum tyr_file_source {
	TYR_FILE_SOURCE_LSM = 1,     /* lsm/file_open: path from the opened file */
	TYR_FILE_SOURCE_SYSCALL = 2, /* openat/openat2/open/creat tracepoints */
};

/* What a file record's operation was. */
enum tyr_file_op {
	TYR_FILE_OP_OPEN = 0,
	TYR_FILE_OP_LINK = 1,   /* path: the existing file; name: the new link */
	TYR_FILE_OP_RENAME = 2, /* path: the old name; name: the new one */
	TYR_FILE_OP_MOUNT = 3,  /* path: the mountpoint; name: the source as given */
	TYR_FILE_OP_USERNS = 4, /* a user namespace created; no path */
	TYR_FILE_OP_PTRACE = 5, /* another process reached into (ptrace, pidfd_getfd, ...); path: /proc/PID */
	TYR_FILE_OP_CONNECT = 6, /* a unix socket connected or sent to: a write of the socket file; path: it */
	TYR_FILE_OP_SYMLINK = 7, /* path: the symlink made; name: what it points to */
	TYR_FILE_OP_MKNOD = 8,   /* a FIFO, socket or device node made; path: it */
	TYR_FILE_OP_UNLINK = 9,  /* path: the name removed */
	TYR_FILE_OP_TRUNCATE = 10, /* truncate(2) by path; path: the file */
};

/* Which name of a file its verdict was decided on. */
enum tyr_decided_on {
	TYR_DECIDED_ON_PATH = 0,     /* the path as asked for */
	TYR_DECIDED_ON_IDENTITY = 1, /* the file's identity: its path in tyrd's mount namespace */
};

/* Why the kernel could not decide an operation; a governed process is
 * refused, any other let through (both counted). */
enum tyr_failsafe_reason {
	TYR_FAILSAFE_NONE = 0,
	TYR_FAILSAFE_NO_SCRATCH = 1,   /* no per-CPU or per-task scratch space */
	TYR_FAILSAFE_STACKED_MOUNT = 2, /* not undecided: tyrd refuses governed agents overlay and FUSE mounts */
	TYR_FAILSAFE_INCOMPLETE = 3,   /* a name or check of the operation could not be resolved */
	TYR_FAILSAFE_COUNT = 4,
};

/* Kernel-side health counters (tyr_health), by index. */
enum tyr_health_counter {
	TYR_HEALTH_AGENTS_FULL = 0,     /* a fork's agent class found no room in tyr_agents */
	TYR_HEALTH_TASK_SCRATCH = 1,    /* decisions made in per-task scratch (per-CPU was busy) */
	TYR_HEALTH_IDENTITY_UNMAPPED = 2, /* identities on a filesystem tyrd's namespace does not mount */
	TYR_HEALTH_IDENTITY_DEEP = 3,   /* identities deeper than the walk bound */
	TYR_HEALTH_INCOMPLETE = 4,      /* operations whose names or checks did not all run */
	TYR_HEALTH_COUNT = 5,
};

/* Fault injection bits (tyr_config.fault_inject), for tests. */
enum tyr_fault {
	TYR_FAULT_SCRATCH = 1,    /* every scratch claim of a policy decision fails */
	TYR_FAULT_INCOMPLETE = 2, /* file checks stop after the first, as if its scratch were lost */
};

/* Verdicts, numbered as tyr.v1.Verdict. */
#define TYR_VERDICT_ALLOW 1
#define TYR_VERDICT_DENY 2
#define TYR_VERDICT_ALERT 3

/* Header flags. */
#define TYR_F_TRUNCATED (1U << 0)   /* variable data was cut at its bound */
#define TYR_F_OWNER_UNKNOWN (1U << 1) /* TLS: no process known for the socket */
#define TYR_F_DIRECTORY (1U << 2) /* a directory's rename or mount, decided as everything below it */

#define TYR_COMM_LEN 16
/* Bounds of the variable-length parts. */
#define TYR_PATH_MAX 4096
#define TYR_ARGV_MAX 1024
#define TYR_HELLO_MAX 2048

struct tyr_record_header {
	__u16 type;      /* enum tyr_record_type */
	__u16 kind;      /* enum tyr_event_kind */
	__u32 size;      /* bytes of the whole record, header included */
	__u64 boot_ns;   /* bpf_ktime_get_boot_ns() when the record was made */
	__u32 pid;       /* thread group id of the acting process */
	__u32 tid;
	__u32 ppid;      /* thread group id of its parent */
	__u32 uid;
	__u32 gid;
	__u32 flags;     /* TYR_F_* */
	__u32 agent;     /* discovered-agent index of the process (0: none), see tyr_agent_class */
	__u32 agent_type;/* agent type class (0: none) */
	char comm[TYR_COMM_LEN];
};

/* The policy decision a record was made under. */
struct tyr_policy_decision {
	__u64 policy_version; /* version the verdict was decided under (0: no policy) */
	__u32 rule;           /* 1-based rule index in that version (0: the default) */
	__u32 verdict;        /* tyr.v1.Verdict; 0: no policy loaded */
};

/* data: exe path (exe_len bytes), then argv (argv_len bytes, NUL-separated).
 * From sched_process_exec after a successful exec; from
 * lsm/bprm_check_security when policy refused the exec (result -EPERM,
 * no argv). */
struct tyr_exec_fixed {
	struct tyr_record_header hdr;
	__u32 exe_len;
	__u32 argv_len;
	__s32 result; /* 0, or -errno when the exec was refused */
	__u32 reserved;
	struct tyr_policy_decision decision;
};

struct tyr_fork_fixed {
	struct tyr_record_header hdr; /* pid: the parent */
	__u32 child_pid;
	__u32 reserved;
};

struct tyr_exit_fixed {
	struct tyr_record_header hdr;
	__u32 exit_code; /* wait status: (code << 8) | signal */
	__u32 reserved;
};

/* data: path (path_len bytes), then name (name_len bytes), then identity
 * (identity_len bytes).
 * After a successful open, path is the opened file's absolute path and name
 * is empty. After a failed one, name is the path as the caller passed it and
 * path the directory it is relative to (empty when name is absolute).
 * From the LSM hooks, identity is the file's path in tyrd's mount namespace
 * when the path asked for may differ from it (another mount namespace, a
 * bind mount, a chroot); decided_on says which of the two the verdict (the
 * stricter) came from. Links, renames and mounts use name for the other
 * path of the operation. */
struct tyr_file_fixed {
	struct tyr_record_header hdr;
	__s32 result;     /* fd, or -errno */
	__u32 open_flags; /* O_* flags as passed */
	__u16 path_len;
	__u16 name_len;
	__u16 source;     /* enum tyr_file_source */
	__u8 op;          /* enum tyr_file_op */
	__u8 decided_on;  /* enum tyr_decided_on */
	struct tyr_policy_decision decision; /* LSM hooks only */
	__u16 identity_len; /* bytes of identity after name (0: the path is the identity) */
	__u8 failsafe;      /* enum tyr_failsafe_reason */
	__u8 reserved;
	__u32 reserved2;
};

struct tyr_connect_fixed {
	struct tyr_record_header hdr;
	__u16 family;     /* AF_INET or AF_INET6 */
	__u16 port;       /* host byte order */
	__u16 sock_type;  /* SOCK_STREAM, SOCK_DGRAM, ... */
	__u16 protocol;
	__u8 addr[16];    /* IPv4 in the first 4 bytes */
	__u64 cookie;     /* socket cookie */
	struct tyr_policy_decision decision;
};

/* data: the start of the TCP payload carrying a TLS ClientHello. */
struct tyr_tls_fixed {
	struct tyr_record_header hdr;
	__u16 family;
	__u16 remote_port; /* host byte order */
	__u16 hello_len;   /* bytes of data */
	__u16 reserved;
	__u8 remote_addr[16];
	__u64 cookie;
};

/* In-kernel policy, in two slots: tyrd fills the inactive slot completely,
 * then flips the one-word `tyr_policy_active` (0: none, 1: slot 0, 2: slot
 * 1); a program reads it once and decides with that slot only, so no
 * syscall is ever checked against a half-written policy.
 *
 * Connect rules compile to a longest-prefix-match trie per address family,
 * keyed by (agent type class, address): the longest configured prefix
 * containing the address names the ordered list of rules that can match it
 * (every rule whose ranges contain that prefix, plus rules with no range),
 * checked in policy order against the port. Class 0 holds the base policy;
 * a class with an overlay holds overlay rules then base rules.
 *
 * File and exec rules compile the same way over path bytes: a trie keyed
 * by (class, action, path) whose entries are the literal starts of the
 * rules' patterns, each naming an ordered list of checks (prefix: match;
 * exact: the path has exactly that length; glob: the glob automaton
 * matches the path from the end of the literal on). The layout is
 * documented with the compiler (common/src/policy/compile/). */
#define TYR_POLICY_CANDIDATES 16
#define TYR_POLICY_PORT_RANGES 8
#define TYR_POLICY_LISTS 4096
/* Class of processes no agent claims, for an `unknown` overlay. */
#define TYR_CLASS_UNKNOWN 0xfffffffeU
/* Class of unregistered agents under quarantine or deny. */
#define TYR_CLASS_UNREGISTERED 0xfffffffdU
#define TYR_POLICY_PATH_CANDIDATES 32
#define TYR_POLICY_PATH_KEY 248 /* the kernel caps LPM keys at 256 data bytes */
#define TYR_POLICY_GLOBS 1024
/* Actions of path rules, as in the trie key. */
#define TYR_ACTION_FILE_READ 1
#define TYR_ACTION_FILE_WRITE 2
#define TYR_ACTION_EXEC 3

struct tyr_net_key4 {
	__u32 prefixlen; /* 32 (class) + address prefix length */
	__u32 class;     /* big-endian agent type class, 0: base */
	__u8 addr[4];
};

struct tyr_net_key6 {
	__u32 prefixlen;
	__u32 class;
	__u8 addr[16];
};

struct tyr_port_range {
	__u16 first;
	__u16 last;
};

struct tyr_net_candidate {
	__u32 rule;    /* 1-based rule index */
	__u8 verdict;  /* tyr.v1.Verdict */
	__u8 nports;   /* 0: any port */
	__u16 reserved;
	struct tyr_port_range ports[TYR_POLICY_PORT_RANGES];
};

struct tyr_net_candidates {
	__u32 count;
	__u32 reserved;
	struct tyr_net_candidate list[TYR_POLICY_CANDIDATES];
};

struct tyr_path_key {
	__u32 prefixlen; /* 64 (class, action) + 8 * bytes of path */
	__u32 class;     /* big-endian agent type class, 0: base */
	__u32 action;    /* big-endian TYR_ACTION_* */
	__u8 path[TYR_POLICY_PATH_KEY];
};

#define TYR_PATH_MATCH_PREFIX 1
#define TYR_PATH_MATCH_EXACT 2
#define TYR_PATH_MATCH_GLOB 3
#define TYR_PATH_MATCH_BELOW 4 /* a rule lies below this directory entry:
				* matches a whole-directory decision of it */

struct tyr_path_candidate {
	__u32 rule;    /* 1-based rule index */
	__u8 verdict;  /* tyr.v1.Verdict */
	__u8 match;    /* TYR_PATH_MATCH_* */
	__u16 len;     /* exact: the path's length; glob: where the glob starts;
			below: the directory's length with its '/' */
	__u32 glob;    /* glob: index in the slot's glob array */
};

struct tyr_path_candidates {
	__u32 count;
	__u32 reserved;
	struct tyr_path_candidate list[TYR_POLICY_PATH_CANDIDATES];
};

/* A glob as a shift-and automaton (common/src/policy/compile/glob.rs):
 * bit i of the state is "the first i tokens matched". */
struct tyr_glob {
	__u64 accept;
	__u64 star;
	__u64 before_star;
	__u64 chars[256];
};

/* What a slot holds besides its rules; written before the slot is activated. */
struct tyr_policy_slot {
	__u64 version;         /* policy_version */
	__u32 default_verdict; /* verdict when no rule matches */
	__u32 flags;           /* TYR_SLOT_* */
};

enum tyr_slot_flag {
	/* The slot's policy can deny: governed processes it cannot decide for are refused. */
	TYR_SLOT_DENIES = 1,
};

/* Where a filesystem sits in tyrd's mount namespace, for identities: the
 * key is the filesystem (its s_dev) and the directory of it a mount shows
 * (with a trailing '/'; empty for its root); the value the mountpoint. */
#define TYR_MOUNT_KEY 248
#define TYR_MOUNTPOINT_MAX 256
struct tyr_mount_key {
	__u32 prefixlen; /* 32 (dev) + 8 * bytes of root */
	__u32 dev;       /* big-endian kernel dev_t: major << 20 | minor */
	__u8 root[TYR_MOUNT_KEY];
};

struct tyr_mount_value {
	__u32 root_components; /* path components of the root (0 for the filesystem's root) */
	__u32 len;             /* bytes of mountpoint, "" for "/" */
	char mountpoint[TYR_MOUNTPOINT_MAX];
};

/* Settings, written by tyrd into the config map before attaching. */
struct tyr_config {
	__u32 kinds_enabled;   /* bit (1 << kind) set: the kind is traced */
	__u32 filter_comm;     /* nonzero: only processes whose comm is in tyr_filter_comms */
	__u32 filter_pid;      /* nonzero: only processes in tyr_filter_pids */
	__u32 self_tgid;       /* tyrd itself, never traced */
	__u32 policy_unfiltered; /* nonzero: the open tracepoints and TLS capture ignore the kind,
				  * comm and pid filters: tyrd decides policy from their records */
	__u32 fault_inject;    /* enum tyr_fault bits; 0 outside tests */
	__u32 init_mnt_ns;     /* inode number of tyrd's mount namespace */
	__u32 agent_userns_deny; /* nonzero: governed agents may not create user namespaces */
	__u32 known_classes;   /* agent type classes 1..=known_classes exist (the known-agent table) */
	__u32 reserved;
	__u64 ring_size;       /* bytes of the tyr_events ring */
	__u64 ring_headroom;   /* space kept for process lifecycle records */
};

/* Who owns a socket: recorded at connect so egress packets can be attributed. */
struct tyr_sock_owner {
	__u32 pid;
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 gid;
	__u32 agent;
	__u32 agent_type;
	__u32 reserved;
	char comm[TYR_COMM_LEN];
};

/* The AI agent a process belongs to, written by tyrd when it classifies a
 * process and copied to every child at fork in the kernel, so a child is
 * governed from its first syscall. */
struct tyr_agent_class {
	__u32 agent;      /* discovered-agent index (tyrd's registry), nonzero */
	__u32 agent_type; /* agent type class: 1 + index in the known-agent table */
};
