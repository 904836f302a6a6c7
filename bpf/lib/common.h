/* What every tyr program shares: the maps (one definition, reused across
 * objects by tyrd), the record header, filters, drop counting and the
 * per-CPU scratch records are built in. */
#pragma once

#include "vmlinux.h"
#include "tyr_records.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The one ring every record goes through, so tyrd sees them in the order
 * they were made (an exec before the opens of the new image). Its size is
 * set by tyrd before load. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 * 1024 * 1024);
} tyr_events SEC(".maps");

/* Records that could not be emitted, per event kind. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TYR_KIND_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} tyr_lost SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tyr_config);
} tyr_config_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, char[TYR_COMM_LEN]);
	__type(value, __u8);
} tyr_filter_comms SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} tyr_filter_pids SEC(".maps");

/* Thread group id -> the AI agent it belongs to. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct tyr_agent_class);
} tyr_agents SEC(".maps");

/* Which policy slot is active: 0 none, 1 slot 0, 2 slot 1. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} tyr_policy_active SEC(".maps");

/* Each slot's version and default verdict. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct tyr_policy_slot);
} tyr_policy_slots SEC(".maps");

/* Thread group id -> the policy decision lsm/bprm_check_security took for
 * its exec, picked up by the exec tracepoint for the EXEC record. Emptied
 * when an exec begins (lsm/bprm_creds_for_exec), so a failed exec leaves
 * nothing behind; within one exec a script is checked, then its
 * interpreter, and the stricter decision stands. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct tyr_policy_decision);
} tyr_exec_decisions SEC(".maps");

/* Operations policy could not be checked for (no scratch space), per
 * event kind: let through, and counted. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TYR_KIND_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} tyr_undecided SEC(".maps");

/* Operations of governed processes refused because the kernel could not
 * decide them (fail closed), per event kind. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TYR_KIND_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} tyr_refused SEC(".maps");

/* enum tyr_health_counter. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TYR_HEALTH_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} tyr_health SEC(".maps");

/* Process -> agent class where tyr_agents had no room for a fork's child,
 * on the thread group leader: the child stays governed (LSM hooks read it). */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct tyr_agent_class);
} tyr_task_agents SEC(".maps");

/* Where each filesystem sits in tyrd's mount namespace (see tyr_mount_key),
 * written by tyrd from its mountinfo: file identities are built from it. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct tyr_mount_key);
	__type(value, struct tyr_mount_value);
} tyr_mounts SEC(".maps");

/* The mounts in tyrd's mount namespace that name their filesystem's files
 * as tyr_mounts does (the first mount of each filesystem's root), by mount
 * id; written by tyrd with tyr_mounts. A file reached through any other
 * mount (a second mount of the same filesystem) is named by its identity. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} tyr_canonical_mounts SEC(".maps");

/* Socket cookie -> owning process, written at connect, read on egress. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct tyr_sock_owner);
} tyr_sock_owners SEC(".maps");

/* Room for the largest fixed part of any record. */
#define TYR_FIXED_MAX 128
/* Paths are written into a scratch record at offsets below this (a fixed
 * part, then up to four names), each up to TYR_PATH_MAX bytes plus the
 * NAME_MAX-sized read that may overrun it. A name that would start past it
 * is not written and marks the names truncated (a governed operation is
 * then refused). */
#define TYR_BASE_LIMIT 16384
#define TYR_BASE_MASK (TYR_BASE_LIMIT - 1)
/* `x` masked below TYR_BASE_LIMIT where the verifier sees it: the barrier
 * keeps the compiler from dropping a mask it can prove redundant (the
 * verifier may have lost that bound on a spill). */
#define TYR_AT(x)                                  \
	({                                         \
		__u32 __tyr_at = (x);              \
		barrier_var(__tyr_at);             \
		__tyr_at & TYR_BASE_MASK;          \
	})

/* Most names x actions of one operation (see lib/file_decide.h). */
#define TYR_CHECKS 8

