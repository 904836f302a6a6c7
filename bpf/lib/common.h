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

/* Socket cookie -> owning process, written at connect, read on egress. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct tyr_sock_owner);
} tyr_sock_owners SEC(".maps");

/* Room for the largest fixed part of any record. */
#define TYR_FIXED_MAX 128

/* A record under construction, laid out exactly as it goes on the ring: its
 * fixed part at rec[0], its data right after. */
struct tyr_scratch {
	__u64 busy; /* set while a program uses this CPU's entry */
	__u8 rec[TYR_FIXED_MAX + TYR_DATA_SIZE];
	/* Dentries of the path being resolved, leaf first. */
	struct dentry *dentries[64];
	/* Trie key of the path being checked against policy. */
	struct tyr_path_key key;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tyr_scratch);
} tyr_scratch_map SEC(".maps");

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

static __always_inline struct tyr_config *tyr_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&tyr_config_map, &zero);
}

static __always_inline void tyr_count_lost(__u32 kind)
{
	__u64 *lost = bpf_map_lookup_elem(&tyr_lost, &kind);
	if (lost)
		*lost += 1;
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
	struct tyr_agent_class *agent = bpf_map_lookup_elem(&tyr_agents, &tgid);
	hdr->agent = agent ? agent->agent : 0;
	hdr->agent_type = agent ? agent->agent_type : 0;
	bpf_get_current_comm(hdr->comm, sizeof(hdr->comm));
}

/* This CPU's scratch record, claimed; NULL when a program preempted on this
 * CPU still holds it (the caller counts the record as lost). */
static __always_inline struct tyr_scratch *tyr_scratch_claim(void)
{
	__u32 zero = 0;
	struct tyr_scratch *s = bpf_map_lookup_elem(&tyr_scratch_map, &zero);
	if (!s)
		return NULL;
	if (__sync_lock_test_and_set(&s->busy, 1))
		return NULL;
	return s;
}

static __always_inline void tyr_scratch_release(struct tyr_scratch *s)
{
	/* Only this CPU uses this entry: a plain store is enough. */
	*(volatile __u64 *)&s->busy = 0;
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
