/* Absolute paths from a struct path, resolved in the kernel.
 *
 * bpf_d_path() is only allowed in a few LSM and fentry hooks, and the
 * tracepoint fallback needs paths too, so tyr walks dentries and mounts
 * itself, the way d_path() does but without its locks: up through d_parent
 * to the mount root, across to the mountpoint in the parent mount, until
 * the root of the process's mount namespace. A rename racing the walk can
 * give a stale name; the walk never faults (every read is a probe read).
 *
 * Identities: the name a file has in tyrd's mount namespace, whatever name
 * the process used to reach it (another mount namespace, a bind mount, a
 * chroot). The walk then ignores mounts: up through d_parent to the root of
 * the filesystem, then tyr_mounts says where tyrd's namespace shows that
 * part of the filesystem.
 *
 * Both loops run under bpf_loop() (5.17+), so the verifier checks each body
 * once instead of once per iteration. */
#pragma once

#include "common.h"

#define TYR_PATH_DEPTH 64
#define TYR_NAME_MAX 256 /* NAME_MAX + NUL */
#define TYR_PATH_MASK (TYR_PATH_MAX - 1)

/* One step up the tree: record a component or cross a mount.
 * ctx: the on_task of the scratch whose walk this is. */
static long tyr_walk_step(__u64 index, void *ctx)
{
	struct tyr_scratch *s = tyr_scratch_entry(*(__u32 *)ctx);
	if (!s)
		return 1;
	struct tyr_walk *w = &s->walk;
	struct mount *mnt = (struct mount *)w->mnt;
	struct dentry *dentry = (struct dentry *)w->dentry;

	if (w->cross_mounts && dentry == BPF_CORE_READ(mnt, mnt.mnt_root)) {
		struct mount *parent = BPF_CORE_READ(mnt, mnt_parent);
		if (parent == mnt) {
			w->finished = 1; /* root of the mount namespace */
			return 1;
		}
		w->dentry = (__u64)BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = (__u64)parent;
		return 0;
	}
	struct dentry *up = BPF_CORE_READ(dentry, d_parent);
	if (up == dentry) {
		w->finished = 1; /* root of the filesystem */
		return 1;
	}
	s->dentries[w->depth & (TYR_PATH_DEPTH - 1)] = dentry;
	w->depth++;
	w->dentry = (__u64)up;
	if (w->depth >= TYR_PATH_DEPTH)
		return 1;
	return 0;
}

/* Walks up from `dentry` (in mount `mnt`, crossing mounts when
 * `cross_mounts`); the components are in s->dentries, leaf first. */
static __always_inline void tyr_walk_up(struct tyr_scratch *s, __u32 on_task, struct mount *mnt,
					struct dentry *dentry, __u32 cross_mounts)
{
	s->walk.mnt = (__u64)mnt;
	s->walk.dentry = (__u64)dentry;
	s->walk.depth = 0;
	s->walk.finished = 0;
	s->walk.cross_mounts = cross_mounts;
	bpf_loop(TYR_PATH_DEPTH * 2, tyr_walk_step, &on_task, 0);
}