/* One name, one action. */
struct tyr_check {
	__u32 base;   /* the name: len bytes at s->rec + base */
	__u32 len;
	__u16 action; /* TYR_ACTION_* */
	__u8 how;     /* TYR_DECIDE_SUBTREE, or 0 */
	__u8 name;    /* enum tyr_decided_on */
};

/* The names and actions of one operation, and the strictest decision. */
struct tyr_checks {
	__u32 slot;
	__u32 class;
	__u32 on_task;
	__u32 count;
	__u32 done;     /* checks decided */
	__u32 governed; /* the process must be refused what is not fully decided */
	struct tyr_check list[TYR_CHECKS];
	struct tyr_policy_decision best;
	__u32 best_action; /* the action of the best decision */
	__u32 best_name;   /* enum tyr_decided_on */
	__u32 failsafe;    /* enum tyr_failsafe_reason of the decision */
	__u32 unnamed;     /* the path asked for could not be resolved (too long) */
};

/* A path walk in progress (lib/path.h). */
struct tyr_walk {
	__u64 mnt;    /* struct mount * */
	__u64 dentry; /* struct dentry * */
	__u32 depth;
	__u32 finished;
	__u32 cross_mounts; /* 0: stop at the filesystem's root (identities) */
	__u32 reserved;
};

/* Components of a walk being written out as a path (lib/path.h). */
struct tyr_write {
	__u32 depth;  /* components collected */
	__u32 skip;   /* components left out from the top */
	__u32 base;   /* offset of the output in s->rec */
	__u32 len;    /* bytes written so far */
	__u32 truncated;
	__u32 reserved;
};

/* Names an operation needs resolved (lib/names.h), written one after the
 * other from a base offset of the record. */
#define TYR_NAME_JOBS 4
struct tyr_name_job {
	__u64 mnt;    /* struct vfsmount * */
	__u64 dentry; /* struct dentry *, or the string of TYR_NAME_STRING */
	__u64 child;  /* TYR_NAME_CHILD: the struct dentry * below dentry */
	__u32 kind;   /* TYR_NAME_* */
	__u32 len;    /* out: bytes written */
};

struct tyr_names {
	struct tyr_name_job jobs[TYR_NAME_JOBS];
	__u32 count;
	__u32 done;        /* jobs resolved */
	__u32 at;          /* where the next name goes */
	__u32 flags;       /* out: TYR_F_TRUNCATED */
	__u32 init_mnt_ns; /* tyrd's mount namespace */
};

/* A record under construction, laid out exactly as it goes on the ring: its
 * fixed part at rec[0], its data right after. */
struct tyr_scratch {
	__u64 busy; /* set while a program uses this CPU's entry */
	__u8 rec[TYR_BASE_LIMIT + TYR_PATH_MAX + 256];
	/* Dentries of the path being resolved, leaf first. */
	struct dentry *dentries[64];
	/* Trie key of the path being checked against policy. */
	struct tyr_path_key key;
	/* Trie key of a filesystem's mount, for identities. */
	struct tyr_mount_key mount_key;
	/* Room for the masked (0xff) index past either key's bytes. */
	__u8 key_slack[8];
	/* The checks of the operation being decided. */
	struct tyr_checks checks;
	struct tyr_walk walk;
	struct tyr_write write;
	struct tyr_names names;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tyr_scratch);
} tyr_scratch_map SEC(".maps");

/* A task's own scratch, for a decision that finds its CPU's entry held by
 * a program it preempted: created for the decision and deleted after, so
 * no two programs ever share scratch and no decision is skipped. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct tyr_scratch);
} tyr_task_scratch SEC(".maps");

/* Dummy instances: they put every record type in the object's BTF, so the
 * skeleton generates their Rust definitions. */
