/* Protected names kept on inodes: when a hard link to, or a move of, a
 * file some class's rules cover is made — by any process — the name the
 * rules know it by is stored on its inode (inode storage, freed with the
 * inode), and every later open or exec of it is decided on that name too,
 * whatever name is used. tyrd's scan of links made before the policy
 * (agent/src/enforce/link_scan.rs) fills the same storage. */
#pragma once

#include "file_decide.h"

/* The protected name of a file reached by another: set on its inode when a
 * hard link to, or a rename of, a file some class's rules cover is made —
 * by any process — and decided on at every open and exec of it, whatever
 * name is used. Freed with the inode. */
struct tyr_inode_identity {
	__u32 len;
	__u32 reserved;
	char path[TYR_PATH_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_INODE_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct tyr_inode_identity);
} tyr_inode_ids SEC(".maps");

/* Whether any class's rules cover reading or writing a name. */
struct tyr_covered {
	__u32 on_task;
	__u32 slot;
	__u32 base;
	__u32 len;
	__u32 checks; /* 2 per class: read, write */
	__u32 covered;
};

static long tyr_covered_step(__u64 index, void *ctx)
{
	struct tyr_covered *a = ctx;
	if (index >= a->checks)
		return 1;
	struct tyr_scratch *s = tyr_scratch_entry(a->on_task);
	__u32 slot = a->slot;
	struct tyr_policy_slot *meta = bpf_map_lookup_elem(&tyr_policy_slots, &slot);
	if (!s || !meta)
		return 1;
	/* Classes: those no agent claims, unregistered agents, then each
	 * known agent type (each falls back to the base policy). */
	__u32 at = index / 2;
	__u32 class = at == 0 ? TYR_CLASS_UNKNOWN : at == 1 ? TYR_CLASS_UNREGISTERED : at - 1;
	__u32 action = index % 2 ? TYR_ACTION_FILE_WRITE : TYR_ACTION_FILE_READ;
	struct tyr_decision d;
	tyr_path_decide(s, a->on_task ? TYR_DECIDE_ON_TASK : 0, slot, meta, a->base, a->len, class, action, &d);
	if (d.verdict == TYR_VERDICT_DENY || d.verdict == TYR_VERDICT_ALERT) {
		a->covered = 1;
		return 1;
	}
	return 0;
}

/* Keeps the protected name (len bytes at s->rec + at) on `inode` when a
 * rule of any class covers it; a name already kept stays. */
static __always_inline void tyr_keep_identity(const struct tyr_config *cfg, struct tyr_scratch *s, __u32 on_task,
					      __u32 slot, struct inode *inode, __u32 at, __u32 len)
{
	if (!len || !inode)
		return;
	struct tyr_covered covered = {
		.on_task = on_task,
		.slot = slot,
		.base = at,
		.len = len,
		.checks = 2 * (cfg->known_classes + 2),
	};
	bpf_loop(128, tyr_covered_step, &covered, 0);
	if (!covered.covered)
		return;
	struct tyr_inode_identity *id =
		bpf_inode_storage_get(&tyr_inode_ids, inode, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!id || id->len)
		return;
	bpf_probe_read_kernel(id->path, len & (TYR_PATH_MAX - 1), &s->rec[at & TYR_BASE_MASK]);
	id->len = len & (TYR_PATH_MAX - 1);
}

/* Writes the name kept on `inode`, if any, at s->rec + at; returns its length. */
static __always_inline __u32 tyr_kept_identity(struct tyr_scratch *s, struct inode *inode, __u32 at)
{
	struct tyr_inode_identity *id = bpf_inode_storage_get(&tyr_inode_ids, inode, 0, 0);
	if (!id || !id->len)
		return 0;
	__u32 len = id->len & (TYR_PATH_MAX - 1);
	bpf_probe_read_kernel(&s->rec[at & TYR_BASE_MASK], len, id->path);
	return len;
}