/* Appends one component, from the root down. */
static long tyr_write_step(__u64 index, void *ctx)
{
	struct tyr_scratch *s = tyr_scratch_entry(*(__u32 *)ctx);
	if (!s)
		return 1;
	struct tyr_write *w = &s->write;
	__u32 at_component = index + w->skip;
	if (at_component >= w->depth)
		return 1;
	if (w->len > TYR_PATH_MAX - TYR_NAME_MAX - 1) {
		w->truncated = 1;
		return 1;
	}
	struct dentry *d = s->dentries[(w->depth - 1 - at_component) & (TYR_PATH_DEPTH - 1)];
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

/* Writes the components of the last walk, the top `skip` left out, at
 * s->rec + base + len (len bytes already written there); returns the
 * length, without NUL. Sets *truncated when it did not fit. */
static __always_inline __u32 tyr_write_components(struct tyr_scratch *s, __u32 on_task, __u32 skip, __u32 base,
						  __u32 len, __u32 *truncated)
{
	s->write.depth = s->walk.depth;
	s->write.skip = skip;
	s->write.base = base;
	s->write.len = len;
	s->write.truncated = 0;
	bpf_loop(TYR_PATH_DEPTH, tyr_write_step, &on_task, 0);
	/* The loop wrote through a fresh lookup: read back through it too. */
	struct tyr_scratch *again = tyr_scratch_entry(on_task);
	if (!again)
		return 0;
	*truncated |= again->write.truncated;
	return again->write.len & TYR_PATH_MASK;
}

static __always_inline struct mount *tyr_real_mount(const struct vfsmount *vfsmnt)
{
	return (struct mount *)((void *)vfsmnt - bpf_core_field_offset(struct mount, mnt));
}

/* Writes the absolute path of `path` at s->rec + base (base below
 * TYR_BASE_LIMIT); returns its length, without NUL. Sets TYR_F_TRUNCATED in
 * *flags when the path was too deep or too long. */
static __always_inline __u32 tyr_resolve_mnt_dentry(struct tyr_scratch *s, __u32 on_task, struct vfsmount *mnt,
						    struct dentry *dentry, __u32 base, __u32 *flags)
{
	tyr_walk_up(s, on_task, tyr_real_mount(mnt), dentry, 1);
	__u32 truncated = !s->walk.finished;
	__u32 len = tyr_write_components(s, on_task, 0, base, 0, &truncated);
	if (truncated)
		*flags |= TYR_F_TRUNCATED;
	if (len == 0) {
		s->rec[TYR_AT(base)] = '/';
		len = 1;
	}
	return len;
}

static __always_inline __u32 tyr_resolve_path(struct tyr_scratch *s, __u32 on_task, const struct path *path,
					      __u32 base, __u32 *flags)
{
	return tyr_resolve_mnt_dentry(s, on_task, BPF_CORE_READ(path, mnt), BPF_CORE_READ(path, dentry), base, flags);
}

/* Whether a file reached through mount `vfsmnt` by the current task may be known
 * under another name in tyrd's mount namespace: the task is in another
 * mount namespace or chrooted, the mount shows a directory of its
 * filesystem rather than its root (a bind mount), or it is not the mount
 * that names the filesystem's files (a second mount of it). */
static __always_inline bool tyr_identity_may_differ(__u32 init_mnt_ns, struct vfsmount *vfsmnt)
{
	struct mount *mnt = tyr_real_mount(vfsmnt);
	if (BPF_CORE_READ(mnt, mnt_ns, ns.inum) != init_mnt_ns)
		return true;
	if (BPF_CORE_READ(mnt, mnt.mnt_root) != BPF_CORE_READ(mnt, mnt.mnt_sb, s_root))
		return true;
	__u32 mnt_id = BPF_CORE_READ(mnt, mnt_id);
	if (!bpf_map_lookup_elem(&tyr_canonical_mounts, &mnt_id))
		return true;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct mount *ns_root = BPF_CORE_READ(task, nsproxy, mnt_ns, root);
	struct vfsmount *root_mnt = BPF_CORE_READ(task, fs, root.mnt);
	struct dentry *root_dentry = BPF_CORE_READ(task, fs, root.dentry);
	return tyr_real_mount(root_mnt) != ns_root || root_dentry != BPF_CORE_READ(ns_root, mnt.mnt_root);
}

/* Writes the identity of the file at `dentry` (on the filesystem of
 * `mnt`) at s->rec + base: its path in tyrd's mount namespace. Returns its
 * length; 0 when it has none (its filesystem is not mounted there, or it
 * is too deep), with the reason counted. */
static __always_inline __u32 tyr_resolve_identity(struct tyr_scratch *s, __u32 on_task, struct vfsmount *mnt,
						  struct dentry *dentry, __u32 base)
{
	tyr_walk_up(s, on_task, NULL, dentry, 0);
	if (!s->walk.finished) {
		tyr_count_health(TYR_HEALTH_IDENTITY_DEEP);
		return 0;
	}
	/* The path within the filesystem, whose start names the mount. */
	__u32 truncated = 0;
	__u32 len = tyr_write_components(s, on_task, 0, base, 0, &truncated);
	struct tyr_mount_key *key = &s->mount_key;
	__u32 key_len = len < TYR_MOUNT_KEY ? len : TYR_MOUNT_KEY;
	bpf_probe_read_kernel(key->root, sizeof(key->root), &s->rec[TYR_AT(base)]);
	/* The lookup key ends in '/': a root of "/a" must not match "/ab". */
	if (key_len < TYR_MOUNT_KEY) {
		__u32 at = key_len;
		barrier_var(at); /* keeps the verifier's mask */
		key->root[at & 0xff] = '/';
	}
	key->prefixlen = 32 + (key_len + 1) * 8;
	if (key->prefixlen > 32 + TYR_MOUNT_KEY * 8)
		key->prefixlen = 32 + TYR_MOUNT_KEY * 8;
	key->dev = bpf_htonl(BPF_CORE_READ(mnt, mnt_sb, s_dev));
	struct tyr_mount_value *where = bpf_map_lookup_elem(&tyr_mounts, key);
	if (!where || truncated) {
		tyr_count_health(truncated ? TYR_HEALTH_IDENTITY_DEEP : TYR_HEALTH_IDENTITY_UNMAPPED);
		return 0;
	}
	/* The mountpoint, then the components below the mount's root. */
	__u32 prefix = where->len;
	if (prefix >= TYR_MOUNTPOINT_MAX)
		return 0;
	bpf_probe_read_kernel(&s->rec[TYR_AT(base)], prefix & (TYR_MOUNTPOINT_MAX - 1), where->mountpoint);
	len = tyr_write_components(s, on_task, where->root_components, base, prefix, &truncated);
	if (truncated) {
		tyr_count_health(TYR_HEALTH_IDENTITY_DEEP);
		return 0;
	}
	if (len == 0) {
		s->rec[TYR_AT(base)] = '/';
		len = 1;
	}
	return len;
}