struct tyr_exec_fixed tyr_type_exec = {};
struct tyr_fork_fixed tyr_type_fork = {};
struct tyr_exit_fixed tyr_type_exit = {};
struct tyr_file_fixed tyr_type_file = {};
struct tyr_connect_fixed tyr_type_connect = {};
struct tyr_tls_fixed tyr_type_tls = {};
struct tyr_config tyr_type_config = {};
struct tyr_sock_owner tyr_type_sock_owner = {};
struct tyr_agent_class tyr_type_agent_class = {};
struct tyr_policy_slot tyr_type_policy_slot = {};
struct tyr_net_key4 tyr_type_net_key4 = {};
struct tyr_net_key6 tyr_type_net_key6 = {};
struct tyr_net_candidates tyr_type_net_candidates = {};
struct tyr_path_candidates tyr_type_path_candidates = {};
struct tyr_glob tyr_type_glob = {};
struct tyr_path_key tyr_type_path_key = {};
struct tyr_mount_key tyr_type_mount_key = {};
struct tyr_mount_value tyr_type_mount_value = {};
enum tyr_file_op tyr_type_file_op = TYR_FILE_OP_OPEN;
enum tyr_decided_on tyr_type_decided_on = TYR_DECIDED_ON_PATH;
enum tyr_failsafe_reason tyr_type_failsafe_reason = TYR_FAILSAFE_NONE;
enum tyr_health_counter tyr_type_health_counter = TYR_HEALTH_AGENTS_FULL;
enum tyr_fault tyr_type_fault = TYR_FAULT_SCRATCH;
enum tyr_slot_flag tyr_type_slot_flag = TYR_SLOT_DENIES;

static __always_inline struct tyr_config *tyr_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&tyr_config_map, &zero);
}

static __always_inline void tyr_count(void *map, __u32 index)
{
	__u64 *count = bpf_map_lookup_elem(map, &index);
	if (count)
		*count += 1;
}

static __always_inline void tyr_count_lost(__u32 kind)
{
	tyr_count(&tyr_lost, kind);
}

static __always_inline void tyr_count_health(__u32 counter)
{
	tyr_count(&tyr_health, counter);
}

static __always_inline bool tyr_kind_enabled(const struct tyr_config *cfg, __u32 kind)
{
	return cfg->kinds_enabled & (1U << (kind & 31));
}

/* Whether events of the current process pass the comm and pid filters. */
static __always_inline bool tyr_process_selected(const struct tyr_config *cfg, __u32 tgid,
						 const char comm[TYR_COMM_LEN])
{
	if (tgid == cfg->self_tgid)
		return false;
	if (cfg->filter_pid && !bpf_map_lookup_elem(&tyr_filter_pids, &tgid))
		return false;
	if (cfg->filter_comm && !bpf_map_lookup_elem(&tyr_filter_comms, comm))
		return false;
	return true;
}

/* Whether the ring still has room for a hot-path record: the last
 * ring_headroom bytes are kept for process lifecycle records, so a burst of
 * opens cannot crowd out execs and exits. */
static __always_inline bool tyr_ring_has_room(const struct tyr_config *cfg)
{
	__u64 pending = bpf_ringbuf_query(&tyr_events, BPF_RB_AVAIL_DATA);
	return pending + cfg->ring_headroom <= cfg->ring_size;
}

#define TYR_O_ACCMODE 00000003
#define TYR_O_RDONLY 00000000
#define TYR_O_WRONLY 00000001
#define TYR_O_CREAT 00000100
#define TYR_O_TRUNC 00001000

/* Opening with write access, or in a way that creates or truncates, is a write. */
static __always_inline __u32 tyr_open_kind(__u32 flags)
{
	if ((flags & TYR_O_ACCMODE) != TYR_O_RDONLY || (flags & (TYR_O_CREAT | TYR_O_TRUNC)))
		return TYR_KIND_FILE_WRITE;
	return TYR_KIND_FILE_READ;
}

/* The agent class of process `tgid` (the current one): tyr_agents, else,
 * in programs that may read task storage (TYR_TASK_STORAGE defined before
 * this header), what a fork left on the thread group leader when
 * tyr_agents was full. */
