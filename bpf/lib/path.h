/* Absolute paths from a struct path, resolved in the kernel.
 *
 * bpf_d_path() is only allowed in a few LSM and fentry hooks, and the
 * tracepoint fallback needs paths too, so tyr walks dentries and mounts
 * itself, the way d_path() does but without its locks: up through d_parent
 * to the mount root, across to the mountpoint in the parent mount, until
 * the root of the process's mount namespace. A rename racing the walk can
 * give a stale name; the walk never faults (every read is a probe read).
 *
 * Both loops run under bpf_loop() (5.17+), so the verifier checks each body
 * once instead of once per iteration. */
#pragma once

#include "common.h"

#define TYR_PATH_DEPTH 64
#define TYR_NAME_MAX 256 /* NAME_MAX + NUL */
#define TYR_PATH_MASK (TYR_PATH_MAX - 1)
/* Fixed parts of records are shorter than this; see TYR_FIXED_MAX. */
#define TYR_BASE_MASK (TYR_FIXED_MAX - 1)

struct tyr_walk {
	struct mount *mnt;
	struct dentry *dentry;
	__u32 depth;
	__u32 finished;
};

static __always_inline struct tyr_scratch *tyr_scratch_entry(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&tyr_scratch_map, &zero);
}

/* One step up the tree: record a component or cross a mount. */
static long tyr_walk_step(__u64 index, void *ctx)
{
	struct tyr_walk *w = ctx;
	struct mount *mnt = w->mnt;
	struct dentry *dentry = w->dentry;

	if (dentry == BPF_CORE_READ(mnt, mnt.mnt_root)) {
		struct mount *parent = BPF_CORE_READ(mnt, mnt_parent);
		if (parent == mnt) {
			w->finished = 1; /* root of the mount namespace */
			return 1;
		}
		w->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = parent;
		return 0;
	}
	struct dentry *up = BPF_CORE_READ(dentry, d_parent);
	if (up == dentry) {
		w->finished = 1; /* root of a filesystem not reached through a mount */
		return 1;
	}
	struct tyr_scratch *s = tyr_scratch_entry();
	if (!s)
		return 1;
	s->dentries[w->depth & (TYR_PATH_DEPTH - 1)] = dentry;
	w->depth++;
	w->dentry = up;
	if (w->depth >= TYR_PATH_DEPTH)
		return 1;
	return 0;
}

struct tyr_write {
	__u32 depth; /* components collected */
	__u32 base;  /* offset of the output in s->rec */
	__u32 len;   /* bytes written so far */
	__u32 truncated;
};

/* Appends one component, from the root down. */
static long tyr_write_step(__u64 index, void *ctx)
{
	struct tyr_write *w = ctx;
	if (index >= w->depth)
		return 1;
	if (w->len > TYR_PATH_MAX - TYR_NAME_MAX - 1) {
		w->truncated = 1;
		return 1;
	}
	struct tyr_scratch *s = tyr_scratch_entry();
	if (!s)
		return 1;
	struct dentry *d = s->dentries[(w->depth - 1 - index) & (TYR_PATH_DEPTH - 1)];
	const unsigned char *name = BPF_CORE_READ(d, d_name.name);
	__u32 at = (w->base & TYR_BASE_MASK) + (w->len & TYR_PATH_MASK);
	s->rec[at] = '/';
	at = (w->base & TYR_BASE_MASK) + ((w->len + 1) & TYR_PATH_MASK);
	long n = bpf_probe_read_kernel_str(&s->rec[at], TYR_NAME_MAX, name);
	if (n <= 1)
		return 1;
	w->len += n; /* the '/' plus the name, without its NUL */
	return 0;
}

/* Writes the absolute path of `path` at s->rec + base (base below
 * TYR_FIXED_MAX plus whatever the caller already wrote, kept under
 * TYR_PATH_MAX); returns its length, without NUL. Sets TYR_F_TRUNCATED in
 * *flags when the path was too deep or too long. */
static __always_inline __u32 tyr_resolve_path(struct tyr_scratch *s, const struct path *path, __u32 base,
					      __u32 *flags)
{
	struct vfsmount *vfsmnt = BPF_CORE_READ(path, mnt);
	struct tyr_walk walk = {
		.mnt = (struct mount *)((void *)vfsmnt - bpf_core_field_offset(struct mount, mnt)),
		.dentry = BPF_CORE_READ(path, dentry),
	};
	bpf_loop(TYR_PATH_DEPTH * 2, tyr_walk_step, &walk, 0);
	if (!walk.finished)
		*flags |= TYR_F_TRUNCATED;

	struct tyr_write write = { .depth = walk.depth, .base = base };
	bpf_loop(TYR_PATH_DEPTH, tyr_write_step, &write, 0);
	if (write.truncated)
		*flags |= TYR_F_TRUNCATED;
	if (write.len == 0) {
		s->rec[(base & TYR_BASE_MASK)] = '/';
		write.len = 1;
	}
	return write.len & TYR_PATH_MASK;
}