static __always_inline struct tyr_agent_class *tyr_agent_of(__u32 tgid)
{
	struct tyr_agent_class *agent = bpf_map_lookup_elem(&tyr_agents, &tgid);
#ifdef TYR_TASK_STORAGE
	if (!agent) {
		struct task_struct *task = bpf_get_current_task_btf();
		agent = bpf_task_storage_get(&tyr_task_agents, task->group_leader, 0, 0);
	}
#endif
	return agent;
}

/* Fills a header for the current task. */
static __always_inline void tyr_fill_header(struct tyr_record_header *hdr, __u16 type, __u16 kind)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();

	hdr->type = type;
	hdr->kind = kind;
	hdr->size = 0;
	hdr->boot_ns = bpf_ktime_get_boot_ns();
	hdr->pid = pid_tgid >> 32;
	hdr->tid = (__u32)pid_tgid;
	hdr->ppid = BPF_CORE_READ(task, real_parent, tgid);
	hdr->uid = (__u32)uid_gid;
	hdr->gid = uid_gid >> 32;
	hdr->flags = 0;
	__u32 tgid = hdr->pid;
	struct tyr_agent_class *agent = tyr_agent_of(tgid);
	hdr->agent = agent ? agent->agent : 0;
	hdr->agent_type = agent ? agent->agent_type : 0;
	bpf_get_current_comm(hdr->comm, sizeof(hdr->comm));
}

/* Scratch for one program run: this CPU's entry, claimed; when a program
 * preempted on this CPU still holds it, the task's own (programs that may
 * read task storage only; *on_task set). NULL when neither is available:
 * the caller decides without it (fails closed for governed processes) and
 * counts what it could not record. */
static __always_inline struct tyr_scratch *tyr_scratch_claim(const struct tyr_config *cfg, __u32 *on_task)
{
	*on_task = 0;
#ifdef TYR_TASK_STORAGE
	/* Injected only where policy is decided: records that feed detection
	 * (execs) keep flowing, so tests see governed processes refused. */
	if (cfg->fault_inject & TYR_FAULT_SCRATCH)
		return NULL;
#endif
	__u32 zero = 0;
	struct tyr_scratch *s = bpf_map_lookup_elem(&tyr_scratch_map, &zero);
	if (s && !__sync_lock_test_and_set(&s->busy, 1))
		return s;
#ifdef TYR_TASK_STORAGE
	s = bpf_task_storage_get(&tyr_task_scratch, bpf_get_current_task_btf(), 0,
				 BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (s) {
		*on_task = 1;
		tyr_count_health(TYR_HEALTH_TASK_SCRATCH);
	}
	return s;
#else
	return NULL;
#endif
}

static __always_inline void tyr_scratch_release(struct tyr_scratch *s, __u32 on_task)
{
#ifdef TYR_TASK_STORAGE
	if (on_task) {
		bpf_task_storage_delete(&tyr_task_scratch, bpf_get_current_task_btf());
		return;
	}
#endif
	/* Only this CPU uses this entry: a plain store is enough. */
	*(volatile __u64 *)&s->busy = 0;
}

/* The scratch a program claimed, looked up again (bpf_loop callbacks). */
static __always_inline struct tyr_scratch *tyr_scratch_entry(__u32 on_task)
{
#ifdef TYR_TASK_STORAGE
	if (on_task)
		return bpf_task_storage_get(&tyr_task_scratch, bpf_get_current_task_btf(), 0, 0);
#endif
	__u32 zero = 0;
	return bpf_map_lookup_elem(&tyr_scratch_map, &zero);
}

/* Sends the record built in s->rec (fixed_size bytes of fixed part, then
 * data_len bytes of data); counts it as lost when the ring refuses it. */
static __always_inline void tyr_emit(struct tyr_scratch *s, __u32 fixed_size, __u32 data_len, __u32 kind)
{
	__u64 size = (__u64)fixed_size + data_len;
	if (size > sizeof(s->rec)) {
		tyr_count_lost(kind);
		return;
	}
	((struct tyr_record_header *)s->rec)->size = size;
	if (bpf_ringbuf_output(&tyr_events, s->rec, size, 0))
		tyr_count_lost(kind);
}
